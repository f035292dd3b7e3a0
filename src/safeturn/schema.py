"""The dialogue schema every other module speaks.

A `Sample` is one test item: a multi-turn, multimodal `Dialogue` plus what we know about it
(source, category, strategy, harmful flag, seed question). Images are referenced, not
embedded: an `ImagePart` holds a local path, raw bytes or a data URL and is decoded only when a
backend needs the pixels, so loading a 10,000-dialogue benchmark stays cheap.

The OpenAI chat format (content parts with `image_url` data URLs) is the interchange format for
servers; `Dialogue.to_openai` / `Dialogue.from_openai` round-trip it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from PIL import Image
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from safeturn.errors import ImageError, ImageTooLargeError, SchemaError
from safeturn.imaging import read_header

Role = Literal["system", "user", "assistant"]
VerdictLabel = Literal["safe", "unsafe", "invalid"]

SCHEMA_VERSION = 1
"""Bumped whenever a stored field changes meaning; readers reject newer versions."""


class ImageLimits(BaseModel):
    """Bounds that every decoded image must satisfy (guards against bombs and junk)."""

    model_config = ConfigDict(frozen=True)

    max_bytes: int = 20 * 1024 * 1024
    """Largest encoded file accepted."""
    max_pixels: int = 40_000_000
    """Largest width × height accepted (decompression-bomb guard)."""
    formats: frozenset[str] = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP"})
    """Pillow format names accepted."""


DEFAULT_LIMITS = ImageLimits()


class TextPart(BaseModel):
    """A piece of text inside a message."""

    type: Literal["text"] = "text"
    text: str


class ImagePart(BaseModel):
    """An image inside a message, given by exactly one of a local path, bytes or a URL.

    Pixels are decoded lazily by `load`, which also validates format and size. Only `data:`
    URLs are decoded; http(s) URLs are passed through to servers but never fetched here.
    """

    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    type: Literal["image"] = "image"
    path: str | None = None
    """Local file path (absolute once a loader has resolved it against its data root)."""
    data: bytes | None = None
    """Encoded image bytes (PNG, JPEG, ...)."""
    url: str | None = None
    """A `data:` URL, or an http(s) URL that only remote servers can read."""

    _sha256: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ImagePart:
        given = [n for n in ("path", "data", "url") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                f"an image needs exactly one of path, data, url; got {given or 'none'}"
            )
        return self

    @property
    def is_remote(self) -> bool:
        """True for http(s) URLs, whose bytes safeturn never downloads."""
        return self.url is not None and not self.url.startswith("data:")

    def resolved(self, root: Path | None) -> ImagePart:
        """Return a copy whose path is absolute and checked to lie inside `root`."""
        if self.path is None:
            return self
        return ImagePart(path=str(resolve_under_root(Path(self.path), root)))

    def read_bytes(self, *, label: str = "image", limits: ImageLimits = DEFAULT_LIMITS) -> bytes:
        """Return the encoded bytes, raising `ImageError` that names `label` on any failure."""
        if self.data is not None:
            raw = self.data
        elif self.path is not None:
            path = Path(self.path)
            if not path.is_file():
                raise ImageError(f"{label}: image file not found: {path}")
            size = path.stat().st_size
            if size > limits.max_bytes:
                raise ImageTooLargeError(
                    f"{label}: image {path} is {size} bytes (> {limits.max_bytes})"
                )
            raw = path.read_bytes()
        else:
            assert self.url is not None
            if self.is_remote:
                raise ImageError(f"{label}: remote image URL is not fetched: {self.url[:80]}")
            raw = decode_data_url(self.url, label=label)
        if len(raw) > limits.max_bytes:
            raise ImageTooLargeError(f"{label}: image is {len(raw)} bytes (> {limits.max_bytes})")
        return raw

    def sha256(self, *, label: str = "image") -> str:
        """Content hash of the encoded bytes: the key of every per-image cache."""
        if self._sha256 is None:
            self._sha256 = hashlib.sha256(self.read_bytes(label=label)).hexdigest()
        return self._sha256

    def load(self, *, label: str = "image", limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
        """Decode and validate the image; return it in RGB."""
        raw = self.read_bytes(label=label, limits=limits)
        read_header(raw, label=label, max_pixels=limits.max_pixels, formats=limits.formats)
        try:
            with Image.open(io.BytesIO(raw)) as probe:
                probe.verify()
            with Image.open(io.BytesIO(raw)) as img:
                img.load()
                return img.convert("RGB")
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(
                f"{label}: image is too large to decode safely ({exc})"
            ) from exc
        except MemoryError as exc:
            raise ImageTooLargeError(f"{label}: image is too large to decode") from exc
        except Exception as exc:  # any decoder failure is the image's, never a crash
            raise ImageError(f"{label}: corrupt or unreadable image ({exc})") from exc

    def to_data_url(self, *, label: str = "image") -> str:
        """A `data:` URL of the image (http(s) URLs are returned unchanged)."""
        if self.url is not None:
            return self.url
        raw = self.read_bytes(label=label)
        mime = _sniff_mime(raw)
        return f"data:{mime};base64,{base64.b64encode(raw).decode('ascii')}"


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(BaseModel):
    """One turn of a conversation: a role and an ordered list of text and image parts."""

    role: Role
    parts: list[Part] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _accept_content_shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict) and "content" in value and "parts" not in value:
            value = dict(value)
            content = value.pop("content")
            value["parts"] = [{"type": "text", "text": content}] if isinstance(content, str) else []
        return value

    @classmethod
    def user(cls, text: str = "", images: Sequence[ImagePart] = ()) -> Message:
        """A user message with its images placed before the text, as most VLM templates expect."""
        parts: list[TextPart | ImagePart] = list(images)
        if text:
            parts.append(TextPart(text=text))
        return cls(role="user", parts=parts)

    @classmethod
    def assistant(cls, text: str) -> Message:
        """An assistant message holding one text part."""
        return cls(role="assistant", parts=[TextPart(text=text)])

    @classmethod
    def system(cls, text: str) -> Message:
        """A system message holding one text part."""
        return cls(role="system", parts=[TextPart(text=text)])

    @property
    def text(self) -> str:
        """All text parts joined by newlines."""
        return "\n".join(p.text for p in self.parts if isinstance(p, TextPart))

    @property
    def images(self) -> list[ImagePart]:
        """The image parts in order."""
        return [p for p in self.parts if isinstance(p, ImagePart)]


class Dialogue(BaseModel):
    """An ordered conversation. "N-turn" means N user messages."""

    messages: list[Message] = Field(default_factory=list)

    @property
    def n_turns(self) -> int:
        """Number of user messages."""
        return sum(1 for m in self.messages if m.role == "user")

    @property
    def images(self) -> list[ImagePart]:
        """Every image in the dialogue, in order."""
        return [img for m in self.messages for img in m.images]

    def up_to_turn(self, turn: int) -> Dialogue:
        """The prefix ending with the `turn`-th user message (1-based)."""
        seen = 0
        for index, message in enumerate(self.messages):
            if message.role == "user":
                seen += 1
                if seen == turn:
                    return Dialogue(messages=self.messages[: index + 1])
        raise IndexError(f"dialogue has {self.n_turns} user turns, asked for turn {turn}")

    def with_message(self, message: Message) -> Dialogue:
        """A new dialogue with `message` appended (dialogues are treated as values)."""
        return Dialogue(messages=[*self.messages, message])

    def to_openai(
        self,
        *,
        label: str = "dialogue",
        image_url: Callable[[ImagePart, int, int], str] | None = None,
    ) -> list[dict[str, Any]]:
        """OpenAI chat messages; images become `image_url` parts with data URLs.

        `image_url(part, message_index, part_index)` replaces the plain data-URL encoding (a
        backend that checks each image before it is sent passes its own).
        """
        out: list[dict[str, Any]] = []
        for i, message in enumerate(self.messages):
            if all(isinstance(p, TextPart) for p in message.parts):
                out.append({"role": message.role, "content": message.text})
                continue
            content: list[dict[str, Any]] = []
            for j, part in enumerate(message.parts):
                if isinstance(part, TextPart):
                    content.append({"type": "text", "text": part.text})
                else:
                    url = (
                        image_url(part, i, j)
                        if image_url is not None
                        else part.to_data_url(label=f"{label} message {i} image {j}")
                    )
                    content.append({"type": "image_url", "image_url": {"url": url}})
            out.append({"role": message.role, "content": content})
        return out

    @classmethod
    def from_openai(cls, messages: Iterable[dict[str, Any]]) -> Dialogue:
        """Parse OpenAI chat messages (string or part-list content, image_url parts)."""
        parsed: list[Message] = []
        for i, raw in enumerate(messages):
            role = raw.get("role")
            if role == "developer":
                role = "system"
            if role not in ("system", "user", "assistant"):
                raise SchemaError(f"message {i}: unsupported role {role!r}")
            content = raw.get("content")
            parts: list[TextPart | ImagePart] = []
            if content is None or isinstance(content, str):
                parts = [TextPart(text=content or "")]
            elif isinstance(content, list):
                for j, item in enumerate(content):
                    parts.append(_part_from_openai(item, where=f"message {i} part {j}"))
            else:
                raise SchemaError(f"message {i}: content must be a string or a list")
            parsed.append(Message(role=role, parts=parts))
        return cls(messages=parsed)


class Sample(BaseModel):
    """One benchmark item: a dialogue to answer plus what is known about it."""

    version: int = SCHEMA_VERSION
    id: str
    source: str
    """Where it came from, e.g. `figstep`, `safemt`, `siuo`."""
    category: str | None = None
    """Canonical risk category (see taxonomy), or the source's own label."""
    strategy: str = "none"
    """Multi-turn attack strategy that built the dialogue (`none` for single-turn sets)."""
    turns: int = 0
    """Number of user turns; derived from the dialogue when left at 0."""
    harmful: bool | None = None
    """True for harmful requests, False for benign look-alikes, None when unknown."""
    seed_question: str | None = None
    reference_answer: str | None = None
    dialogue: Dialogue
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _derive_turns(self) -> Sample:
        if self.version > SCHEMA_VERSION:
            raise ValueError(f"sample schema version {self.version} is newer than {SCHEMA_VERSION}")
        actual = self.dialogue.n_turns
        if self.turns == 0:
            self.turns = actual
        elif self.turns != actual:
            raise ValueError(f"turns={self.turns} but the dialogue has {actual} user messages")
        return self

    def check_images(self, limits: ImageLimits = DEFAULT_LIMITS) -> None:
        """Decode every image now, raising an `ImageError` that names this sample."""
        for i, message in enumerate(self.dialogue.messages):
            for j, image in enumerate(message.images):
                image.load(label=f"sample {self.id!r} message {i} image {j}", limits=limits)


