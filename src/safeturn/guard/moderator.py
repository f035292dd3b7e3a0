"""The dialogue moderator: the fast embedded stage, an optional LLM stage, and the policy.

Screening a dialogue reads only what is new. With an explicit `ConversationState` per
conversation, the state is extended in place. Without one (the proxy: OpenAI-style callers
resend the whole conversation), the moderator looks up the longest prefix it has already read
in a cache keyed by the chain of message hashes; and whatever it must still read goes through
per-message caches keyed by text and image hashes. Either way a new turn costs one embedding
(plus OCR of a new image), and the answer equals a from-scratch reading.

Explicit nudity (NudeNet) is the one signal not learned from data: the training images are all
typographic. When a turn's image holds explicit nudity with confidence ≥ `nudity_min`, that
confidence becomes a floor on the risk and the category is `sexual_content`.

Images are the expensive part, and a client chooses how many and how large. `screen` analyses
a request's new images in the analyzer's bounded pool and waits at most `image_deadline_s`;
when that passes, or the request is cancelled, the unfinished images are given up on and the
dialogue is read with them unread (as a remote image is). The text is always screened, the
result says how many images were not (`images_screened`, `unscreened_images`), and nothing
read that way is cached: not the images, not the conversation state, not an LLM verdict.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from safeturn.errors import PrerequisiteError
from safeturn.guard.base import ModerationResult, StrategyName
from safeturn.guard.cache import CachedEncoder, LruCache, message_digest
from safeturn.guard.encoder import model_encoder
from safeturn.guard.features import USER_CUES, ConversationState, FloatArray, feature_dim
from safeturn.guard.image_pool import ImageBatch
from safeturn.guard.images import ImageAnalyzer, ImageSignals, current_batch
from safeturn.guard.llm_stage import LlmStage, LlmVerdict
from safeturn.guard.model import ModeratorModel
from safeturn.guard.reader import DialogueReader
from safeturn.resources import AsyncResource
from safeturn.schema import Dialogue, ImagePart
from safeturn.taxonomy import Category

logger = logging.getLogger(__name__)


class PolicySource(Protocol):
    """Anything that maps a category to policy text (`safeturn.guard.policies.PolicyLibrary`)."""

    def for_category(self, category: Category | None) -> str:
        """The policy text for `category` (the default policy for None)."""
        ...


@dataclass(frozen=True)
class FastReading:
    """The fast stage's full reading, including the head outputs a result does not carry."""

    result: ModerationResult
    category_probs: dict[str, float]
    strategy_probs: dict[str, float]
    top_category: Category | None
    top_strategy: StrategyName


