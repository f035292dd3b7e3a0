"""Any OpenAI-compatible chat server (vLLM, SGLang, Ollama, hosted APIs) over aiohttp.

One pooled `aiohttp.ClientSession` per event loop, a semaphore bounding the requests in
flight, and tenacity retries with jittered exponential backoff on 429, 5xx, timeouts,
connection errors and 200s that are not a chat completion (empty, malformed JSON, no
`choices`: a proxy or server hiccup, not an answer). A reply is read in 64 KiB chunks up to
`max_reply_bytes`; a bigger one fails that call, unretried, instead of filling memory. Images
are checked under the same limits as everywhere else (`DEFAULT_LIMITS`, every pixel decoded)
before a request is built, so a corrupt or oversized one is an `ImageError` naming it, never
a call. The API key is read from an environment variable at construction, sent only as a
session header, and scrubbed from every error message; it never appears in `repr`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from typing import Any

import aiohttp
from PIL import Image
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)
from yarl import URL

from safeturn.errors import BackendError
from safeturn.imaging import check_intact
from safeturn.models.base import BaseChatModel
from safeturn.schema import DEFAULT_LIMITS, Dialogue, GenerateParams, ImagePart, Reply

logger = logging.getLogger(__name__)

DEFAULT_MAX_REPLY_BYTES = 8 * 1024 * 1024
"""Largest reply body read. A chat completion is kilobytes; 4096 tokens with 20 top
logprobs each are about 5 MB. Anything bigger is a misbehaving server, not an answer."""
MAX_REPLY_BYTES_ENV = "SAFETURN_OPENAI_MAX_REPLY_BYTES"
"""Overrides `DEFAULT_MAX_REPLY_BYTES` where no `max_reply_bytes` is given (every CLI path)."""

_EXCERPT_CHARS = 200
_RETRY_AFTER_STATUSES = frozenset({429, 503})
_CHUNK_BYTES = 64 * 1024
_ERROR_BODY_BYTES = 16 * 1024
"""Of an error status's body only the start is read: it is quoted, never parsed."""
_CHECKED_IMAGES = 4096
"""Content hashes of images already checked, remembered so a dialogue's history is not
decoded again on every turn."""


