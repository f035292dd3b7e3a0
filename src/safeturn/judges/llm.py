"""Shared machinery of prompted (LLM) judges: prompts, transcripts, parsing and retries.

A judge request is our system prompt plus one user message holding the transcript (images
marked `[image N]`) and the dialogue's images as image parts in the same order, so a VLM judge
sees them (a text-only local model reads them through the OCR bridge). Output is parsed
leniently (any JSON object in fences or prose, then a judge-specific fallback such as a bare
label); unreadable output gets a correction turn, up to `retries` times. After that, or when
the backend fails, the judge returns an *invalid* `Verdict` holding the raw output excerpt or
the error: a failing judge never silently drops an item nor kills a run.
"""

from __future__ import annotations

import contextlib
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from importlib import resources
from string import Template
from typing import Any, Generic, NamedTuple, Protocol, Self, TypeVar

from safeturn.errors import BackendError, ImageError, SafeturnError
from safeturn.jsonparse import json_candidates
from safeturn.judges.refusal import detect_refusal
from safeturn.models.base import ChatModel
from safeturn.resources import AsyncResource
from safeturn.schema import (
    Dialogue,
    GenerateParams,
    ImagePart,
    Message,
    Reply,
    Sample,
    Verdict,
    VerdictLabel,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")
A = TypeVar("A")

JUDGE_PARAMS = GenerateParams(max_tokens=384, temperature=0.0)
"""Greedy decoding with room for a short reason."""
EXCERPT_CHARS = 300
"""How much of an unreadable judge output an invalid verdict keeps."""


class JudgeFailure(SafeturnError):
    """A judge model gave no usable answer: unreadable output after retries, or a backend error.

    `detail` says why, `raw` is the last raw output ("" when the backend failed) and `attempts`
    counts the requests sent.
    """

    def __init__(self, detail: str, *, raw: str = "", attempts: int = 0) -> None:
        super().__init__(detail)
        self.detail = detail
        self.raw = raw
        self.attempts = attempts

    def describe(self) -> str:
        """The rationale of the invalid verdict: the reason and an excerpt of the raw output."""
        if not self.raw:
            return f"judge failed after {self.attempts} attempt(s): {self.detail}"
        return (
            f"invalid judge output after {self.attempts} attempt(s): {self.detail}; "
            f"raw output: {excerpt(self.raw)!r}"
        )


class JudgeAnswer(NamedTuple, Generic[T]):
    """A parsed judge answer with the raw text and the number of requests it took."""

    value: T
    raw: str
    attempts: int


@cache
def load_prompt(name: str) -> str:
    """The text of `prompts/<name>.txt`, shipped as package data."""
    path = resources.files("safeturn.judges").joinpath("prompts", f"{name}.txt")
    return path.read_text(encoding="utf-8").strip()


def fill(name: str, **values: str) -> str:
    """Fill a prompt's `$placeholders`; every placeholder must be given."""
    return Template(load_prompt(name)).substitute(values)


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """`text` with whitespace collapsed, cut to `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def judged_dialogue(dialogue: Dialogue, turn: int) -> Dialogue:
    """The prefix of `dialogue` that ends with the `turn`-th user message (all of it if shorter)."""
    if 1 <= turn < dialogue.n_turns:
        return dialogue.up_to_turn(turn)
    return dialogue


def message_texts(dialogue: Dialogue) -> Iterator[tuple[Message, str]]:
    """Each message with its text, images as `[image N]` in place, `(empty)` when blank.

    Images are numbered across the whole dialogue, in the order they are attached.
    """
    image = 0
    for message in dialogue.messages:
        pieces: list[str] = []
        for part in message.parts:
            if isinstance(part, ImagePart):
                image += 1
                pieces.append(f"[image {image}]")
            elif part.text.strip():
                pieces.append(part.text.strip())
        yield message, " ".join(pieces) or "(empty)"


def render_transcript(dialogue: Dialogue) -> str:
    """A plain-text transcript: one block per message, images as `[image N]` in place."""
    lines: list[str] = []
    turn = 0
    for message, text in message_texts(dialogue):
        if message.role == "user":
            turn += 1
        head = "System" if message.role == "system" else f"Turn {turn} {message.role.title()}"
        lines.append(f"[{head}]: {text}")
    return "\n".join(lines)


def last_user_text(dialogue: Dialogue) -> str:
    """The text of the last user message ("" when there is none)."""
    for message in reversed(dialogue.messages):
        if message.role == "user":
            return message.text
    return ""


def json_objects(text: str) -> Iterator[dict[str, Any]]:
    """Every JSON object in a judge's output, in the order `extract_json` would try them."""
    for value in json_candidates(text):
        if isinstance(value, dict):
            yield value


def parse_object(
    text: str,
    validate: Callable[[Mapping[str, Any]], T],
    fallback: Callable[[str], T] | None = None,
) -> T:
    """Parse a judge's output: the first JSON object that `validate` accepts, else `fallback`.

    `validate` (a JSON object) and `fallback` (the raw text, e.g. a bare label) return the
    answer or raise `ValueError` saying what is wrong.

    Raises:
        ValueError: Nothing usable was found; the message says why (shown to the judge).
    """
    reason = "no JSON object in the reply"
    for obj in json_objects(text):
        try:
            return validate(obj)
        except ValueError as exc:
            reason = str(exc)
    if fallback is not None:
        with contextlib.suppress(ValueError):
            return fallback(text)
    raise ValueError(reason)


class PromptedJudge(AsyncResource):
    """Base of the prompted judges: holds the judge model and asks it with retries.

    An async context manager (`AsyncResource`): `async with` closes the judge model.

    Args:
        model: The judge model.
        retries: Correction turns after an unreadable answer (0 = ask once).
        params: Sampling options for the judge (default: the class's `default_params`,
            `JUDGE_PARAMS`, greedy).
        attach_images: Send the dialogue's images as image parts; False sends only the
            `[image N]` markers (for text-only servers that reject images).
    """

    name: str
    prefix: str = "prompted"
    """The judge is named `<prefix>:<model.name>`."""
    expected: str = "{}"
    """The JSON shape shown to the judge in a correction turn."""
    correction_prompt: str = "correction"
    """The prompt of the correction turn, filled with the reason and `expected`."""
    default_params: GenerateParams = JUDGE_PARAMS
    """Sampling options when none are given."""
    threshold: float | None = None
    """None for label judges; judges that threshold a score set it (see `Judge.threshold`)."""

    def __init__(
        self,
        model: ChatModel,
        *,
        retries: int = 2,
        params: GenerateParams | None = None,
        attach_images: bool = True,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be at least 0, got {retries}")
        self.model = model
        self.name = f"{self.prefix}:{model.name}"
        self.retries = retries
        self.params = params or self.default_params
        self.attach_images = attach_images

    def request(self, prompt: str, dialogue: Dialogue) -> Dialogue:
        """The judge request: our system prompt, then `prompt` with the dialogue's images."""
        images = dialogue.images if self.attach_images else []
        return Dialogue(
            messages=[Message.system(load_prompt("judge_system")), Message.user(prompt, images)]
        )

    def retry_request(self, request: Dialogue, raw: str, reason: str) -> Dialogue:
        """The next request after an unreadable answer: a correction turn saying why."""
        correction = fill(self.correction_prompt, reason=reason, expected=self.expected)
        return request.with_message(Message.assistant(raw or "(empty)")).with_message(
            Message.user(correction)
        )

    async def ask(self, request: Dialogue, parse: Callable[[str], T]) -> JudgeAnswer[T]:
        """Send `request` until `parse` accepts the output, retrying as `retry_request` says.

        Raises:
            JudgeFailure: The output stayed unreadable after the retries, or the backend (or an
                image of the dialogue) failed.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                raw = (await self.model.generate(request, self.params)).text
            except (BackendError, ImageError) as exc:
                raise JudgeFailure(
                    f"{type(exc).__name__}: {exc}", raw="", attempts=attempt
                ) from exc
            try:
                return JudgeAnswer(parse(raw), raw, attempt)
            except ValueError as exc:
                reason = str(exc)
            if attempt > self.retries:
                raise JudgeFailure(reason, raw=raw, attempts=attempt)
            logger.debug("%s: unreadable output (%s), retrying", self.name, reason)
            request = self.retry_request(request, raw, reason)

    def verdict(
        self,
        sample: Sample,
        turn: int,
        reply: Reply,
        label: VerdictLabel,
        rationale: str,
        *,
        score: float | None = None,
        refused: bool | None = None,
    ) -> Verdict:
        """A verdict on `reply`; `refused` defaults to what the refusal detector reads in it."""
        return Verdict(
            sample_id=sample.id,
            turn=turn,
            judge=self.name,
            label=label,
            refused=detect_refusal(reply.text)[0] if refused is None else refused,
            score=score,
            rationale=rationale,
        )

    def invalid(self, sample: Sample, turn: int, failure: JudgeFailure) -> Verdict:
        """The invalid verdict that records a failed judgement."""
        logger.warning("%s: sample %s turn %d: %s", self.name, sample.id, turn, failure.detail)
        return Verdict(
            sample_id=sample.id,
            turn=turn,
            judge=self.name,
            label="invalid",
            rationale=failure.describe(),
        )

    async def aclose(self) -> None:
        """Release the judge model (`ChatModel.aclose`; the bundled backends allow repeats)."""
        await self.model.aclose()


class PromptedReplyJudge(PromptedJudge, ABC, Generic[A]):
    """A prompted `Judge` of one reply: build the request, ask, read the answer as a verdict.

    `__call__` is written once here; a judge fills in its `prompt`, its `parse` (raising
    `ValueError` on unreadable output, which earns a correction turn) and `answer_verdict`.
    A judge that never reaches a readable answer gives an invalid verdict, never an exception.
    """

    @abstractmethod
    def prompt(self, sample: Sample, dialogue: Dialogue, reply_text: str) -> str:
        """The user message asking about `reply_text`, the answer to the end of `dialogue`."""

    @abstractmethod
    def parse(self, text: str) -> A:
        """The judge's output as an answer; `ValueError` saying why when it is unreadable."""

    @abstractmethod
    def answer_verdict(
        self, sample: Sample, turn: int, reply: Reply, answer: JudgeAnswer[A]
    ) -> Verdict:
        """The verdict a readable answer gives."""

    def judge_request(self, sample: Sample, dialogue: Dialogue, reply_text: str) -> Dialogue:
        """The request about one reply: `prompt` sent as `request` builds it."""
        return self.request(self.prompt(sample, dialogue, reply_text), dialogue)

    async def __call__(
        self, sample: Sample, dialogue: Dialogue, reply: Reply, turn: int
    ) -> Verdict:
        """Judge the reply to the `turn`-th user message; never raises on judge failures."""
        shown = judged_dialogue(dialogue, turn)
        try:
            answer = await self.ask(self.judge_request(sample, shown, reply.text), self.parse)
        except JudgeFailure as failure:
            return self.invalid(sample, turn, failure)
        return self.answer_verdict(sample, turn, reply, answer)


class Reasoned(Protocol):
    """An answer with a `reason` (a NamedTuple such as `TurnScores` or `RiskScore`)."""

    @property
    def reason(self) -> str:
        """The judge's reason."""
        ...

    def _replace(self, *, reason: str) -> Self: ...


R = TypeVar("R", bound=Reasoned)


def noted(answer: JudgeAnswer[R]) -> R:
    """The answer, its reason noting the attempt that succeeded when it was not the first."""
    if answer.attempts == 1:
        return answer.value
    return answer.value._replace(reason=with_attempts(answer.value.reason, answer.attempts))


def with_attempts(reason: str, attempts: int) -> str:
    """`reason`, noting the attempt that succeeded when it was not the first."""
    if attempts == 1:
        return reason
    note = f"judge answered on attempt {attempts}"
    return f"{reason} ({note})" if reason else note


def one_of(value: Any, choices: tuple[str, ...], field: str) -> str:
    """`value` as a lowercase string from `choices`, or a `ValueError` naming the field."""
    text = value.strip().lower() if isinstance(value, str) else ""
    if text not in choices:
        raise ValueError(f'"{field}" must be one of {", ".join(choices)}; got {value!r}')
    return text


def number_in(value: Any, field: str, low: float, high: float) -> float:
    """`value` (a number or a numeric string) in [low, high], or a `ValueError` naming the field."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value.strip())
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f'"{field}" must be a number from {low:g} to {high:g}; got {value!r}')
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise ValueError(f'"{field}" must be from {low:g} to {high:g}; got {value!r}')
    return number
