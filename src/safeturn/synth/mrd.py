"""DREAM step 1: multimodal risk disentanglement (MRD) with a teacher and a verifier model.

For each sample the teacher is shown the last user request, the earlier user messages and every
image of the dialogue, and lists the risks it sees as `{content, source, category}`. A second
pass asks the verifier (the teacher again unless another model is given) about each risk on its
own, because a teacher asked for risks tends to over-report them; a risk the verifier rejects
stays in the record with `verified=False`, so the rejection itself can be audited, and
`RiskRecord.kept()` drops it.

Categories must map onto `safeturn.taxonomy`: an unknown label gets a correction turn, and a
teacher that never produces a usable answer leaves a failure (sample id, reason, raw answer)
rather than a guessed `other`. Every call goes through the run database, so a resumed run
replays finished calls instead of repeating them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, Literal, NamedTuple, TypeVar

from pydantic import BaseModel, Field

from safeturn.errors import SafeturnError
from safeturn.jsonparse import json_candidates
from safeturn.judges.llm import excerpt, fill
from safeturn.models.base import ChatModel
from safeturn.run.calls import cached_generate
from safeturn.run.store import CallRole, RunStore
from safeturn.schema import Dialogue, GenerateParams, Message, Sample
from safeturn.synth.prompts import (
    MRD_EXPECTED,
    SOURCE_PHRASES,
    VERIFY_EXPECTED,
    VERIFY_SYSTEM,
    mrd_system,
)
from safeturn.synth.risks import RISK_SOURCES, Risk, RiskRecord, RiskSource
from safeturn.taxonomy import Category, guess_category

logger = logging.getLogger(__name__)
T = TypeVar("T")

ItemCallback = Callable[[str], None]
FailureStage = Literal["disentangle", "verify", "error"]

TEACHER_ROLE: CallRole = "expert"
"""The run database's role for teacher calls (its role set predates DREAM)."""
VERIFIER_ROLE: CallRole = "judge"

_SOURCE_ALIASES: dict[str, RiskSource] = {
    "textinstruction": "text_instruction",
    "instruction": "text_instruction",
    "request": "text_instruction",
    "userrequest": "text_instruction",
    "prompt": "text_instruction",
    "query": "text_instruction",
    "textcontent": "text_content",
    "text": "text_content",
    "context": "text_content",
    "imagecontent": "image_content",
    "image": "image_content",
    "visualcontent": "image_content",
    "picture": "image_content",
    "textinimage": "text_in_image",
    "textintheimage": "text_in_image",
    "imagetext": "text_in_image",
    "ocr": "text_in_image",
    "typography": "text_in_image",
    "embeddedtext": "text_in_image",
}
"""Spellings teachers use for the four sources (VLGuard's own labels among them), normalized."""


class MRDSettings(BaseModel):
    """What an MRD run does; stored with the run so `--resume RUN_ID` can rebuild it."""

    teacher: str = "embedded"
    verifier: str | None = None
    """Model spec of the verifier; None uses the teacher."""
    verify: bool = True
    """Run the verification pass; without it every risk keeps `verified=None`."""
    retries: int = Field(default=2, ge=0)
    """Correction turns after an unreadable or invalid answer, per request."""
    params: GenerateParams = Field(
        default_factory=lambda: GenerateParams(max_tokens=384, temperature=0.0)
    )
    """Teacher sampling: greedy, with room for a handful of risks."""
    verify_params: GenerateParams = Field(
        default_factory=lambda: GenerateParams(max_tokens=96, temperature=0.0)
    )
    concurrency: int = Field(default=8, ge=1)
    data: str = ""


class MRDFailure(BaseModel):
    """A sample (or one risk of it) that got no usable answer, with what the model said."""

    sample_id: str
    stage: FailureStage
    """`disentangle`: no record was written; `verify`: a risk kept `verified=None`; `error`:
    the sample failed outside parsing (a backend or image error)."""
    reason: str
    raw: str = ""
    """An excerpt of the last raw answer ("" when the backend failed)."""
    attempts: int = 0


class MRDSummary(BaseModel):
    """Counts of one MRD run, written beside the risk JSONL."""

    samples: int = 0
    records: int = 0
    no_risk: int = 0
    """Records with an empty risk list (the teacher saw nothing risky)."""
    risks: int = 0
    verified: int = 0
    rejected: int = 0
    unverified: int = 0
    by_source: dict[str, int] = Field(default_factory=dict)
    by_category: dict[str, int] = Field(default_factory=dict)
    kept_by_source: dict[str, int] = Field(default_factory=dict)
    failed: int = 0
    """Samples without a record (stage `disentangle` or `error`)."""
    failures: list[MRDFailure] = Field(default_factory=list)