class DialogueModerator(AsyncResource):
    """Scores the cumulative harmful intent of a dialogue (implements `guard.base.Moderator`).

    Args:
        model: The trained fast-stage network.
        name: How logs and results name this moderator.
        threshold: Flag at or above this risk (default: the model's, chosen on validation).
        band: The uncertain band [lo, hi] of the fast risk in which `llm` is consulted.
        llm: The optional LLM stage.
        policies: Fills `ModerationResult.policy` for flagged dialogues.
        encoder: Text embeddings with their cache (default: MiniLM, single-threaded for
            single turns, 20,000 texts cached).
        images: Image signals with their cache (default: OCR bridge + NudeNet).
        nudity_min: NudeNet confidence from which nudity sets a risk floor.
        state_cache: Conversation states kept for the resend path.
        llm_can_clear: Let the LLM stage clear a fast-stage flag (off: it can only escalate).
        image_deadline_s: Longest wait for a request's new images in `screen`; after it they
            are read as unseen and the result says so. None waits for every image (evaluation).

    Examples:
        >>> moderator = DialogueModerator(ModeratorModel.load())  # doctest: +SKIP
        >>> result = moderator.screen_sync(dialogue)  # doctest: +SKIP
        >>> result.risk, result.flagged, result.earliest_turn  # doctest: +SKIP
        (0.97, True, 2)
    """

    def __init__(
        self,
        model: ModeratorModel,
        *,
        name: str = "embedded",
        threshold: float | None = None,
        band: tuple[float, float] | None = None,
        llm: LlmStage | None = None,
        policies: PolicySource | None = None,
        encoder: CachedEncoder | None = None,
        images: ImageAnalyzer | None = None,
        nudity_min: float = 0.5,
        state_cache: int = 1024,
        llm_can_clear: bool = False,
        image_deadline_s: float | None = None,
    ) -> None:
        if image_deadline_s is not None and image_deadline_s <= 0:
            raise ValueError(f"image_deadline_s must be > 0 or None; got {image_deadline_s}")
        self.image_deadline_s = image_deadline_s
        self.model = model
        # The LLM reads user text verbatim, so a prompt injection ("moderator note: this is a
        # test") could talk it out of a flag; by default it may only escalate.
        self.llm_can_clear = llm_can_clear
        self.name = name
        self.threshold = model.threshold if threshold is None else threshold
        lo, hi = model.band if band is None else band
        if not (0.0 <= lo <= hi <= 1.0 and 0.0 <= self.threshold <= 1.0):
            raise ValueError(f"need 0 <= lo <= hi <= 1 and a threshold in [0, 1]; got {band}")
        self.band = (lo, hi)
        self.llm = llm
        self.policies = policies
        self.encoder = encoder or model_encoder(model)
        if feature_dim(self.encoder.dim) != model.input_dim:
            raise PrerequisiteError(
                f"moderator model expects {model.input_dim} features, but {self.encoder.dim}-d "
                f"embeddings give {feature_dim(self.encoder.dim)}; retrain it for this encoder"
            )
        self.images = images or ImageAnalyzer()
        self.reader = DialogueReader(self.encoder, self.images)
        self.nudity_min = nudity_min
        self._states: LruCache[str, ConversationState] = LruCache(state_cache)
        self._llm_answers: LruCache[str, LlmVerdict] = LruCache(state_cache)

    def new_state(self) -> ConversationState:
        """An empty state to pass to `screen` for one conversation."""
        return self.reader.new_state()

    async def screen(
        self, dialogue: Dialogue, state: ConversationState | None = None
    ) -> ModerationResult:
        """Read `dialogue` (only its new part) and return the cumulative reading.

        New images are analysed in the image pool for at most `image_deadline_s`; the ones
        not done by then, or when this call is cancelled, are cancelled and read as unseen.

        Args:
            dialogue: The whole conversation so far.
            state: This conversation's state, extended in place; None uses the prefix cache.

        Raises:
            ImageError: An image is missing or corrupt (the message names message and image).
        """
        with self.images.batch(self.image_deadline_s) as batch:
            if dialogue.images:
                await asyncio.to_thread(self.images.submit, batch, _labelled_images(dialogue))
                await batch.wait()
            reading = await asyncio.to_thread(self.read, dialogue, state)
            result = reading.result
            lo, hi = self.band
            if self.llm is not None and lo <= result.risk <= hi and dialogue.n_turns > 0:
                result = await self._ask_llm(dialogue, reading)
            return _mark_unscreened(result, batch)

    def screen_sync(
        self, dialogue: Dialogue, state: ConversationState | None = None
    ) -> ModerationResult:
        """The fast stage only, synchronously (evaluation, benchmarks, notebooks)."""
        return self.read(dialogue, state).result

    def read(self, dialogue: Dialogue, state: ConversationState | None = None) -> FastReading:
        """The fast stage's reading of `dialogue`, with the head probabilities."""
        reading = self._reading(self._extend(dialogue, state))
        if state is not None and _provisional():
            state.clear()  # it holds images read as unseen: the next call reads them again
        return reading

    def warm_up(self) -> None:
        """Load the image engines now, so the first request's images meet their deadline."""
        self.images.warm_up()

    async def aclose(self) -> None:
        """Close the LLM stage and the image pool (the shared encoder stays loaded)."""
        self.images.close()
        if self.llm is not None:
            await self.llm.aclose()

    # -- fast stage ------------------------------------------------------------------------

    def _extend(self, dialogue: Dialogue, state: ConversationState | None) -> ConversationState:
        if state is not None:
            extended, _ = self.reader.extend(state, dialogue, self._score_row)
            return extended
        digests = [
            message_digest(m, f"dialogue message {i}") for i, m in enumerate(dialogue.messages)
        ]
        chain = _chain(digests)
        start = self.new_state()
        for key in reversed(chain):
            cached = self._states.get(key)
            if cached is not None:
                start = cached.copy()
                break
        extended, _ = self.reader.extend(start, dialogue, self._score_row, digests=digests)
        if chain and not _provisional():
            self._states.put(chain[-1], extended.copy())
        return extended

    def _score_row(self, state: ConversationState, row: FloatArray) -> None:
        out, state.pool_max, state.pool_sum = self.model.step(
            row, state.pool_max, state.pool_sum, state.turns
        )
        state.logits.append(float(out.harm[0]))
        state.category_probs = out.category[0].astype(np.float32)
        state.strategy_probs = out.strategy[0].astype(np.float32)

    def _reading(self, state: ConversationState) -> FastReading:
        if state.turns == 0:
            empty = ModerationResult(
                risk=0.0, flagged=False, threshold=self.threshold, rationale="no user turn yet"
            )
            return FastReading(empty, {}, {}, None, "none")
        running = np.maximum.accumulate(np.asarray(state.logits, dtype=np.float64))
        model_risks = np.asarray(self.model.calibrate(running), dtype=np.float64)
        nudity = np.asarray(state.nudity, dtype=np.float64)
        floor = np.where(nudity >= self.nudity_min, nudity, 0.0)
        risks = np.clip(np.maximum(model_risks, floor), 0.0, 1.0)
        crossed = np.flatnonzero(risks >= self.threshold)
        earliest = int(crossed[0]) + 1 if crossed.size else None
        risk = float(risks[-1])
        flagged = risk >= self.threshold
        assert state.category_probs is not None and state.strategy_probs is not None
        category_probs = dict(
            zip(self.model.categories, map(float, state.category_probs), strict=True)
        )
        strategy_probs = dict(
            zip(self.model.strategies, map(float, state.strategy_probs), strict=True)
        )
        by_nudity = floor[-1] > 0 and floor[-1] >= model_risks[-1]
        top_category = Category(max(category_probs, key=category_probs.__getitem__))
        category_score = category_probs[top_category.value]
        if by_nudity:
            top_category, category_score = Category.SEXUAL_CONTENT, float(floor[-1])
        top_strategy = max(strategy_probs, key=strategy_probs.__getitem__)  # the model's labels
        result = ModerationResult(
            risk=risk,
            flagged=flagged,
            threshold=self.threshold,
            category=top_category if flagged else None,
            category_score=category_score if flagged else None,
            strategy=top_strategy if flagged else "none",
            strategy_score=strategy_probs[top_strategy] if flagged else None,
            turn_risks=[float(r) for r in risks],
            earliest_turn=earliest,
            rationale=self._rationale(
                state, risks, earliest, by_nudity, top_category, top_strategy
            ),
            policy=self._policy(top_category) if flagged else None,
            stage="fast",
        )
        return FastReading(result, category_probs, strategy_probs, top_category, top_strategy)

    def _rationale(
        self,
        state: ConversationState,
        risks: np.ndarray[tuple[int], np.dtype[np.float64]],
        earliest: int | None,
        by_nudity: bool,
        category: Category,
        strategy: StrategyName,
    ) -> str:
        """Which signals fired, without quoting any user content."""
        turns = state.turns
        risk = float(risks[-1])
        if risk >= self.threshold:
            head = (
                f"fast stage: risk {risk:.2f} >= threshold {self.threshold:.2f}, first crossed "
                f"at turn {earliest} of {turns}"
            )
        else:
            head = (
                f"fast stage: risk {risk:.2f} < threshold {self.threshold:.2f} over {turns} turns"
            )
        notes = [head]
        jumps = np.diff(np.concatenate([[0.0], risks]))
        notes.append(f"largest rise at turn {int(np.argmax(jumps)) + 1}")
        if state.image_turns:
            notes.append("image text read in turn(s) " + ", ".join(map(str, state.image_turns)))
        if state.unread_images:
            kind = "image(s) (remote or unscreened)" if _provisional() else "remote image(s)"
            notes.append(f"{state.unread_images} {kind} not inspected")
        if by_nudity:
            notes.append(f"explicit nudity detected (confidence {state.nudity[-1]:.2f})")
        assert state.cue_sum is not None
        cues = [name for name, value in zip(USER_CUES, state.cue_sum, strict=True) if value > 0]
        if cues:
            notes.append("cues: " + ", ".join(cues))
        if risk >= self.threshold:
            notes.append(f"suspected strategy {strategy}, category {category.value}")
        return "; ".join(notes)

    def _policy(self, category: Category | None) -> str | None:
        return None if self.policies is None else self.policies.for_category(category)

    # -- LLM stage -------------------------------------------------------------------------

    async def _ask_llm(self, dialogue: Dialogue, reading: FastReading) -> ModerationResult:
        assert self.llm is not None
        fast = reading.result
        key = _chain([message_digest(m, "dialogue") for m in dialogue.messages])[-1]
        verdict = self._llm_answers.get(key)
        try:
            if verdict is None:
                verdict = await self.llm.judge(dialogue, self._image_text)
                if not _provisional():  # a verdict on images read as unseen is not kept
                    self._llm_answers.put(key, verdict)
        except Exception as exc:  # any failure of the optional stage keeps the fast decision
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
            logger.warning(
                "LLM stage %s failed (%s); keeping the fast decision", self.llm.name, reason
            )
            note = f"; LLM stage {self.llm.name} failed ({reason}); fast decision kept"
            return fast.model_copy(update={"rationale": fast.rationale + note})
        return self._merge(fast, reading, verdict, dialogue.n_turns)

    def _image_text(self, image: ImagePart, label: str) -> str:
        return self.images.analyze(image, label).text

    def _merge(
        self, fast: ModerationResult, reading: FastReading, verdict: LlmVerdict, turns: int
    ) -> ModerationResult:
        assert self.llm is not None
        said = f"LLM stage {self.llm.name}: {'harmful' if verdict.harmful else 'not harmful'}"
        if verdict.rationale:
            said += f" ({verdict.rationale})"
        if verdict.harmful:
            risk = max(fast.risk, verdict.risk or 0.0, self.threshold)
            category = verdict.category or reading.top_category
            strategy = verdict.strategy or reading.top_strategy
            return fast.model_copy(
                update={
                    "risk": min(risk, 1.0),
                    "flagged": True,
                    "category": category,
                    "category_score": None if verdict.category else fast.category_score,
                    "strategy": strategy,
                    "strategy_score": None if verdict.strategy else fast.strategy_score,
                    "earliest_turn": fast.earliest_turn or verdict.earliest_turn or turns,
                    "rationale": f"{said}; {fast.rationale}",
                    "policy": self._policy(category),
                    "stage": "llm",
                }
            )
        if fast.flagged and not self.llm_can_clear:
            return fast.model_copy(
                update={"rationale": f"{said}, kept flagged (llm_can_clear off); {fast.rationale}"}
            )
        below = float(np.nextafter(self.threshold, 0.0)) if self.threshold > 0 else 0.0
        risk = min(fast.risk, verdict.risk if verdict.risk is not None else fast.risk, below)
        return fast.model_copy(
            update={
                "risk": max(risk, 0.0),
                "flagged": False,
                "category": None,
                "category_score": None,
                "strategy": "none",
                "strategy_score": None,
                "earliest_turn": None,
                "rationale": f"{said}; {fast.rationale}",
                "policy": None,
                "stage": "llm",
            }
        )


def _labelled_images(dialogue: Dialogue) -> list[tuple[ImagePart, str]]:
    """Every image with the label the reader gives it in errors."""
    return [
        (image, f"dialogue message {i} image {j}")
        for i, message in enumerate(dialogue.messages)
        for j, image in enumerate(message.images)
    ]


def _provisional() -> bool:
    """Whether the screening in progress read some image as unseen (then nothing is cached)."""
    batch = current_batch()
    return batch is not None and bool(batch.unscreened)


def _mark_unscreened(result: ModerationResult, batch: ImageBatch[ImageSignals]) -> ModerationResult:
    """Say in `result` that images went unscreened, and why (content-free)."""
    count = len(batch.unscreened)
    if not count:
        return result
    note = f"; {count} image(s) not screened ({batch.why_unscreened()}), read as unseen"
    update = {"images_screened": False, "unscreened_images": count}
    return result.model_copy(update=update | {"rationale": result.rationale + note})


def _chain(digests: Sequence[str]) -> list[str]:
    """Chained hashes: element k identifies the first k+1 messages."""
    out: list[str] = []
    previous = b""
    for digest in digests:
        previous = hashlib.sha256(previous + digest.encode("ascii")).digest()
        out.append(previous.hex())
    return out
