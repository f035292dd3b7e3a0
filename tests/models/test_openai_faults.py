"""OpenAICompatModel under faults: huge replies, malformed 200s, and bad images.

Every test runs the client against a real local aiohttp server; attempts are counted there.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from PIL import Image

from safeturn.errors import BackendError, ImageError, ImageTooLargeError
from safeturn.imaging import check_intact
from safeturn.judges.refusal import RefusalJudge
from safeturn.models import load_model
from safeturn.models.openai_compat import (
    DEFAULT_MAX_REPLY_BYTES,
    MAX_REPLY_BYTES_ENV,
    OpenAICompatModel,
)
from safeturn.run.engine import EvalSettings, execute_run, start_run
from safeturn.run.results import load_results
from safeturn.run.store import RunStore
from safeturn.schema import Dialogue, GenerateParams, ImagePart, Message, Sample
from tests.models.conftest import start_chat_server

CAP = 64 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _completion(text: str = "Sure, here it is.") -> dict[str, Any]:
    return {
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text},
             "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4},
    }  # fmt: skip


async def _ok(request: web.Request) -> web.StreamResponse:
    return web.json_response(_completion())


@dataclass
class Server:
    """Answers the n-th request with `plan[n]` (the last one repeats); counts what it did."""

    plan: list[Handler] = field(default_factory=lambda: [_ok])
    bodies: list[dict[str, Any]] = field(default_factory=list)
    sent: int = 0
    """Body bytes the streaming handler managed to write."""
    hung_up: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the streaming handler's client went away mid-body."""
    base_url: str = ""

    @property
    def hits(self) -> int:
        return len(self.bodies)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(await request.json())
        return await self.plan[min(len(self.bodies), len(self.plan)) - 1](request)

    def streaming(self, total: int, *, declare_length: bool) -> Handler:
        """A 200 whose body is `total` bytes made lazily, 64 KiB at a time (never held whole)."""
        chunk = b"x" * (64 * 1024)

        async def handler(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            if declare_length:
                response.content_length = total
            await response.prepare(request)
            try:
                while self.sent < total:
                    await response.write(chunk)
                    self.sent += len(chunk)
            except ConnectionError:
                pass  # the client went away (or aiohttp cancels this handler: see `finally`)
            finally:
                if self.sent < total:
                    self.hung_up.set()
            return response

        return handler


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server()
    server, state.base_url = await start_chat_server(state.handle)
    yield state
    await server.close()


def _ask(text: str = "hello", images: list[ImagePart] | None = None) -> Dialogue:
    return Dialogue(messages=[Message.user(text, images or [])])


# --- item 10: a reply over the cap is an error, read in bounded chunks ----------------------


@pytest.mark.parametrize("declare_length", [False, True], ids=["chunked", "content-length"])
async def test_a_reply_over_the_cap_stops_the_read(
    server: Server, make_model: Callable[..., OpenAICompatModel], declare_length: bool
) -> None:
    total = 300 * 1024 * 1024  # produced lazily: the server never holds more than 64 KiB
    server.plan = [server.streaming(total, declare_length=declare_length)]
    model = make_model(server.base_url, max_reply_bytes=CAP)
    tracemalloc.start()
    try:
        with pytest.raises(BackendError) as info:
            await model.generate(_ask(), GenerateParams())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert f"over the {CAP}-byte limit" in message and "after 1 attempt" in message
    assert info.value.status == 200
    assert server.hits == 1  # the same reply would come back: not retried
    # The client hung up: the server could push no more than the socket buffers hold.
    await asyncio.wait_for(server.hung_up.wait(), timeout=10)
    assert server.sent < 32 * 1024 * 1024
    assert peak < 8 * 1024 * 1024  # neither the body nor a large part of it was held


async def test_a_reply_at_the_cap_is_read(
    server: Server, make_model: Callable[..., OpenAICompatModel]
) -> None:
    text = "y" * (CAP - len(json.dumps(_completion(""))))
    body = json.dumps(_completion(text)).encode()
    assert len(body) == CAP

    async def exact(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/json")

    server.plan = [exact]
    reply = await make_model(server.base_url, max_reply_bytes=CAP).generate(
        _ask(), GenerateParams()
    )
    assert reply.text == text


async def test_an_error_status_with_a_huge_body_is_still_retried(
    server: Server, make_model: Callable[..., OpenAICompatModel]
) -> None:
    async def huge_502(request: web.Request) -> web.StreamResponse:
        return web.Response(status=502, text="bad gateway " + "z" * (4 * CAP))

    server.plan = [huge_502, _ok]
    reply = await make_model(server.base_url, max_reply_bytes=CAP).generate(
        _ask(), GenerateParams()
    )
    assert reply.text == "Sure, here it is." and server.hits == 2


def test_the_cap_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MAX_REPLY_BYTES_ENV, raising=False)
    url = "http://127.0.0.1:1/v1"
    assert OpenAICompatModel(base_url=url, model="m").max_reply_bytes == DEFAULT_MAX_REPLY_BYTES
    assert 1024 * 1024 <= DEFAULT_MAX_REPLY_BYTES <= 16 * 1024 * 1024
    spec_model = load_model(f"openai:{url}#m", max_reply_bytes=12345)
    assert isinstance(spec_model, OpenAICompatModel) and spec_model.max_reply_bytes == 12345
    monkeypatch.setenv(MAX_REPLY_BYTES_ENV, "2048")
    assert OpenAICompatModel(base_url=url, model="m").max_reply_bytes == 2048
    assert OpenAICompatModel(base_url=url, model="m", max_reply_bytes=99).max_reply_bytes == 99
    monkeypatch.setenv(MAX_REPLY_BYTES_ENV, "lots")
    with pytest.raises(ValueError, match=MAX_REPLY_BYTES_ENV):
        OpenAICompatModel(base_url=url, model="m")
    with pytest.raises(ValueError, match="max_reply_bytes"):
        OpenAICompatModel(base_url=url, model="m", max_reply_bytes=0)


# --- item 12: a malformed or empty 200 is retried like a 5xx --------------------------------


def _answer(text: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text=text, content_type="application/json")

    return handler


BAD_200S = {
    "empty": "",
    "invalid-json": '{"choices": [{"message": ',
    "no-choices": json.dumps({"id": "x", "object": "chat.completion"}),
    "empty-choices": json.dumps({"choices": []}),
    "html": "<html>gateway hiccup</html>",
}


@pytest.mark.parametrize("body", BAD_200S.values(), ids=BAD_200S.keys())
async def test_a_bad_200_is_retried_then_succeeds(
    server: Server, make_model: Callable[..., OpenAICompatModel], body: str
) -> None:
    server.plan = [_answer(body), _answer(body), _ok]
    reply = await make_model(server.base_url).generate(_ask(), GenerateParams())
    assert reply.text == "Sure, here it is."
    assert server.hits == 3


async def test_a_persistently_bad_200_gives_up_after_the_retries(
    server: Server, make_model: Callable[..., OpenAICompatModel]
) -> None:
    server.plan = [_answer("")]
    with pytest.raises(BackendError, match=r"HTTP 200 with malformed JSON after 3 attempts"):
        await make_model(server.base_url, max_retries=2).generate(_ask(), GenerateParams())
    assert server.hits == 3
    server.plan = [_answer(BAD_200S["no-choices"])]
    with pytest.raises(BackendError, match=r"not a chat completion .*after 2 attempts"):
        await make_model(server.base_url, max_retries=1).generate(_ask(), GenerateParams())
    assert server.hits == 3 + 2


# --- item 11: images are decoded under the usual limits before anything is sent ------------


def _png(size: tuple[int, int] = (32, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny file whose header declares `width`×`height` RGB pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


BAD_IMAGES: dict[str, tuple[Callable[[], bytes], type[ImageError], str]] = {
    "corrupt": (lambda: b"\x89PNG\r\n\x1a\n" + b"\x13" * 500, ImageError, "corrupt"),
    "truncated-png": (lambda: _png((256, 256))[:-200], ImageError, "corrupt"),
    "truncated-jpeg": (lambda: _jpeg((256, 256))[:1500], ImageError, "corrupt"),
    "400-megapixels": (lambda: _png_header_only(20_000, 20_000), ImageTooLargeError, "too large"),
    "48-megapixels": (lambda: _png_header_only(8_000, 6_000), ImageTooLargeError, "40000000"),
    "not-an-image": (lambda: b"GIF89a? no, just text", ImageError, "corrupt"),
}


@pytest.mark.parametrize("case", BAD_IMAGES.keys())
async def test_a_bad_image_is_an_error_naming_it_and_nothing_is_sent(
    server: Server, make_model: Callable[..., OpenAICompatModel], tmp_path: Path, case: str
) -> None:
    make, error, words = BAD_IMAGES[case]
    path = tmp_path / f"{case}.png"
    path.write_bytes(make())
    dialogue = Dialogue(
        messages=[
            Message.user("first", [ImagePart(data=_png())]),
            Message.assistant("ok"),
            Message.user("and this?", [ImagePart(path=str(path))]),
        ]
    )
    with pytest.raises(error) as info:
        await make_model(server.base_url).generate(dialogue, GenerateParams())
    message = str(info.value)
    assert "message 2 image 0" in message and str(path) in message and words in message
    assert server.hits == 0


async def test_a_bad_data_url_image_is_an_error(
    server: Server, make_model: Callable[..., OpenAICompatModel]
) -> None:
    dialogue = _ask("see", [ImagePart(url="data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAA")])
    with pytest.raises(ImageError, match="message 0 image 0: corrupt"):
        await make_model(server.base_url).generate(dialogue, GenerateParams())
    assert server.hits == 0


async def test_good_images_are_sent_as_they_are_and_checked_once(
    server: Server,
    make_model: Callable[..., OpenAICompatModel],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded: list[str] = []

    def counting(raw: bytes, **kwargs: Any) -> Any:
        decoded.append(kwargs["label"])
        return check_intact(raw, **kwargs)

    monkeypatch.setattr("safeturn.models.openai_compat.check_intact", counting)
    jpeg = tmp_path / "photo.jpg"
    jpeg.write_bytes(_jpeg())
    remote = ImagePart(url="https://example.org/cat.png")  # passed on, never fetched here
    model = make_model(server.base_url)
    first = _ask("one", [ImagePart(path=str(jpeg)), ImagePart(data=_png()), remote])
    await model.generate(first, GenerateParams())
    second = first.with_message(Message.assistant("ok")).with_message(Message.user("two"))
    await model.generate(second, GenerateParams())
    assert len(decoded) == 2  # the history's images are not decoded again on the next turn
    urls = [p["image_url"]["url"] for p in server.bodies[1]["messages"][0]["content"][:3]]
    assert urls[0] == "data:image/jpeg;base64," + base64.b64encode(jpeg.read_bytes()).decode()
    assert urls[1].startswith("data:image/png;base64,")
    assert urls[2] == "https://example.org/cat.png"
    assert server.bodies[1]["messages"][2] == {"role": "user", "content": "two"}


async def test_a_run_records_a_bad_image_as_an_error_not_an_attack_success(
    server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    broken = tmp_path / "broken.png"
    broken.write_bytes(_png((256, 256))[:-300])
    good = tmp_path / "good.png"
    good.write_bytes(_png())
    samples = [
        Sample(
            id=name,
            source="test",
            harmful=True,
            dialogue=Dialogue(messages=[Message.user("do the thing", [ImagePart(path=str(p))])]),
        )
        for name, p in (("good", good), ("broken", broken))
    ]
    spec = f"openai:{server.base_url}#fake-vlm"
    store = RunStore(tmp_path / "safeturn.db")
    run_id = start_run(store, samples, EvalSettings(model=spec, concurrency=1))
    model = load_model(spec, backoff_initial_s=0.01)
    try:
        await execute_run(store, run_id, model, [RefusalJudge()])
    finally:
        await model.aclose()
    status = store.sample_status(run_id)
    assert status["good"][0] == "done"
    state, error = status["broken"]
    assert state == "error" and error is not None
    assert "ImageError" in error and str(broken) in error and "corrupt" in error
    assert server.hits == 1  # only the good sample reached the server
    results = load_results(store, run_id)
    assert results.attack_success()[:2] == (1, 1)  # the broken sample is not in the ASR
