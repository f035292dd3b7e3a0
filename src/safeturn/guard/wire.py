"""The OpenAI chat-completions wire format, as far as the guard proxy speaks it.

Requests are parsed into a `Dialogue` and `GenerateParams`; replies are written back as a
`chat.completion` or as `chat.completion.chunk` server-sent events. Anything the proxy cannot
honour (tools, `n > 1`, remote image URLs) is a clear 422 rather than silently dropped.
Remote image URLs are refused, not fetched: fetching would let any client make the proxy
request internal addresses, and the moderator must see the same pixels the model sees.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from safeturn.errors import ImageError, ImageTooLargeError, SchemaError
from safeturn.errors import WireError as WireError
from safeturn.errors import error_body as error_body
from safeturn.imaging import ImageHeader, check_intact, read_header
from safeturn.schema import (
    DEFAULT_LIMITS,
    Dialogue,
    GenerateParams,
    ImageLimits,
    ImagePart,
    Reply,
    decode_data_url,
)


class StreamOptions(BaseModel):
    """`stream_options`: only `include_usage` changes what the proxy sends."""

    include_usage: bool = False


class ChatRequest(BaseModel):
    """The fields of a chat-completions request that the proxy reads; others are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    tools: list[Any] | None = None
    functions: list[Any] | None = None

    @model_validator(mode="after")
    def _supported(self) -> ChatRequest:
        if self.n != 1:
            raise ValueError("n must be 1: the guard proxy returns one choice per request")
        if self.tools or self.functions:
            raise ValueError("tools and functions are not supported by the guard proxy")
        return self

    def params(self, default_max_tokens: int) -> GenerateParams:
        """Sampling options; unset ones take OpenAI's defaults (temperature and top_p 1)."""
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return GenerateParams(
            max_tokens=self.max_completion_tokens or self.max_tokens or default_max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=self.seed,
            stop=stop,
        )


def parse_request(raw: bytes) -> ChatRequest:
    """Parse the body, or raise a 422 `WireError` that says what is wrong and where."""
    try:
        payload = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WireError(422, f"request body is not valid JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise WireError(422, "request body must be a JSON object")
    try:
        return ChatRequest.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors()
        )
        raise WireError(422, f"invalid chat-completions request: {problems}") from None


def parse_dialogue(request: ChatRequest) -> Dialogue:
    """The request's messages as a `Dialogue` (images not yet checked: see `check_images`).

    Raises:
        WireError: 422 for an unsupported role or content part, or no user message.
    """
    try:
        dialogue = Dialogue.from_openai(request.messages)
    except (SchemaError, ValidationError, ValueError) as exc:
        raise WireError(422, f"invalid messages: {exc}") from None
    if not any(m.role == "user" for m in dialogue.messages):
        raise WireError(422, "invalid messages: at least one user message is required")
    # Every message and image costs the moderator real CPU (an embedding, OCR); without a cap a
    # single body under the byte limit could hold thousands of tiny images and stall the screen.
    if len(dialogue.messages) > MAX_MESSAGES:
        raise WireError(413, f"too many messages: {len(dialogue.messages)} > {MAX_MESSAGES}")
    if len(dialogue.images) > MAX_IMAGES:
        raise WireError(413, f"too many images: {len(dialogue.images)} > {MAX_IMAGES}")
    return dialogue


MAX_MESSAGES = 512
"""Most messages one request may carry."""
MAX_IMAGES = 32
"""Most images one request may carry."""


DEFAULT_REQUEST_PIXELS = 48_000_000
"""Pixels (width × height, summed over a request's images) one request may carry."""