class GenerateParams(BaseModel):
    """Sampling options, recorded with every call so runs can be reproduced."""

    model_config = ConfigDict(frozen=True)

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


class BridgeInfo(BaseModel):
    """How a text-only model was shown images: what the image→text bridge produced."""

    method: Literal["ocr"] = "ocr"
    images: int
    texts: list[str]


GuardAction = Literal["allow", "annotate", "inject", "refuse", "replace"]


class GuardInfo(BaseModel):
    """What a guard (`safeturn.guard.GuardedModel`) decided about one call, content-free.

    It travels on the `Reply` rather than on the wrapper, so concurrent calls each keep their
    own decision and an evaluation run stores it with the call.
    """

    action: GuardAction
    """`allow` (not flagged), `annotate` (flagged, left alone), `inject` (policy added),
    `refuse` (model not called) or `replace` (the reply was screened unsafe and replaced)."""
    moderator: str
    flagged: bool
    risk: float | None = None
    """None when the moderator failed."""
    threshold: float | None = None
    category: str | None = None
    strategy: str = "none"
    earliest_turn: int | None = None
    turn_risks: list[float] = Field(default_factory=list)
    stage: str | None = None
    rationale: str = ""
    reply_score: float | None = None
    """P(harmful reply) from the reply screen, when replies are screened."""
    error: str | None = None
    """Which guard component failed and how (exception type only, never content)."""
    images_screened: bool = True
    """False when some images were not analysed (see `unscreened_images`); the decision then
    rests on the text and the guard's fail mode."""
    unscreened_images: int = 0
    moderator_s: float = 0.0
    model_s: float | None = None
    """Time spent in the wrapped model; None when it was not called."""
    reply_screen_s: float | None = None