class _Failure(Exception):
    """One failed attempt, described without the key; internal, becomes `BackendError`."""

    def __init__(
        self,
        detail: str,
        excerpt: str = "",
        *,
        retryable: bool,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.excerpt = excerpt
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


_NETWORK_ERRORS = (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, _Failure):
        return exc.retryable
    return isinstance(exc, _NETWORK_ERRORS)


class OpenAICompatModel(BaseChatModel):
    """A model served behind `POST {base_url}/chat/completions`.

    Args:
        base_url: Server root including the version prefix, e.g. `http://localhost:8000/v1`.
        model: The model name the server expects in the request body.
        max_concurrency: Most requests in flight at once (also the connection pool size).
        timeout_s: Limit on one attempt, connection included.
        max_retries: Retries after the first attempt on 429, 5xx, timeouts, connection errors.
        api_key_env: Environment variable holding the API key; unset means no auth header.
        extra_body: Extra JSON fields merged into every request (they win over the defaults).
        backoff_initial_s: First backoff delay; doubles on each retry, plus jitter.
        backoff_max_s: Upper bound on one backoff delay.
        retry_after_max_s: Upper bound on a server's `Retry-After` (429/503) that is honoured.
        max_reply_bytes: Largest reply body read; a bigger one fails the call (not retried).
            None: `$SAFETURN_OPENAI_MAX_REPLY_BYTES`, else `DEFAULT_MAX_REPLY_BYTES` (8 MiB).
        name: Label recorded in replies; `load_model` sets it to the spec string.
    """

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        max_concurrency: int = 64,
        timeout_s: float = 120.0,
        max_retries: int = 5,
        api_key_env: str = "OPENAI_API_KEY",
        extra_body: dict[str, Any] | None = None,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 20.0,
        retry_after_max_s: float = 60.0,
        max_reply_bytes: int | None = None,
        name: str | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be at least 0, got {max_retries}")
        self.name = name or f"openai:{base_url}#{model}"
        self.model = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._shown_url = str(URL(self.url).with_user(None))  # no userinfo in messages
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.extra_body = dict(extra_body or {})
        self._backoff = wait_exponential_jitter(
            multiplier=backoff_initial_s, max=backoff_max_s, jitter=backoff_initial_s
        )
        self._retry_after_max_s = retry_after_max_s
        self.max_reply_bytes = _reply_cap(max_reply_bytes)
        self._checked: OrderedDict[str, str] = OrderedDict()  # image sha256 → MIME type
        self._checked_lock = threading.Lock()
        self._api_key = os.environ.get(api_key_env) or None
        self._session: aiohttp.ClientSession | None = None
        self._gate: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _ensure_session(self) -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        if self._session is None or self._gate is None or self._loop is not loop:
            # A session is bound to its loop: after `asyncio.run` returns, start a new one.
            # The stale one cannot be closed from here; call `aclose()` before a loop ends.
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_concurrency),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                headers={**headers, "Content-Type": "application/json"},
            )
            self._gate = asyncio.Semaphore(self.max_concurrency)
            self._loop = loop
        return self._session, self._gate

    async def generate(self, dialogue: Dialogue, params: GenerateParams) -> Reply:
        """Send the dialogue and parse the first choice.

        `latency_s` covers the whole call: waiting for a slot, retries and backoff.

        Raises:
            ImageError: An image is missing, corrupt, truncated or over `DEFAULT_LIMITS`;
                the message names it. Nothing was sent.
            BackendError: The server failed after the retries, refused the request (4xx
                other than 429), kept answering with something that is not a chat
                completion, or sent a reply over `max_reply_bytes`.
        """
        start = time.perf_counter()
        if any(not image.is_remote for image in dialogue.images):
            messages = await asyncio.to_thread(self._openai_messages, dialogue)  # decodes
        else:
            messages = self._openai_messages(dialogue)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        body.update(self.extra_body)
        return await self._post_with_retries(json.dumps(body).encode(), start)

    def _openai_messages(self, dialogue: Dialogue) -> list[dict[str, Any]]:
        """`Dialogue.to_openai`, with every local image checked before it is encoded."""
        return dialogue.to_openai(
            image_url=lambda part, i, j: self._image_url(part, label=_image_label(part, i, j))
        )

    def _image_url(self, image: ImagePart, *, label: str) -> str:
        """The data URL of a checked image; http(s) URLs pass unchanged (the server fetches)."""
        if image.url is not None and image.is_remote:
            return image.url
        raw = image.read_bytes(label=label, limits=DEFAULT_LIMITS)
        digest = hashlib.sha256(raw).hexdigest()
        with self._checked_lock:
            mime = self._checked.get(digest)
            if mime is not None:
                self._checked.move_to_end(digest)
        if mime is None:
            header = check_intact(
                raw,
                label=label,
                limit_pixels=DEFAULT_LIMITS.max_pixels,
                formats=DEFAULT_LIMITS.formats,
            )
            mime = Image.MIME.get(header.format, "application/octet-stream")
            with self._checked_lock:
                self._checked[digest] = mime
                while len(self._checked) > _CHECKED_IMAGES:
                    self._checked.popitem(last=False)
        return f"data:{mime};base64,{base64.b64encode(raw).decode('ascii')}"

    async def _post_with_retries(self, data: bytes, start: float) -> Reply:
        try:  # the common case, a first attempt that works, skips tenacity's bookkeeping
            return await self._post_once(data, start)
        except Exception as exc:
            first_failure: Exception | None = exc
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception(_is_retryable),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if first_failure is not None:  # replay attempt 1: same waits, logs, counts
                        failure, first_failure = first_failure, None
                        raise failure
                    return await self._post_once(data, start)
        except (_Failure, TimeoutError, aiohttp.ClientError) as exc:
            status = None
            if isinstance(exc, _Failure):
                detail, excerpt, status = exc.detail, exc.excerpt, exc.status
            elif isinstance(exc, TimeoutError):
                detail, excerpt = f"timed out after {self.timeout_s}s", ""
            else:
                detail, excerpt = f"{type(exc).__name__}: {exc}", ""
            attempts = int(retrying.statistics.get("attempt_number", 1))
            raise self._error(detail, excerpt, attempts, status) from None
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _post_once(self, data: bytes, start: float) -> Reply:
        session, gate = self._ensure_session()
        async with gate, session.post(self.url, data=data) as response:
            status = response.status
            retry_after = response.headers.get("Retry-After")
            if status >= 400:  # quoted in the error, never parsed: its start is enough
                raw, _ = await _read_at_most(response, _ERROR_BODY_BYTES)
            else:
                raw = await self._read_reply(response)
        text = raw.decode("utf-8", errors="replace")
        if status == 429 or status >= 500:
            wait = _parse_retry_after(retry_after) if status in _RETRY_AFTER_STATUSES else None
            raise _Failure(
                f"HTTP {status}",
                self._excerpt(text),
                retryable=True,
                retry_after=wait,
                status=status,
            )
        if status >= 400:
            raise _Failure(f"HTTP {status}", self._excerpt(text), retryable=False, status=status)
        # A 200 that is not a chat completion is a hiccup on the way (a proxy, a restarting
        # server), not the model's answer: retried like a 5xx, within the same budget.
        try:
            payload = json.loads(text)
        except json.JSONDecodeError:
            raise _Failure(
                f"HTTP {status} with malformed JSON",
                self._excerpt(text),
                retryable=True,
                status=status,
            ) from None
        try:
            choice = payload["choices"][0]
            message = choice["message"]
            usage = payload.get("usage") or {}
            return Reply(
                text=message.get("content") or message.get("refusal") or "",
                model=self.name,
                finish_reason=choice.get("finish_reason"),
                prompt_tokens=usage.get("prompt_tokens"),
                completion_tokens=usage.get("completion_tokens"),
                latency_s=time.perf_counter() - start,
            )
        except (LookupError, TypeError, AttributeError, ValueError) as exc:
            detail = f"response is not a chat completion ({type(exc).__name__})"
            raise _Failure(detail, self._excerpt(text), retryable=True, status=status) from None

    async def _read_reply(self, response: aiohttp.ClientResponse) -> bytes:
        """The body, read in chunks; over `max_reply_bytes` it fails and the connection closes."""
        cap = self.max_reply_bytes
        declared = response.content_length
        if declared is not None and declared > cap:
            response.close()
            raise _Failure(
                f"HTTP {response.status} reply of {declared} bytes is over the {cap}-byte limit "
                f"(max_reply_bytes, ${MAX_REPLY_BYTES_ENV})",
                retryable=False,
                status=response.status,
            )
        raw, complete = await _read_at_most(response, cap)
        if not complete:
            response.close()  # drop the connection rather than drain the rest
            raise _Failure(
                f"HTTP {response.status} reply is over the {cap}-byte limit "
                f"(max_reply_bytes, ${MAX_REPLY_BYTES_ENV})",
                self._excerpt(raw[: 4 * _EXCERPT_CHARS].decode("utf-8", errors="replace")),
                retryable=False,
                status=response.status,
            )
        return raw

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, _Failure) and exc.retry_after is not None:
            return min(exc.retry_after, self._retry_after_max_s)
        return self._backoff(state)

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        reason = exc.detail if isinstance(exc, _Failure) else type(exc).__name__
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        logger.warning(
            "model %r at %s: attempt %d/%d failed (%s); retrying in %.2fs",
            self.model,
            self._shown_url,
            state.attempt_number,
            self.max_retries + 1,
            reason,
            delay,
        )

    def _excerpt(self, text: str) -> str:
        text = " ".join(text.split())
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text[:_EXCERPT_CHARS] + ("…" if len(text) > _EXCERPT_CHARS else "")

    def _error(self, detail: str, excerpt: str, attempts: int, status: int | None) -> BackendError:
        tries = f"after {attempts} attempt{'s' if attempts != 1 else ''}"
        body = f": {excerpt}" if excerpt else ""
        message = f"model {self.model!r} at {self._shown_url}: {detail} {tries}{body}"
        return BackendError(message, status=status)

    async def aclose(self) -> None:
        """Close the HTTP session and its pooled connections."""
        session, self._session, self._gate, self._loop = self._session, None, None, None
        if session is not None and not session.closed:
            await session.close()


