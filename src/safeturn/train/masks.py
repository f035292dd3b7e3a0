"""Assistant-only loss masks for multi-turn (multimodal) chats, for any chat template.

TRL masks non-assistant tokens only for templates with `{% generation %}` markers, which most
VLM templates (and SmolLM2's) lack. `build_example` finds each assistant message's tokens
itself: for assistant message k it renders `messages[:k]` with the generation prompt and
`messages[:k+1]` without, tokenizes both the way the model will see them (through the
processor for VLMs, so image tokens are expanded exactly as in training), and supervises the
token difference. Every rendering must be a token prefix of the next and of the whole
conversation; a template that rewrites history (e.g. strips earlier reasoning) or a
tokenization that merges across a message boundary raises `MaskError` instead of silently
mis-masking.

Within a span, tokens after the last end-of-turn token (ChatML's newline after `<|im_end|>`)
carry no loss: the model must learn to emit `<|im_end|>`, not what the template writes after
it. The generation header (`<|im_start|>assistant` and its newline) belongs to the prompt
rendering and so never carries loss; image tokens never do either.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from safeturn.errors import MaskError as MaskError
from safeturn.models.hf_local import _vlm_messages
from safeturn.schema import Dialogue, Sample

IGNORE_INDEX = -100
"""The label value cross-entropy skips (PyTorch's and transformers' default)."""

_TOKEN_KEYS = ("input_ids", "attention_mask")


@dataclass
class TrainExample:
    """One tokenized dialogue with labels on assistant tokens only.

    `extras` holds the processor's other outputs (e.g. `pixel_values`), unbatched per image,
    or, for per-token outputs, as one row of the sequence's length.
    """

    input_ids: list[int]
    attention_mask: list[int]
    labels: list[int]
    extras: dict[str, Any] = field(default_factory=dict)
    assistant_spans: list[tuple[int, int]] = field(default_factory=list)
    """Half-open token ranges that carry loss, one per assistant message kept."""

    def as_dict(self) -> dict[str, Any]:
        """The features a trainer's dataset yields (what `AssistantOnlyCollator` takes)."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "labels": self.labels,
            **self.extras,
        }


def build_example(
    dialogue: Dialogue | Sample,
    tokenizer_or_processor: Any,
    *,
    max_length: int | None = None,
    end_tokens: Iterable[str] | None = None,
    label: str | None = None,
) -> TrainExample:
    """Tokenize a dialogue with its model's chat template; supervise assistant turns only.

    Args:
        dialogue: The conversation (a `Sample` is named by its id in errors).
        tokenizer_or_processor: A tokenizer for text-only models or a processor for VLMs;
            whichever carries the chat template renders it.
        max_length: Truncate from the right at message boundaries: the example keeps the
            longest prefix of the dialogue that ends with an assistant message and fits, so no
            assistant turn is ever cut mid-way (it would teach the model not to stop) and no
            image is split from its tokens. Left truncation is not offered: it would drop the
            system prompt and the images the later turns talk about.
        end_tokens: Tokens that end an assistant turn; what a span holds after the last of them
            carries no loss. Default: the tokenizer's eos token.
        label: Names the dialogue in errors (default: the sample id, or "dialogue").

    Returns:
        The example; `labels` is -100 everywhere except assistant tokens.

    Raises:
        MaskError: The template is not prefix-stable, a text-only tokenizer was given images,
            the dialogue has no assistant message, or none fits in `max_length`.
    """
    if isinstance(dialogue, Sample):
        label = label or f"sample {dialogue.id!r}"
        dialogue = dialogue.dialogue
    label = label or "dialogue"
    coder = ChatEncoder(tokenizer_or_processor, label)
    if dialogue.images and not coder.is_vlm:
        raise MaskError(
            f"{label}: has images but {type(tokenizer_or_processor).__name__} is a text-only "
            "tokenizer; pass the model's processor, or bridge the images to text first"
        )
    messages = dialogue.messages
    turns = [k for k, m in enumerate(messages) if m.role == "assistant"]
    if not turns:
        raise MaskError(f"{label}: has no assistant message, so nothing would carry loss")
    full = coder.encode(dialogue, len(messages), generation_prompt=False)
    spans, endings = _assistant_spans(coder, dialogue, turns, full, coder.end_ids(end_tokens))
    encoded = full
    if max_length is not None and len(full["input_ids"]) > max_length:
        fitting = [i for i, turn in enumerate(endings) if len(turn["input_ids"]) <= max_length]
        if not fitting:
            shortest = len(endings[0]["input_ids"])
            raise MaskError(
                f"{label}: every assistant turn lies beyond max_length={max_length} "
                f"(the first one ends at token {shortest})"
            )
        encoded, spans = endings[fitting[-1]], spans[: fitting[-1] + 1]
    return _masked(encoded, spans, coder.image_ids, label)