class Reply(BaseModel):
    """A model's answer to one dialogue."""

    text: str
    model: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float = 0.0
    bridge: BridgeInfo | None = None
    """Set when images reached the model through the image→text bridge."""
    guard: GuardInfo | None = None
    """Set when the reply came through a guard: the moderation and what was done about it."""


class Verdict(BaseModel):
    """A judge's decision on one reply."""

    sample_id: str
    turn: int
    judge: str
    label: VerdictLabel
    refused: bool | None = None
    """Whether the reply refused or deflected; over-refusal on benign twins counts these."""
    score: float | None = None
    """Probability-like harm score in [0, 1] where the judge has one."""
    rationale: str = ""


def resolve_under_root(path: Path, root: Path | None) -> Path:
    """Resolve `path` (relative paths against `root`) and refuse anything outside `root`."""
    if root is None:
        return path.resolve()
    root = root.resolve()
    full = (path if path.is_absolute() else root / path).resolve()
    if not full.is_relative_to(root):
        raise ImageError(f"image path {path} is outside the data root {root}")
    return full


def decode_data_url(url: str, *, label: str = "image") -> bytes:
    """Decode a base64 `data:` URL."""
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:") or not header.endswith(";base64"):
        raise ImageError(f"{label}: not a base64 data URL")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"{label}: data URL is not valid base64") from exc