class MRDResult(NamedTuple):
    """The records in input order and the failures of a run."""

    records: list[RiskRecord]
    failures: list[MRDFailure]


def run_failure(result: MRDResult, samples: int) -> str | None:
    """Why a finished run as a whole failed, or None when it did its job.

    Unparseable answers are the teacher's business and leave the run usable, but an `error`
    failure (a bad API key, an unreachable server, a broken image) means the run did not do
    what was asked, and a run with no record at all has produced nothing to train on; both
    must reach the caller as a failure (a non-zero exit) instead of a quiet empty file.

    Args:
        result: The run's records and failures.
        samples: How many samples the run was given.

    Returns:
        A message naming the count and the first failing sample, or None.
    """
    errors = [f for f in result.failures if f.stage == "error"]
    if errors:
        first = errors[0]
        return (
            f"{len(errors)} of {samples} sample(s) failed with an error "
            f"(first: {first.sample_id}: {first.reason})"
        )
    if not result.records:
        why = ""
        if result.failures:
            first = result.failures[0]
            why = f" (first failure: {first.sample_id} ({first.stage}): {first.reason})"
        return f"no risk record was produced from {samples} sample(s){why}"
    return None


class UnreadableAnswer(SafeturnError):
    """A model's answer stayed unusable after every correction turn."""

    def __init__(self, reason: str, *, raw: str, attempts: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw
        self.attempts = attempts


def risk_source(label: object) -> RiskSource:
    """Map a teacher's source label onto one of the four sources.

    Raises:
        ValueError: The label names none of them (the message lists the valid ones).
    """
    # "text in the image", "text instructions": drop the article and a plural s
    # "image content: non-textual content ..." (VLGuard): the part before a colon names it
    for part in dict.fromkeys((str(label), str(label).partition(":")[0])):
        key = "".join(ch for ch in part.lower() if ch.isalnum()).replace("inthe", "in")
        found = _SOURCE_ALIASES.get(key) or _SOURCE_ALIASES.get(key.removesuffix("s"))
        if found is not None:
            return found
    raise ValueError(f"unknown risk source {label!r}; use one of {', '.join(RISK_SOURCES)}")


def risk_category(label: object) -> Category:
    """Map a category label with the taxonomy's lookup (canonical names, then source labels).

    Raises:
        ValueError: No table knows the label; it is never turned into `other` silently.
    """
    found = guess_category(label) if isinstance(label, str) and label.strip() else None
    if found is None:
        known = ", ".join(c.value for c in Category)
        raise ValueError(f"unknown risk category {label!r}; use one of {known}")
    return found


def parse_risks(text: str) -> list[Risk]:
    """Parse the teacher's answer: `{"risks": [...]}` or a bare list of risk objects.

    Raises:
        ValueError: No JSON in the answer, or a risk with a missing field, an unknown source
            or an unknown category; the message says which (shown to the teacher).
    """
    reason = "no JSON object or list in the reply"
    for value in json_candidates(text):
        try:
            return [_risk(item, i) for i, item in enumerate(_risk_items(value), start=1)]
        except ValueError as exc:
            reason = str(exc)
    raise ValueError(reason)


def _risk_items(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        if "risks" in value:
            items = value["risks"]
            if not isinstance(items, list):
                raise ValueError('"risks" must be a list')
            return items
        if "content" in value:  # a single risk written without the wrapper
            return [value]
    raise ValueError('expected an object with a "risks" list')


def _risk(item: Any, number: int) -> Risk:
    if not isinstance(item, dict):
        raise ValueError(f"risk {number} is not an object")
    content = item.get("content")
    if not isinstance(content, str) or not content.strip():
        raise ValueError(f'risk {number} has no "content" text')
    try:
        source = risk_source(item.get("source", ""))
        category = risk_category(item.get("category", ""))
    except ValueError as exc:
        raise ValueError(f"risk {number}: {exc}") from exc
    return Risk(content=content, source=source, category=category)


def parse_verdict(text: str) -> tuple[bool, str]:
    """Parse the verifier's answer into (present, note); a bare leading yes/no also counts.

    Raises:
        ValueError: Neither a JSON object with a boolean "present" nor a yes/no answer.
    """
    for value in json_candidates(text):
        if isinstance(value, dict) and "present" in value:
            present = value["present"]
            if isinstance(present, str) and present.strip().lower() in (
                "yes",
                "no",
                "true",
                "false",
            ):
                present = present.strip().lower() in ("yes", "true")
            if isinstance(present, bool):
                return present, str(value.get("note", "")).strip()
            raise ValueError(f'"present" must be true or false; got {present!r}')
    head = text.strip().lower()
    for word, present in (("yes", True), ("no", False)):
        if head == word or head.startswith((f"{word}.", f"{word},", f"{word} ", f"{word}:")):
            return present, text.strip()[len(word) :].lstrip(" .,:")
    raise ValueError('expected a JSON object with a boolean "present"')


def request_context(sample: Sample) -> str:
    """The text both passes see: image count, earlier user messages, and the last request."""
    users = [m.text.strip() for m in sample.dialogue.messages if m.role == "user"]
    images = len(sample.dialogue.images)
    lines = [
        f"Images attached: {images} ({', '.join(f'[image {i}]' for i in range(1, images + 1))})"
        if images
        else "Images attached: none."
    ]
    earlier = [text for text in users[:-1] if text]
    if earlier:
        lines.append("Earlier user messages, for context:")
        lines.extend(f"- {text}" for text in earlier)
    lines.append("The request to analyse:")
    lines.append(f'"""{users[-1] if users and users[-1] else "(no text)"}"""')
    return "\n".join(lines)


def disentangle_request(sample: Sample) -> Dialogue:
    """Pass 1: our system prompt, then the context text with every image of the dialogue."""
    categories = [c.value for c in Category]
    return Dialogue(
        messages=[
            Message.system(mrd_system(categories)),
            Message.user(request_context(sample), images=sample.dialogue.images),
        ]
    )


def verify_request(sample: Sample, risk: Risk) -> Dialogue:
    """Pass 2 for one risk: the same context, then the claim and the source it names."""
    claim = (
        f"{request_context(sample)}\n\nClaimed risk: {risk.content}\n"
        f"Claimed source: {risk.source} ({SOURCE_PHRASES[risk.source]})\n"
        f"Category: {risk.category.value}\nIs this risk really present in that source?"
    )
    return Dialogue(
        messages=[Message.system(VERIFY_SYSTEM), Message.user(claim, images=sample.dialogue.images)]
    )


class RiskDisentangler:
    """Runs both passes for one run id; every call is recorded in `store`.

    Args:
        store: The run database.
        run_id: The run the calls belong to (resume reuses it).
        settings: Passes, retries and sampling options.
        teacher: Lists the risks of each sample.
        verifier: Checks each risk; defaults to the teacher.
    """

    def __init__(
        self,
        store: RunStore,
        run_id: str,
        settings: MRDSettings,
        *,
        teacher: ChatModel,
        verifier: ChatModel | None = None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.settings = settings
        self.teacher = teacher
        self.verifier = verifier or teacher
        self.failures: list[MRDFailure] = []
        self._gate = asyncio.Semaphore(settings.concurrency)

    async def run(
        self, samples: Sequence[Sample], on_item: ItemCallback | None = None
    ) -> MRDResult:
        """Disentangle (and verify) every sample; failed samples are left out of `records`."""
        self.failures = []
        jobs: list[asyncio.Task[RiskRecord | None]] = []
        async with asyncio.TaskGroup() as group:
            for sample in samples:
                job = self._guarded(sample.id, self._sample(sample), on_item)
                jobs.append(group.create_task(job))
        records = [record for job in jobs if (record := job.result()) is not None]
        order = {sample.id: i for i, sample in enumerate(samples)}  # completion order varies
        failures = sorted(self.failures, key=lambda f: order.get(f.sample_id, len(order)))
        return MRDResult(records, failures)

    async def _guarded(
        self,
        sample_id: str,
        job: Coroutine[Any, Any, RiskRecord | None],
        on_item: ItemCallback | None,
    ) -> RiskRecord | None:
        """Run one sample; a failure is recorded with its sample id and the others go on."""
        try:
            return await job
        except UnreadableAnswer as exc:
            self._fail(sample_id, "disentangle", exc.reason, exc.raw, exc.attempts)
        except Exception as exc:
            self._fail(sample_id, "error", f"{type(exc).__name__}: {exc}", "", 0)
        finally:
            if on_item is not None:
                on_item(sample_id)
        return None

    def _fail(self, sample_id: str, stage: FailureStage, reason: str, raw: str, n: int) -> None:
        logger.warning("MRD sample %s failed (%s): %s", sample_id, stage, reason)
        self.failures.append(
            MRDFailure(
                sample_id=sample_id, stage=stage, reason=reason, raw=excerpt(raw), attempts=n
            )
        )

    async def _sample(self, sample: Sample) -> RiskRecord:
        async with self._gate:
            risks, _raw = await self._ask(
                self.teacher,
                disentangle_request(sample),
                parse_risks,
                sample_id=sample.id,
                turn=1,
                role=TEACHER_ROLE,
                expected=MRD_EXPECTED,
                params=self.settings.params,
            )
            if self.settings.verify:
                risks = [
                    await self._verify(sample, risk, number)
                    for number, risk in enumerate(risks, start=1)
                ]
            return RiskRecord(
                sample_id=sample.id,
                risks=risks,
                teacher=self.teacher.name,
                verifier=self.verifier.name if self.settings.verify else None,
            )

    async def _verify(self, sample: Sample, risk: Risk, number: int) -> Risk:
        try:
            (present, note), _raw = await self._ask(
                self.verifier,
                verify_request(sample, risk),
                parse_verdict,
                sample_id=sample.id,
                turn=1 + number,  # turn 1 is the teacher's; each risk gets its own slot
                role=VERIFIER_ROLE,
                expected=VERIFY_EXPECTED,
                params=self.settings.verify_params,
            )
        except UnreadableAnswer as exc:
            # the teacher's risk stays (unverified, so kept) rather than losing the sample
            self._fail(sample.id, "verify", f"risk {number}: {exc.reason}", exc.raw, exc.attempts)
            note = f"verifier gave no readable answer: {exc.reason}"
            return risk.model_copy(update={"verified": None, "verify_note": note})
        return risk.model_copy(update={"verified": present, "verify_note": note})

    async def _ask(
        self,
        model: ChatModel,
        request: Dialogue,
        parse: Callable[[str], T],
        *,
        sample_id: str,
        turn: int,
        role: CallRole,
        expected: str,
        params: GenerateParams,
    ) -> tuple[T, str]:
        """Ask until `parse` accepts the answer, with a correction turn after each bad one.

        Raises:
            UnreadableAnswer: Still unusable after `settings.retries` corrections.
        """
        attempt = 0
        while True:
            reply = await cached_generate(
                self.store,
                self.run_id,
                model,
                request,
                params,
                sample_id=sample_id,
                turn=turn,
                role=role,
                attempt=attempt,
            )
            raw = reply.text
            try:
                return parse(raw), raw
            except ValueError as exc:
                reason = str(exc)
            if attempt >= self.settings.retries:
                raise UnreadableAnswer(reason, raw=raw, attempts=attempt + 1)
            logger.debug(
                "%s on %s: unusable answer (%s), correcting", model.name, sample_id, reason
            )
            correction = Message.user(fill("correction", reason=reason, expected=expected))
            request = request.with_message(Message.assistant(raw or "(empty)")).with_message(
                correction
            )
            attempt += 1


def summarize(
    records: Iterable[RiskRecord], failures: Iterable[MRDFailure], *, samples: int | None = None
) -> MRDSummary:
    """Counts by source and category, verification outcomes, and every failure."""
    records = list(records)
    failures = list(failures)
    all_risks = [risk for record in records for risk in record.risks]
    kept = [risk for record in records for risk in record.kept()]
    failed = {f.sample_id for f in failures if f.stage != "verify"}
    return MRDSummary(
        samples=len(records) + len(failed) if samples is None else samples,
        records=len(records),
        no_risk=sum(1 for record in records if not record.risks),
        risks=len(all_risks),
        verified=sum(1 for risk in all_risks if risk.verified is True),
        rejected=sum(1 for risk in all_risks if risk.verified is False),
        unverified=sum(1 for risk in all_risks if risk.verified is None),
        by_source=_counts(risk.source for risk in all_risks),
        by_category=_counts(risk.category.value for risk in all_risks),
        kept_by_source=_counts(risk.source for risk in kept),
        failed=len(failed),
        failures=failures,
    )


def _counts(values: Iterable[str]) -> dict[str, int]:
    counter: Mapping[str, int] = Counter(values)
    return dict(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))