def _assistant_spans(
    coder: ChatEncoder,
    dialogue: Dialogue,
    turns: Sequence[int],
    full: Mapping[str, Any],
    end_ids: Collection[int],
) -> tuple[list[tuple[int, int]], list[dict[str, Any]]]:
    """Each assistant turn's supervised token span, and the encoding that ends with it.

    Raises:
        MaskError: A rendering is not a token prefix of the next or of the whole dialogue.
    """
    label = coder.label
    spans: list[tuple[int, int]] = []
    endings: list[dict[str, Any]] = []
    for k in turns:
        prompt = coder.encode(dialogue, k, generation_prompt=True)
        turn = coder.encode(dialogue, k + 1, generation_prompt=False)
        where = f"{label}: assistant message {k}"
        _check_prefix(prompt["input_ids"], turn["input_ids"], f"{where} (prompt vs turn)")
        _check_prefix(turn["input_ids"], full["input_ids"], f"{where} (turn vs whole dialogue)")
        start, stop = len(prompt["input_ids"]), len(turn["input_ids"])
        ends = [i for i in range(start, stop) if turn["input_ids"][i] in end_ids]
        spans.append((start, ends[-1] + 1 if ends else stop))
        endings.append(turn)
    return spans, endings


def _masked(
    encoded: Mapping[str, Any],
    spans: Sequence[tuple[int, int]],
    image_ids: Collection[int],
    label: str,
) -> TrainExample:
    """The example with labels on the spans only (never on image tokens).

    Raises:
        MaskError: No token carries loss.
    """
    input_ids = list(encoded["input_ids"])
    labels = [IGNORE_INDEX] * len(input_ids)
    for start, stop in spans:
        labels[start:stop] = input_ids[start:stop]
    for i, token in enumerate(input_ids):
        if token in image_ids:
            labels[i] = IGNORE_INDEX
    if all(x == IGNORE_INDEX for x in labels):
        raise MaskError(f"{label}: the assistant turns are empty, so nothing would carry loss")
    return TrainExample(
        input_ids=input_ids,
        attention_mask=list(encoded["attention_mask"]),
        labels=labels,
        extras=encoded["extras"],
        assistant_spans=list(spans),
    )


class AssistantOnlyCollator:
    """Pads `TrainExample`s (or their `as_dict`) into a batch for transformers/TRL trainers.

    Token fields are padded on the tokenizer's padding side: `input_ids` with its pad id (eos
    when it has none), `labels` with -100, `attention_mask` and other per-token fields with 0.
    Per-image fields such as `pixel_values` are concatenated along their first axis, the layout
    LLaVA-style models expect for images spread over a batch.
    """

    def __init__(self, tokenizer_or_processor: Any, *, pad_to_multiple_of: int | None = None):
        """Read the padding side and pad id from the tokenizer (a processor's own one)."""
        tokenizer = getattr(tokenizer_or_processor, "tokenizer", tokenizer_or_processor)
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = tokenizer.eos_token_id
        if pad_id is None:
            raise ValueError("the tokenizer has neither a pad token nor an eos token to pad with")
        self.pad_id = int(pad_id)
        self.padding_side = str(getattr(tokenizer, "padding_side", "right"))
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[TrainExample | Mapping[str, Any]]) -> dict[str, Any]:
        """Collate features into tensors (`input_ids`, `attention_mask`, `labels`, extras)."""
        import torch

        rows = [f.as_dict() if isinstance(f, TrainExample) else dict(f) for f in features]
        if not rows:
            raise ValueError("cannot collate an empty batch")
        lengths = [len(r["input_ids"]) for r in rows]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        pads = {"input_ids": self.pad_id, "labels": IGNORE_INDEX}
        keys = list(dict.fromkeys(k for r in rows for k in r))
        batch: dict[str, Any] = {}
        for key in keys:
            values = [r[key] for r in rows if key in r]
            per_token = key in pads or key == "attention_mask" or _is_per_token(values, lengths)
            if per_token:
                if len(values) != len(rows):
                    raise ValueError(f"every feature needs {key!r} (a per-token field)")
                padded = [self._pad(_as_list(v), width, pads.get(key, 0)) for v in values]
                batch[key] = torch.tensor(padded, dtype=torch.long)
            else:
                batch[key] = torch.cat([torch.as_tensor(v) for v in values], dim=0)
        return batch

    def _pad(self, row: list[int], width: int, value: int) -> list[int]:
        filler = [value] * (width - len(row))
        return filler + row if self.padding_side == "left" else row + filler


