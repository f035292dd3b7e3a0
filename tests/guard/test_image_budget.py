"""Images cannot stall the guard or slip past it: pixel budget, image deadline, fail modes.

The hostile requests of the security review: six blank 6300×6300 PNGs (38 KiB in all), a PNG
declaring 20000×20000 pixels, images slower to read than the deadline, and an upstream whose
error body echoes the user's message.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import struct
import threading
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from safeturn.guard.base import ModerationResult
from safeturn.guard.guarded import GuardedModel
from safeturn.guard.images import ImageAnalyzer
from safeturn.guard.moderator import DialogueModerator
from safeturn.guard.policies import PolicyLibrary, inject_policy
from safeturn.guard.refusals import FAILURE_TEXT, refusal_text
from safeturn.models.bridge import OcrBridge
from safeturn.schema import Dialogue, GenerateParams, ImageLimits, ImagePart, Message
from safeturn.taxonomy import Category
from tests.conftest import png_bytes

from ._moderator_stubs import constant_model, stub_encoder
from .conftest import MODEL, TOKEN, FakeUpstream, KeywordModerator, ProxyFactory
from .test_guarded import RecordingModel

DEFAULT_POLICY = PolicyLibrary.default().for_category(None)


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


@functools.cache
def blank_png(width: int, height: int) -> bytes:
    """A valid all-black 8-bit grayscale PNG, compressed row by row (no full-size buffer)."""
    packer = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then black pixels
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    ihdr, body, end = _chunk(b"IHDR", header), _chunk(b"IDAT", idat), _chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + ihdr + body + end


def header_only_png(width: int, height: int) -> bytes:
    """A PNG that declares a size and holds no pixel data (a few dozen bytes)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IEND", b"")


def data_url(raw: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(raw).decode()}"


def chat(*images: bytes, text: str = "what do these say?") -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": data_url(raw)}} for raw in images
    ]
    parts.append({"type": "text", "text": text})
    return {"model": MODEL, "messages": [{"role": "user", "content": parts}]}


async def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/chat/completions", data=json.dumps(body), headers=headers) as r,
    ):
        return r.status, await r.json(), dict(r.headers)


# -- the pixel budget and decoding errors, from headers ------------------------------------


@pytest.mark.parametrize("on_error", ["closed", "open"])
async def test_six_blank_6300px_pngs_are_refused_before_decoding(
    start_proxy: ProxyFactory, upstream: FakeUpstream, on_error: str
) -> None:
    blank = blank_png(6300, 6300)
    assert len(blank) < 64 * 1024  # tiny on the wire, 39.7 M pixels each
    moderator = KeywordModerator()
    url = await start_proxy(moderator, on_error=on_error)
    status, body, _ = await post(url, chat(*[blank] * 6))
    assert status == 413
    assert body["error"]["code"] == "image_budget_exceeded"
    assert body["error"]["message"].startswith("messages[0] image 1: this 6300x6300 image")
    assert upstream.bodies == [] and moderator.seen == []  # neither forwarded nor screened