def check_images(
    dialogue: Dialogue,
    limits: ImageLimits = DEFAULT_LIMITS,
    *,
    max_request_pixels: int | None = DEFAULT_REQUEST_PIXELS,
) -> None:
    """Check every image of `dialogue` (CPU-bound: run it off the event loop).

    Headers come first, for every image, so the per-request pixel budget is enforced before
    a single pixel is decoded; then each image is decoded, straight to the analysis size
    (`safeturn.imaging`), so a corrupt one is a 422 here and not a moderator failure later.

    Args:
        dialogue: The request's dialogue.
        limits: Per-image limits (bytes, pixels, formats).
        max_request_pixels: The sum of width × height over all images; None: no budget.

    Raises:
        WireError: 422 for remote or corrupt images; 413 for one over the byte or pixel limit,
            or for the image that takes the request over `max_request_pixels`.
    """
    checked: list[tuple[str, bytes]] = []
    total = 0
    for i, message in enumerate(dialogue.messages):
        for j, image in enumerate(message.images):
            label = f"messages[{i}] image {j}"
            raw, header = check_image(image, label=label, limits=limits)
            total += header.pixels
            if max_request_pixels is not None and total > max_request_pixels:
                over = (
                    f"{label}: this {header.width}x{header.height} image takes the request's "
                    f"images to {total} pixels, over the per-request budget of "
                    f"{max_request_pixels}"
                )
                raise WireError(413, over, code="image_budget_exceeded")
            checked.append((label, raw))
    for label, raw in checked:
        try:
            check_intact(raw, label=label, limit_pixels=limits.max_pixels, formats=limits.formats)
        except ImageError as exc:
            raise _image_error(exc) from None


def check_image(image: ImagePart, *, label: str, limits: ImageLimits) -> tuple[bytes, ImageHeader]:
    """Refuse remote, oversized or unaccepted images from their bytes and header alone.

    Returns:
        The encoded bytes and what the header declares (nothing has been decoded).
    """
    if image.url is None or image.is_remote:
        raise WireError(
            422,
            f"{label}: remote image URLs are not fetched by the guard proxy; "
            "send the image inline as a base64 data: URL",
            code="remote_image_url",
        )
    try:
        raw = decode_data_url(image.url, label=label)
    except ImageError as exc:
        raise WireError(422, str(exc), code="invalid_image") from None
    if len(raw) > limits.max_bytes:
        message = f"{label}: image is {len(raw)} bytes (limit {limits.max_bytes})"
        raise WireError(413, message, code="image_too_large")
    try:
        header = read_header(raw, label=label, formats=limits.formats)
    except ImageError as exc:
        raise _image_error(exc) from None
    if header.pixels > limits.max_pixels:
        message = (
            f"{label}: image is {header.width}x{header.height} pixels (limit {limits.max_pixels})"
        )
        raise WireError(413, message, code="image_too_large")
    return raw, header


def _image_error(exc: ImageError) -> WireError:
    """413 for an image too large to decode, 422 for any other image problem."""
    if isinstance(exc, ImageTooLargeError):
        return WireError(413, str(exc), code="image_too_large")
    return WireError(422, str(exc), code="invalid_image")


def usage(reply: Reply) -> dict[str, int]:
    """OpenAI's usage object; counts a backend did not report are 0."""
    prompt, completion = reply.prompt_tokens or 0, reply.completion_tokens or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def completion_body(
    reply: Reply, *, completion_id: str, model: str, extra: dict[str, Any]
) -> dict[str, Any]:
    """A `chat.completion` object; `extra` goes under the `safeturn` key."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text, "refusal": None},
                "logprobs": None,
                "finish_reason": reply.finish_reason or "stop",
            }
        ],
        "usage": usage(reply),
        "safeturn": extra,
    }


_PIECES = re.compile(r"\s*\S+\s*|\s+")


def stream_events(
    reply: Reply,
    *,
    completion_id: str,
    model: str,
    extra: dict[str, Any],
    include_usage: bool,
) -> Iterator[str]:
    """The reply as server-sent events of `chat.completion.chunk`s, ending with `[DONE]`.

    The text is cut into words: clients render it incrementally, although the whole reply
    existed before the first chunk (the guard screens complete replies).
    """
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None, **more: Any) -> str:
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            **more,
        }
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""}, None)
    for piece in _PIECES.findall(reply.text):
        yield chunk({"content": piece}, None)
    yield chunk({}, reply.finish_reason or "stop", safeturn=extra)
    if include_usage:
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": usage(reply),
        }
        yield f"data: {json.dumps(body)}\n\n"
    yield "data: [DONE]\n\n"