class ChatEncoder:
    """Renders and tokenizes dialogue prefixes exactly as a model's inputs are built."""

    def __init__(self, tokenizer_or_processor: Any, label: str) -> None:
        self.label = label
        self.source = tokenizer_or_processor
        self.tokenizer = getattr(tokenizer_or_processor, "tokenizer", tokenizer_or_processor)
        self.is_vlm = getattr(tokenizer_or_processor, "image_processor", None) is not None
        templater = next(
            (
                t
                for t in (tokenizer_or_processor, self.tokenizer)
                if getattr(t, "chat_template", None)
            ),
            None,
        )
        if templater is None:
            kind = type(tokenizer_or_processor).__name__
            raise MaskError(f"{label}: {kind} has no chat template")
        self.templater = templater
        self.image_ids: frozenset[int] = frozenset()
        if self.is_vlm:
            image_id = getattr(tokenizer_or_processor, "image_token_id", None)
            token = getattr(tokenizer_or_processor, "image_token", None)
            if image_id is None and token is not None:
                image_id = self.tokenizer.convert_tokens_to_ids(token)
            if image_id is not None:
                self.image_ids = frozenset({int(image_id)})

    def end_ids(self, end_tokens: Iterable[str] | None) -> frozenset[int]:
        """Token ids of the named end-of-turn tokens (default: the eos token)."""
        names = list(end_tokens) if end_tokens is not None else [self.tokenizer.eos_token]
        ids = {self.tokenizer.convert_tokens_to_ids(n) for n in names if n is not None}
        return frozenset(int(i) for i in ids if i is not None and i != self.tokenizer.unk_token_id)

    def encode(self, dialogue: Dialogue, count: int, *, generation_prompt: bool) -> dict[str, Any]:
        """Token ids, attention mask and extras of `dialogue.messages[:count]`."""
        messages = dialogue.messages[:count]
        if self.is_vlm:
            chat = _vlm_messages(Dialogue(messages=messages))
        else:
            chat = [{"role": m.role, "content": m.text} for m in messages]
        text = self.templater.apply_chat_template(
            chat, add_generation_prompt=generation_prompt, tokenize=False
        )
        if self.is_vlm:
            images = [
                image.load(label=f"{self.label} message {i} image {j}")
                for i, message in enumerate(messages)
                for j, image in enumerate(message.images)
            ]
            out = self.source(
                text=[str(text)],
                images=images or None,
                return_tensors="pt",
                add_special_tokens=False,
            )
            ids = out["input_ids"][0].tolist()
            mask = out["attention_mask"][0].tolist()
            extras = {
                k: (v[0] if _row_is_per_token(v, len(ids)) else v)
                for k, v in out.items()
                if k not in _TOKEN_KEYS
            }
        else:
            out = self.tokenizer(str(text), add_special_tokens=False)
            ids, mask, extras = list(out["input_ids"]), list(out["attention_mask"]), {}
        return {"input_ids": ids, "attention_mask": mask, "extras": extras}


def _check_prefix(prefix: Sequence[int], whole: Sequence[int], where: str) -> None:
    if len(prefix) <= len(whole) and list(whole[: len(prefix)]) == list(prefix):
        return
    diverge = next(
        (i for i, (a, b) in enumerate(zip(prefix, whole, strict=False)) if a != b),
        min(len(prefix), len(whole)),
    )
    raise MaskError(
        f"{where}: the chat template is not prefix-stable (renderings differ from token "
        f"{diverge}: the template rewrites earlier messages, or tokens merge across a message "
        "boundary), so assistant tokens cannot be located safely"
    )


def _row_is_per_token(value: Any, length: int) -> bool:
    shape = getattr(value, "shape", None)
    return shape is not None and len(shape) == 2 and shape[0] == 1 and shape[1] == length


def _is_per_token(values: Sequence[Any], lengths: Sequence[int]) -> bool:
    """True when every value is a flat row as long as its sequence (e.g. token type ids)."""
    if len(values) != len(lengths):
        return False
    for value, length in zip(values, lengths, strict=True):
        shape = getattr(value, "shape", None)
        if shape is not None:
            if len(shape) != 1 or shape[0] != length:
                return False
        elif not (isinstance(value, list) and len(value) == length):
            return False
        if shape is None and not all(isinstance(x, int) for x in value):
            return False
    return True


def _as_list(value: Any) -> list[int]:
    return [int(x) for x in (value.tolist() if hasattr(value, "tolist") else value)]