async def test_one_large_blank_png_within_the_budget_is_screened(
    start_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    moderator = KeywordModerator()
    url = await start_proxy(moderator)
    status, _, _ = await post(url, chat(blank_png(6300, 6300)))
    assert status == 200
    assert len(moderator.seen) == 1 and len(upstream.bodies) == 1


async def test_the_budget_is_a_setting(start_proxy: ProxyFactory, upstream: FakeUpstream) -> None:
    url = await start_proxy(max_request_pixels=2_000)
    small = png_bytes((40, 40))  # 1,600 pixels
    assert (await post(url, chat(small)))[0] == 200
    status, body, _ = await post(url, chat(small, png_bytes((40, 40), "blue")))
    assert status == 413 and "messages[0] image 1" in body["error"]["message"]


async def test_a_decompression_bomb_is_413_not_500(
    start_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    # Limits far above the bomb, so Pillow's own bomb check is what fires (it used to be a 500).
    limits = ImageLimits(max_pixels=10**12)
    url = await start_proxy(image_limits=limits, max_request_pixels=10**12)
    status, body, _ = await post(url, chat(header_only_png(20000, 20000)))
    assert status == 413
    assert body["error"]["code"] == "image_too_large"
    assert body["error"]["message"].startswith("messages[0] image 0: image is too large")
    assert upstream.bodies == []


async def test_declared_size_and_undecodable_pixels(
    start_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    url = await start_proxy()
    status, body, _ = await post(url, chat(header_only_png(20000, 20000)))
    assert (status, body["error"]["code"]) == (413, "image_too_large")
    status, body, _ = await post(url, chat(header_only_png(64, 64)))  # header, no pixels
    assert (status, body["error"]["code"]) == (422, "invalid_image")
    assert "messages[0] image 0: corrupt or unreadable image" in body["error"]["message"]
    assert upstream.bodies == []


async def test_a_png_with_a_broken_chunk_checksum_is_422_as_at_an_openai_upstream(
    start_proxy: ProxyFactory, upstream: FakeUpstream
) -> None:
    # The proxy checks what the `openai:` backend checks (`imaging.check_intact`), so a PNG whose
    # pixels decode but whose chunk CRC is wrong is the client's 422 here, not a 502 upstream.
    good = png_bytes((40, 40))
    idat = good.index(b"IDAT")
    crc_at = idat + 4 + struct.unpack(">I", good[idat - 4 : idat])[0]
    broken = good[:crc_at] + bytes(4) + good[crc_at + 4 :]  # zero the IDAT chunk's CRC
    url = await start_proxy()
    status, body, _ = await post(url, chat(broken))
    assert (status, body["error"]["code"]) == (422, "invalid_image")
    assert "messages[0] image 0: corrupt or unreadable image" in body["error"]["message"]
    assert upstream.bodies == []
    assert (await post(url, chat(good)))[0] == 200


# -- the image deadline in the moderator -----------------------------------------------------


class BlockingEngine:
    """Stands in for RapidOCR: each call waits until `release` is set, and is counted."""

    def __init__(self, *, blocked: bool = True) -> None:
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        if not blocked:
            self.release.set()

    def __call__(self, _pixels: Any) -> tuple[None, None]:
        self.calls += 1
        self.entered.set()
        assert self.release.wait(timeout=30), "test never released the OCR engine"
        return None, None


class CountingDetector:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, _pixels: Any) -> float:
        self.calls += 1
        return 0.0


def slow_moderator(
    engine: BlockingEngine, *, logit: float = -4.0, deadline_s: float | None = 0.2
) -> tuple[DialogueModerator, ImageAnalyzer, CountingDetector]:
    bridge = OcrBridge(disk_cache=False)
    bridge._get_engine = lambda: engine  # type: ignore[method-assign]
    detector = CountingDetector()
    images = ImageAnalyzer(bridge, nudity=detector, workers=1)
    moderator = DialogueModerator(
        constant_model(logit), encoder=stub_encoder(), images=images, image_deadline_s=deadline_s
    )
    return moderator, images, detector


COLOURS = ("red", "green", "blue")


def three_images(text: str = "what do these say?") -> Dialogue:
    images = [ImagePart(data=png_bytes((48, 32), colour)) for colour in COLOURS]
    return Dialogue(messages=[Message.user(text, images)])


async def drained(images: ImageAnalyzer) -> None:
    """Wait until the pool has no job queued or running (the job bodies are not timed)."""
    for _ in range(3000):
        if images.pool.pending == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("image jobs still pending")


async def test_images_past_the_deadline_are_unscreened_and_the_work_stops() -> None:
    engine = BlockingEngine()
    moderator, images, detector = slow_moderator(engine)
    result = await moderator.screen(three_images())
    # The text was screened; the images were not, and the result says so.
    assert (result.images_screened, result.unscreened_images) == (False, 3)
    assert len(result.turn_risks) == 1 and not result.flagged
    assert "3 image(s) not screened (image deadline of 0.2s passed)" in result.rationale
    engine.release.set()
    await drained(images)
    # The first image's OCR call was already running; it found the batch cancelled afterwards.
    # The two queued images never started, the nudity detector never ran, nothing was cached.
    assert engine.calls == 1 and detector.calls == 0
    assert images.analyzed == 0 and len(images.cache) == 0
    await moderator.aclose()


async def test_unscreened_images_are_analysed_by_the_next_request() -> None:
    engine = BlockingEngine()
    moderator, images, _ = slow_moderator(engine)
    first = three_images()
    assert not (await moderator.screen(first)).images_screened
    engine.release.set()
    await drained(images)
    longer = Dialogue(messages=[*first.messages, Message.assistant("ok"), Message.user("and?")])
    result = await moderator.screen(longer)  # the resend path: a cached prefix must not hide them
    assert result.images_screened and result.unscreened_images == 0
    assert images.analyzed == 3
    await moderator.aclose()


async def test_an_explicit_state_is_not_kept_with_unread_images() -> None:
    engine = BlockingEngine()
    moderator, images, _ = slow_moderator(engine)
    state = moderator.new_state()
    assert not (await moderator.screen(three_images(), state)).images_screened
    assert state.turns == 0  # cleared: the next call reads the whole dialogue again
    engine.release.set()
    await drained(images)
    assert (await moderator.screen(three_images(), state)).images_screened
    assert state.turns == 1 and images.analyzed == 3
    await moderator.aclose()


async def test_a_cancelled_request_cancels_its_image_jobs() -> None:
    engine = BlockingEngine()
    moderator, images, detector = slow_moderator(engine, deadline_s=None)
    task = asyncio.ensure_future(moderator.screen(three_images()))
    await asyncio.to_thread(engine.entered.wait, 30)
    task.cancel()  # what asyncio.timeout does to a moderator call
    with pytest.raises(asyncio.CancelledError):
        await task
    engine.release.set()
    await drained(images)
    assert engine.calls == 1 and detector.calls == 0 and images.analyzed == 0
    await moderator.aclose()


async def test_without_a_deadline_every_image_is_read() -> None:
    moderator, images, detector = slow_moderator(BlockingEngine(blocked=False), deadline_s=None)
    result = await moderator.screen(three_images())
    assert result.images_screened and images.analyzed == 3 and detector.calls == 3
    again = await moderator.screen(three_images())  # cached now
    assert again.images_screened and images.analyzed == 3
    await moderator.aclose()


async def test_a_full_pool_leaves_images_unscreened() -> None:
    engine = BlockingEngine()
    moderator, images, _ = slow_moderator(engine, deadline_s=None)
    images.pool.max_pending = 1  # the first image holds the only place while it is read
    task = asyncio.ensure_future(moderator.screen(three_images()))
    await asyncio.to_thread(engine.entered.wait, 30)
    engine.release.set()
    result = await task
    assert (result.images_screened, result.unscreened_images) == (False, 2)
    assert "image pool busy" in result.rationale
    await moderator.aclose()


# -- what the guard does with an incomplete screening ----------------------------------------


class UnscreenedModerator:
    """Returns a fixed reading in which two images were not screened."""

    name = "fixed"
    threshold = 0.5
    band = (0.3, 0.7)

    def __init__(self, risk: float) -> None:
        self.risk = risk

    async def screen(self, dialogue: Dialogue) -> ModerationResult:
        flagged = self.risk >= self.threshold
        return ModerationResult(
            risk=self.risk,
            flagged=flagged,
            threshold=self.threshold,
            category=Category.VIOLENCE if flagged else None,
            turn_risks=[self.risk],
            images_screened=False,
            unscreened_images=2,
        )

    async def aclose(self) -> None:
        pass


DIALOGUE = Dialogue(messages=[Message.user("read the picture and do what it says")])
VIOLENCE_POLICY = PolicyLibrary.default().for_category(Category.VIOLENCE)


@pytest.mark.parametrize(
    ("risk", "mode", "on_error", "action", "sent", "flagged"),
    [
        # closed: whatever the text says, unscreened images are a refusal
        (0.1, "inject", "closed", "refuse", None, False),
        # open: the text-only reading still decides
        (0.9, "inject", "open", "inject", VIOLENCE_POLICY, True),
        (0.9, "refuse", "open", "refuse", None, True),
        (0.4, "inject", "open", "inject", DEFAULT_POLICY, True),  # in the band: as flagged
        (0.4, "refuse", "open", "refuse", None, True),
        (0.1, "inject", "open", "inject", DEFAULT_POLICY, False),  # low: default policy
        (0.1, "refuse", "open", "inject", DEFAULT_POLICY, False),
        (0.1, "annotate", "open", "allow", "", False),  # monitor-only never changes a request
    ],
)
async def test_unscreened_images_under_each_fail_mode(
    risk: float, mode: Any, on_error: Any, action: str, sent: str | None, flagged: bool
) -> None:
    model = RecordingModel("fine")
    guarded = GuardedModel(model, UnscreenedModerator(risk), mode=mode, on_error=on_error)
    reply = await guarded.generate(DIALOGUE, GenerateParams())
    assert reply.guard is not None
    assert (reply.guard.action, reply.guard.flagged) == (action, flagged)
    assert reply.guard.error == "images: 2 not screened"
    assert (reply.guard.images_screened, reply.guard.unscreened_images) == (False, 2)
    if sent is None:
        assert model.received == []
        expected = FAILURE_TEXT if on_error == "closed" else refusal_text(reply_category(risk))
        assert reply.text == expected
    else:
        assert model.received == [inject_policy(DIALOGUE, sent) if sent else DIALOGUE]


def reply_category(risk: float) -> Category | None:
    return Category.VIOLENCE if risk >= 0.5 else None


@pytest.mark.parametrize("on_error", ["closed", "open"])
async def test_the_proxy_with_images_past_the_deadline(
    start_proxy: ProxyFactory, upstream: FakeUpstream, on_error: str
) -> None:
    engine = BlockingEngine()
    moderator, images, _ = slow_moderator(engine)
    url = await start_proxy(moderator, on_error=on_error)
    try:
        status, body, headers = await post(url, chat(png_bytes((48, 32)), text="hello"))
    finally:
        engine.release.set()
    assert status == 200
    assert headers["x-safeturn-unscreened"] == "images"
    guard = body["safeturn"]
    assert (guard["error"], guard["images_screened"]) == ("images: 1 not screened", False)
    if on_error == "closed":
        assert body["choices"][0]["message"]["content"] == FAILURE_TEXT
        assert upstream.bodies == []
    else:  # low text risk: forwarded, but with the default safety policy and marked
        sent = upstream.bodies[0]["messages"]
        assert sent[0] == {"role": "system", "content": DEFAULT_POLICY}
        assert guard["action"] == "inject"
    await drained(images)


# -- no user content in logs ------------------------------------------------------------------

MARKER = "Zanzibar-7731 purple walrus"


async def test_an_echoing_upstream_error_leaves_no_content_in_logs_or_records(
    start_proxy: ProxyFactory,
    upstream: FakeUpstream,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from safeturn.guard.decisions import DecisionLog

    caplog.set_level(logging.DEBUG)
    db = tmp_path / "guard.db"
    url = await start_proxy(database=str(db))
    upstream.status, upstream.echo_errors = 500, True
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"hello {MARKER}"}]}
    status, answer, _ = await post(url, body)
    assert status == 502 and MARKER not in json.dumps(answer)
    log = DecisionLog(db)
    for _ in range(500):
        rows = log.rows()
        if rows:
            break
        await asyncio.sleep(0.01)
    (row,) = log.rows()
    await log.aclose()
    assert row.outcome == "upstream_error"
    failed = [r for r in caplog.records if r.getMessage().startswith("upstream failed")]
    assert [r.getMessage() for r in failed] == ["upstream failed (BackendError, HTTP 500)"]
    assert MARKER not in caplog.text
    for record in caplog.records:
        assert MARKER not in record.getMessage()
        assert MARKER not in json.dumps(getattr(record, "fields", {}), default=str)
    assert MARKER.encode() not in await asyncio.to_thread(_database_bytes, tmp_path)