async def _read_at_most(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """Up to `limit` bytes of the body in bounded chunks; True when that was all of it."""
    body = bytearray()
    while len(body) <= limit:
        chunk = await response.content.read(min(_CHUNK_BYTES, limit + 1 - len(body)))
        if not chunk:
            return bytes(body), True
        body += chunk
    return bytes(body[:limit]), False


def _reply_cap(given: int | None) -> int:
    """`max_reply_bytes`, or the environment's, or the default; checked to be positive."""
    if given is None:
        value = os.environ.get(MAX_REPLY_BYTES_ENV, "").strip()
        if not value:
            return DEFAULT_MAX_REPLY_BYTES
        try:
            given = int(value)
        except ValueError:
            raise ValueError(
                f"${MAX_REPLY_BYTES_ENV} must be a whole number of bytes, got {value!r}"
            ) from None
    if given < 1:
        raise ValueError(f"max_reply_bytes must be at least 1, got {given}")
    return given


def _image_label(image: ImagePart, message: int, index: int) -> str:
    """Names an image in errors: its place in the dialogue, and its file when it has one."""
    where = f"message {message} image {index}"
    return f"{where} ({image.path})" if image.path is not None else where


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header; HTTP dates and junk give None (use backoff)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return max(seconds, 0.0) if seconds == seconds else None  # NaN → None