def _sniff_mime(raw: bytes) -> str:
    signatures = {
        b"\x89PNG": "image/png",
        b"\xff\xd8\xff": "image/jpeg",
        b"GIF8": "image/gif",
        b"BM": "image/bmp",
    }
    for magic, mime in signatures.items():
        if raw.startswith(magic):
            return mime
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def _part_from_openai(item: Any, *, where: str) -> TextPart | ImagePart:
    if not isinstance(item, dict):
        raise SchemaError(f"{where}: content part must be an object")
    kind = item.get("type")
    if kind == "text":
        return TextPart(text=str(item.get("text", "")))
    if kind == "image_url":
        spec = item.get("image_url")
        url = spec.get("url") if isinstance(spec, dict) else spec
        if not isinstance(url, str) or not url:
            raise SchemaError(f"{where}: image_url part has no url")
        return ImagePart(url=url)
    raise SchemaError(f"{where}: unsupported content part type {kind!r}")


def write_jsonl(samples: Iterable[Sample], path: Path) -> int:
    """Write samples one JSON object per line; return how many were written."""
    count = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for sample in samples:
            fh.write(sample.model_dump_json(exclude_none=True) + "\n")
            count += 1
    return count


def read_jsonl(path: Path, *, root: Path | None = None) -> Iterator[Sample]:
    """Read samples; relative image paths resolve against `root` (default: the file's folder).

    Errors name the file and line, so a bad record in a large file is easy to find.
    """
    base = root if root is not None else path.parent
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                sample = Sample.model_validate(json.loads(line))
            except (json.JSONDecodeError, ValidationError) as exc:
                raise SchemaError(f"{where}: invalid sample ({exc})") from exc
            try:
                yield _resolve_sample_images(sample, base)
            except ImageError as exc:
                raise ImageError(f"{where} sample {sample.id!r}: {exc}") from exc


def _resolve_sample_images(sample: Sample, root: Path) -> Sample:
    messages = [
        Message(
            role=m.role,
            parts=[p.resolved(root) if isinstance(p, ImagePart) else p for p in m.parts],
        )
        for m in sample.dialogue.messages
    ]
    return sample.model_copy(update={"dialogue": Dialogue(messages=messages)})