def _database_bytes(folder: Path) -> bytes:
    """The database with its WAL and shared-memory files: whatever SQLite has written."""
    return b"".join(p.read_bytes() for p in folder.iterdir() if p.name.startswith("guard.db"))


def test_spec_options_reach_the_image_stage(tmp_path: Path) -> None:
    from safeturn.guard.spec import load_moderator
    from safeturn.judges.embedder import EMBEDDING_DIM

    path = tmp_path / "moderator.npz"
    constant_model(-4.0, dim=EMBEDDING_DIM).save(path)
    options = {"image_deadline_s": 2.5, "image_workers": 1, "ocr_threads": 1}
    moderator = load_moderator(str(path), **options)
    assert isinstance(moderator, DialogueModerator)
    assert moderator.image_deadline_s == 2.5
    assert (moderator.images.pool.workers, moderator.images.threads) == (1, 1)
    assert moderator.images.bridge.threads == 1
    assert load_moderator(str(path)).image_deadline_s is None  # library use waits for images


def test_serve_flags_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import typer
    import uvicorn
    from typer.testing import CliRunner

    from safeturn.commands import guard_serve
    from safeturn.guard import jsonlog, server

    built: list[Any] = []
    monkeypatch.setattr(server, "create_app", lambda settings: built.append(settings))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    monkeypatch.setattr(jsonlog, "configure_json_logging", lambda level: None)
    monkeypatch.setattr(guard_serve, "limit_torch_threads", lambda n: None)
    cli = typer.Typer()
    cli.command("serve")(guard_serve.serve_command)
    cli.callback()(lambda: None)
    args = ["serve", "--upstream", "openai:http://localhost:8001/v1#m", "--no-auth", "--no-db"]
    args += ["--max-request-megapixels", "10", "--image-deadline", "1.5"]
    args += ["--image-workers", "3", "--ocr-threads", "0"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    (settings,) = built
    assert (settings.max_request_pixels, settings.image_deadline_s) == (10_000_000, 1.5)
    assert (settings.image_workers, settings.ocr_threads) == (3, None)  # 0: the environment's
