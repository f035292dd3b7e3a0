"""Turn messages into `TurnRecord`s and feed them to a `ConversationState`, only the new ones.

`extend` compares the dialogue's message digests with the ones the state has consumed. When
the state is a prefix of the dialogue (the usual case: one more assistant reply and one more
user turn) only the new messages are read; otherwise the state is rebuilt from scratch, so a
caller that edits history still gets a correct answer. New images are analysed first, then
every new text (user turns and OCR) is embedded in one batch through the content cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from safeturn.guard.cache import CachedEncoder, image_digest, message_digest
from safeturn.guard.features import (
    WINDOW_TURNS,
    ConversationState,
    FloatArray,
    TurnRecord,
    assistant_cues,
    user_cues,
    window_text,
)
from safeturn.guard.images import ImageAnalyzer, ImageSignals
from safeturn.schema import Dialogue, ImagePart, Message

RowCallback = Callable[[ConversationState, FloatArray], None]
"""Called once per new user turn with the advanced state and that turn's feature row."""
RecordCallback = Callable[[TurnRecord], None]
"""Called once per new user turn with what the row was made of (training reads the texts)."""


class DialogueReader:
    """Reads dialogues into conversation states through the shared caches.

    Args:
        encoder: Text embeddings, cached by text hash.
        images: Image signals, cached by image hash.
    """

    def __init__(self, encoder: CachedEncoder, images: ImageAnalyzer) -> None:
        self.encoder = encoder
        self.images = images

    def new_state(self) -> ConversationState:
        """An empty state for a new conversation."""
        return ConversationState(dim=self.encoder.dim, scored=self.encoder.scored)

    def extend(
        self,
        state: ConversationState,
        dialogue: Dialogue,
        on_row: RowCallback,
        *,
        label: str = "dialogue",
        digests: Sequence[str] | None = None,
        on_record: RecordCallback | None = None,
    ) -> tuple[ConversationState, bool]:
        """Consume the messages of `dialogue` that `state` has not seen.

        Args:
            state: Extended in place; cleared first when it is not a prefix of `dialogue`.
            dialogue: The whole conversation so far.
            on_row: Receives each new turn's feature row (the model scores it there).
            label: Names the dialogue in image errors.
            digests: The messages' digests when the caller has them already.
            on_record: Receives each new turn's record before its row is made.

        Returns:
            `state`, now covering `dialogue`, and whether what it held was reused.

        Raises:
            ImageError: An image is missing or corrupt; the message names message and image.
        """
        if digests is None:
            digests = [
                message_digest(m, f"{label} message {i}") for i, m in enumerate(dialogue.messages)
            ]
        reused = list(digests[: len(state.digests)]) == state.digests
        if not reused:
            state.clear()
        start = len(state.digests)
        new = list(enumerate(dialogue.messages))[start:]
        signals, windows, vectors = self._read_new(state, new, label)
        for i, message in new:
            state.digests.append(digests[i])
            if message.role != "user":
                # Images and system text outside user turns are read with the next user turn:
                # a request hidden there must not bypass the screen.
                state.pending_images.extend(signals[i])
                if message.role == "assistant":
                    state.pending_assistant.append(message.text)
                elif message.text.strip():
                    state.pending_context.append(message.text)
                continue
            window = windows.pop(0)
            record = _record(message, [*state.pending_images, *signals[i]], vectors, window, state)
            if on_record is not None:
                on_record(record)
            state.pending_assistant, state.pending_context, state.pending_images = [], [], []
            state.recent_user = [*state.recent_user, message.text][-(WINDOW_TURNS - 1) :]
            on_row(state, state.advance(record))
        return state, reused

    def _read_new(
        self, state: ConversationState, new: list[tuple[int, Message]], label: str
    ) -> tuple[dict[int, list[ImageSignals]], list[str], dict[str, FloatArray]]:
        """Analyse the new messages' images, then embed all their texts in one batch.

        Returns:
            Each new message's image signals, the window text of each new user turn, and
            the vector of every text embedded.
        """
        signals = {
            i: [
                self.images.analyze(image, f"{label} message {i} image {j}")
                for j, image in enumerate(m.images)
            ]
            for i, m in new
        }
        windows = _windows(state.recent_user, [m.text for _, m in new if m.role == "user"])
        texts = [m.text for i, m in new if m.role == "user"] + windows
        texts += [m.text for i, m in new if m.role == "system" and m.text.strip()]
        texts += [s.text for found in signals.values() for s in found if s.text.strip()]
        vectors = dict(zip(texts, self.encoder.encode(texts), strict=True))
        return signals, windows, vectors


def _windows(recent: list[str], texts: list[str]) -> list[str]:
    """The window text of each new user text, in order, continuing from `recent`."""
    out = []
    previous = list(recent)
    for text in texts:
        out.append(window_text(text, previous))
        previous.append(text)
    return out


def _record(
    message: Message,
    signals: list[ImageSignals],
    vectors: dict[str, FloatArray],
    window: str,
    state: ConversationState,
) -> TurnRecord:
    text = message.text
    others = [*state.pending_context, *(s.text for s in signals if s.text.strip())]
    return TurnRecord(
        texts=(text, window, *others),
        text_vector=vectors[text],
        window_vector=vectors[window],
        chars=len(text.strip()),
        images=tuple(signals),
        image_vectors=tuple(vectors[t] for t in others),
        cues=user_cues(text),
        assistant=assistant_cues("\n".join(state.pending_assistant)),
    )


def stack_rows(rows: list[FloatArray], width: int) -> FloatArray:
    """Rows as one float32 matrix (an empty matrix of the right width when there are none)."""
    if not rows:
        return np.zeros((0, width), dtype=np.float32)
    return np.stack(rows).astype(np.float32)


Progress = Callable[[str, int, int], None]
"""Called as (what, done, total) while caches are primed."""


def prime(
    reader: DialogueReader, dialogues: Sequence[Dialogue], progress: Progress | None = None
) -> None:
    """Analyse every distinct image and embed every distinct text of `dialogues`, in batches.

    Reading the dialogues afterwards only hits the caches; this is how training and evaluation
    turn thousands of dialogues into features without one encoder call per turn.
    """
    images: dict[str, tuple[ImagePart, str]] = {}
    texts: dict[str, None] = {}
    for n, dialogue in enumerate(dialogues):
        users = [m.text for m in dialogue.messages if m.role == "user"]
        texts.update(dict.fromkeys(_windows([], users)))
        for i, message in enumerate(dialogue.messages):
            if message.role == "assistant":
                continue
            texts[message.text] = None
            for j, image in enumerate(message.images):
                label = f"dialogue {n} message {i} image {j}"
                images.setdefault(image_digest(image, label), (image, label))
    for done, (image, label) in enumerate(images.values(), start=1):
        signals = reader.images.analyze(image, label)
        texts[signals.text] = None
        if progress is not None:
            progress("images", done, len(images))
    todo = [t for t in texts if t.strip()]
    step = 512
    for start in range(0, len(todo), step):
        reader.encoder.prime(todo[start : start + step])
        if progress is not None:
            progress("texts", min(start + step, len(todo)), len(todo))
