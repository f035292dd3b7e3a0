"""Per-turn signals, and the running state of a conversation that the fast stage reads.

Each user turn becomes one feature row: the embedding of its text, the embedding of a *window*
of consecutive user turns ending with it (the turn itself first, then up to two earlier ones),
the embedding of the text OCR read in its images, cheap lexical cues of the attack shapes
(references to "the image", "same way as before", "put it all together"; compliant-looking or
refusing assistant turns just before it) and running counts (turn number, images so far, the
share of turns with each cue). The window is what resolves references: "How can I steal it?"
means little alone and a great deal next to "I see a cop car over there, it's running". The
vectors end with the harm reader's logit of the text when the model has one (`scored`
columns; several images' vectors are averaged, their logits maxed). The
model (`model.py`) maps each row to a hidden vector and pools those over the turns so far
(running max), so one revealing turn is not averaged away by seven innocent ones. Every
aggregate is a running sum, count or max held in `ConversationState`, so a new turn costs two
embeddings and constant work, never a pass over the whole dialogue.

Training and inference both go through `ConversationState`, so the features cannot drift apart.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from safeturn.guard.images import ImageSignals
from safeturn.judges.refusal_legacy import legacy_detect_refusal

FloatArray = npt.NDArray[np.float32]

_USER_CUES: tuple[tuple[str, str], ...] = (
    ("refers_image", r"\b(?:image|picture|photo|figure|screenshot|worksheet|handout|attached)\b"),
    ("list", r"\b(?:list|items?|numbered|blank|fill in|complete the)\b"),
    (
        "same_way",
        r"\b(?:same way|same format|same style|same level|just as|as before|keep the same)\b",
    ),
    (
        "combine",
        r"\b(?:combine|put (?:your|all|everything|it all|them) .{0,30}together|everything above"
        r"|previous answers|summari[sz]e (?:all|everything))\b",
    ),
    (
        "frame",
        r"\b(?:novel|story|screenplay|character|scene|thriller|fiction|chapter|literature review"
        r"|research|business plan|client|investor|hypothetical|role-?play)\b",
    ),
    (
        "detail",
        r"\b(?:step[- ]by[- ]step|in detail|detailed|precisely|specifics|full (?:technical )?detail"
        r"|exact(?:ly)?)\b",
    ),
    ("how_to", r"\b(?:how (?:to|do|can|could|would)|steps to|methods to|ways to|instructions)\b"),
)
_ASSISTANT_CUES: tuple[tuple[str, str], ...] = (
    (
        "complies",
        r"^\W*(?:sure|absolutely|of course|certainly|gladly|happy to|here (?:are|is|you go)"
        r"|great question|definitely|yes)\b",
    ),
    (
        "describes_image",
        r"\b(?:the image|the picture|the photo|it reads|heading says|text graphic|contains the"
        r" words)\b",
    ),
    ("numbered", r"(?m)^\s*(?:\d+[.)]|\(\w\))\s"),
)
USER_CUES = tuple(name for name, _ in _USER_CUES)
ASSISTANT_CUES = (*(name for name, _ in _ASSISTANT_CUES), "refuses")
_USER_RES = tuple(re.compile(pattern, re.IGNORECASE) for _, pattern in _USER_CUES)
_ASSISTANT_RES = tuple(re.compile(pattern, re.IGNORECASE) for _, pattern in _ASSISTANT_CUES)

SCALAR_NAMES: tuple[str, ...] = (
    "turn/8",
    "1/turn",
    "user_chars",
    "empty_text",
    "images_here",
    "ocr_chars_here",
    "images_so_far",
    "ocr_chars_so_far",
    "unread_images",
    *(f"{cue}_here" for cue in USER_CUES),
    *(f"{cue}_frac" for cue in USER_CUES),
    *(f"assistant_{cue}_before" for cue in ASSISTANT_CUES),
    *(f"assistant_{cue}_frac" for cue in ASSISTANT_CUES),
)

WINDOW_TURNS = 3
"""User turns in a window: the current one and up to two before it."""
WINDOW_PREVIOUS_CHARS = 300
"""Characters kept of each earlier turn in a window (the encoder reads 256 tokens at most)."""

FEATURE_RECIPE = (
    f"guard-v3: per turn minilm-l6-v2[user text, window of {WINDOW_TURNS} user turns "
    f"(current first, earlier ones cut to {WINDOW_PREVIOUS_CHARS} chars), image ocr text] + "
    f"{len(SCALAR_NAMES)} signals"
)
"""Names the feature recipe; a model trained on another recipe is refused at load time."""


def window_text(current: str, previous: list[str]) -> str:
    """The text of the window ending at `current`, given the earlier user texts in order.

    The current turn comes first, so the encoder's truncation cuts old context, never the turn
    being screened; with no earlier turn the window is the turn itself.
    """
    earlier = [p.strip()[:WINDOW_PREVIOUS_CHARS] for p in previous[-(WINDOW_TURNS - 1) :]]
    parts = [current.strip(), *reversed(earlier)]
    return "\n".join(p for p in parts if p) if earlier else current


def user_cues(text: str) -> FloatArray:
    """One 0/1 per user cue (`USER_CUES`)."""
    return np.array([bool(r.search(text)) for r in _USER_RES], dtype=np.float32)


def assistant_cues(text: str) -> FloatArray:
    """One 0/1 per assistant cue (`ASSISTANT_CUES`); all zero when there was no assistant turn."""
    if not text.strip():
        return np.zeros(len(ASSISTANT_CUES), dtype=np.float32)
    found = [bool(r.search(text)) for r in _ASSISTANT_RES]
    return np.array([*found, legacy_detect_refusal(text)], dtype=np.float32)


@dataclass(frozen=True)
class TurnRecord:
    """Everything the features need from one user turn (and the assistant text before it)."""

    texts: tuple[str, ...]
    """What the vectors were computed from: the user text, the window text, then the system
    and image texts (the harm reader's training needs them; never stored)."""
    text_vector: FloatArray
    """Embedding of the user text (zeros for an image-only turn)."""
    window_vector: FloatArray
    """Embedding of `window_text` for this turn."""
    chars: int
    images: tuple[ImageSignals, ...]
    image_vectors: tuple[FloatArray, ...]
    """Embeddings of the OCR text of each image that had readable text."""
    cues: FloatArray
    assistant: FloatArray
    """Assistant cues of the assistant message(s) between the previous user turn and this one."""

    @property
    def nudity(self) -> float:
        """The strongest explicit-nudity detection among this turn's images."""
        return max((s.nudity for s in self.images), default=0.0)


@dataclass
class ConversationState:
    """Running aggregates of a conversation's user turns; `advance` adds one turn in O(dim).

    Holds little user text: vectors, counts, the digests of the messages it has consumed, the
    last `WINDOW_TURNS - 1` user texts (the next window needs them) and assistant text until
    the next user turn; it lives in memory only and is never logged or stored.
    """

    dim: int
    scored: int = 0
    """The last `scored` columns of a vector are scores, pooled over images by max."""
    turns: int = 0
    digests: list[str] = field(default_factory=list)
    """Digests of every message consumed so far (all roles), in order."""
    pending_assistant: list[str] = field(default_factory=list)
    """Assistant texts seen since the last user turn (they belong to the next turn)."""
    pending_context: list[str] = field(default_factory=list)
    """System/developer texts seen since the last user turn. A caller controls them as much as
    the user turns, so they are read with the next user turn, in its image-text channel."""
    pending_images: list[ImageSignals] = field(default_factory=list)
    """Signals of images sent outside user turns; they join the next user turn's images."""
    recent_user: list[str] = field(default_factory=list)
    """The last `WINDOW_TURNS - 1` user texts, oldest first."""
    images: int = 0
    unread_images: int = 0
    ocr_chars: int = 0
    cue_sum: FloatArray | None = None
    assistant_sum: FloatArray | None = None
    pool_max: npt.NDArray[np.float64] | None = None
    """Running max of the model's per-turn hidden vectors (kept by the model's `step`)."""
    pool_sum: npt.NDArray[np.float64] | None = None
    """Running sum of the same vectors."""
    logits: list[float] = field(default_factory=list)
    """The classifier's raw harm logit after each user turn."""
    nudity: list[float] = field(default_factory=list)
    """The strongest nudity detection up to each user turn."""
    category_probs: FloatArray | None = None
    strategy_probs: FloatArray | None = None
    image_turns: list[int] = field(default_factory=list)
    """1-based turns that carried readable image text."""

    def clear(self) -> None:
        """Forget everything (the dialogue no longer extends what this state read)."""
        self.__dict__.update(ConversationState(dim=self.dim, scored=self.scored).__dict__)

    def copy(self) -> ConversationState:
        """An independent copy (arrays are replaced, never mutated, so they can be shared)."""
        return ConversationState(
            dim=self.dim,
            scored=self.scored,
            turns=self.turns,
            digests=list(self.digests),
            pending_assistant=list(self.pending_assistant),
            pending_context=list(self.pending_context),
            pending_images=list(self.pending_images),
            recent_user=list(self.recent_user),
            images=self.images,
            unread_images=self.unread_images,
            ocr_chars=self.ocr_chars,
            cue_sum=self.cue_sum,
            assistant_sum=self.assistant_sum,
            pool_max=self.pool_max,
            pool_sum=self.pool_sum,
            logits=list(self.logits),
            nudity=list(self.nudity),
            category_probs=self.category_probs,
            strategy_probs=self.strategy_probs,
            image_turns=list(self.image_turns),
        )

    def advance(self, record: TurnRecord) -> FloatArray:
        """Add one user turn and return its feature row (in the context of the turns before)."""
        self.turns += 1
        if record.image_vectors:
            self.image_turns.append(self.turns)
        self.images += sum(1 for s in record.images if s.readable)
        self.unread_images += sum(1 for s in record.images if not s.readable)
        here_ocr = sum(len(s.text) for s in record.images)
        self.ocr_chars += here_ocr
        self.cue_sum = record.cues.copy() if self.cue_sum is None else self.cue_sum + record.cues
        self.assistant_sum = (
            record.assistant.copy()
            if self.assistant_sum is None
            else self.assistant_sum + record.assistant
        )
        self.nudity.append(max(record.nudity, self.nudity[-1] if self.nudity else 0.0))
        image_vec = pool_images(record.image_vectors, self.dim, self.scored)
        t = float(self.turns)
        scalars = np.array(
            [
                min(t, 8.0) / 8.0,
                1.0 / t,
                math.log1p(record.chars) / 6.0,
                float(record.chars == 0),
                float(len(record.images)),
                math.log1p(here_ocr) / 6.0,
                min(float(self.images), 4.0),
                math.log1p(self.ocr_chars) / 6.0,
                float(self.unread_images > 0),
            ],
            dtype=np.float32,
        )
        return np.concatenate(
            [
                record.text_vector,
                record.window_vector,
                image_vec,
                scalars,
                record.cues,
                self.cue_sum / t,
                record.assistant,
                self.assistant_sum / t,
            ]
        ).astype(np.float32)


def pool_images(vectors: Sequence[FloatArray], dim: int, scored: int) -> FloatArray:
    """One vector for a turn's image texts: the mean embedding, and the max of each score.

    A mean lets five innocent images water down the one that spells out a harmful request;
    the embedding is only context for the category and strategy heads, the score decides.
    """
    if not vectors:
        return np.zeros(dim, dtype=np.float32)
    stacked = np.stack(vectors)
    pooled = stacked.mean(axis=0)
    if scored:
        pooled[dim - scored :] = stacked[:, dim - scored :].max(axis=0)
    return np.asarray(pooled, dtype=np.float32)


def feature_dim(dim: int) -> int:
    """The length of a feature row for embeddings of size `dim`."""
    return 3 * dim + len(SCALAR_NAMES)
