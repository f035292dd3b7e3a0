"""Guard test doubles: a keyword moderator, a fake OpenAI upstream, and a live proxy.

The upstream is a real aiohttp server and the proxy a real uvicorn server, both on free
localhost ports in the test's event loop, so the official `openai` client talks HTTP to them.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from aiohttp import web
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI

from safeturn.guard.base import ModerationResult
from safeturn.guard.server import ProxySettings, create_app
from safeturn.schema import Dialogue
from safeturn.taxonomy import Category

TOKEN = "guard-token-0123456789abcdef"
UPSTREAM_KEY = "sk-upstream-secret-9876543210"
UPSTREAM_KEY_ENV = "SAFETURN_TEST_UPSTREAM_KEY"
MODEL = "fake-vlm"


class KeywordModerator:
    """Flags a dialogue when any user turn mentions `keyword`; can fail or stall on demand."""

    def __init__(
        self,
        keyword: str = "bomb",
        category: Category = Category.WEAPONS_CBRN,
        *,
        fail: bool = False,
        delay_s: float = 0.0,
    ) -> None:
        self.name = "keyword"
        self.threshold = 0.5
        self.keyword = keyword
        self.category = category
        self.fail = fail
        self.delay_s = delay_s
        self.seen: list[Dialogue] = []
        self.closed = False

    async def screen(self, dialogue: Dialogue) -> ModerationResult:
        self.seen.append(dialogue)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("moderator exploded")
        risks: list[float] = []
        running = 0.0
        for message in dialogue.messages:
            if message.role == "user":
                running = max(running, 0.9 if self.keyword in message.text.lower() else 0.1)
                risks.append(running)
        flagged = running >= self.threshold
        return ModerationResult(
            risk=running,
            flagged=flagged,
            threshold=self.threshold,
            category=self.category if flagged else None,
            strategy="escalation" if flagged and len(risks) > 1 else "none",
            turn_risks=risks,
            earliest_turn=next((i + 1 for i, r in enumerate(risks) if r >= 0.5), None),
            rationale="keyword" if flagged else "",
        )

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class FakeUpstream:
    """An OpenAI-compatible server that records what it received and answers with an echo."""

    status: int = 200
    delay_s: float = 0.0
    reply: str | None = None
    echo_errors: bool = False
    """Error bodies quote the last message back, as some servers' validation errors do."""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)
    base_url: str = ""

    @property
    def spec(self) -> str:
        return f"openai:{self.base_url}#{MODEL}"

    async def handle(self, request: web.Request) -> web.Response:
        self.auth.append(request.headers.get("Authorization"))
        body = await request.json()
        self.bodies.append(body)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        last = body["messages"][-1]["content"]
        if isinstance(last, list):
            last = " ".join(p.get("text", "") for p in last if p.get("type") == "text")
        if self.status != 200:
            message = f"cannot handle {last!r}" if self.echo_errors else "upstream broke"
            return web.json_response({"error": {"message": message}}, status=self.status)
        text = self.reply if self.reply is not None else f"echo: {last}"
        return web.json_response(
            {
                "id": "up-1",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
            }
        )


@pytest.fixture
async def upstream(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeUpstream]:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_KEY)
    state = FakeUpstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", state.handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    state.base_url = str(server.make_url("/v1"))
    yield state
    await server.close()


async def serve(app: Any) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    """Start `app` under uvicorn on a free loopback port; return the server, its task, its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(_serve(server, sock))
    while not server.started:
        if task.done():
            task.result()  # startup failed: raise its error
            raise RuntimeError("uvicorn stopped before starting")
        await asyncio.sleep(0.01)
    return server, task, f"http://127.0.0.1:{port}"


async def _serve(server: uvicorn.Server, sock: socket.socket) -> None:
    """Serve; uvicorn's `sys.exit(3)` on a failed startup becomes an ordinary error, since a
    SystemExit escaping a task stops the event loop and breaks every test after this one."""
    try:
        await server.serve(sockets=[sock])
    except SystemExit as exc:
        raise RuntimeError(f"uvicorn exited with status {exc.code} during startup") from None


ProxyFactory = Callable[..., Awaitable[str]]


@pytest.fixture
async def start_proxy(upstream: FakeUpstream) -> AsyncIterator[ProxyFactory]:
    """Start a proxy in front of `upstream`; settings overrides as keywords; returns its URL."""
    running: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(moderator: Any = "keyword", **overrides: Any) -> str:
        """`moderator`: a Moderator, `keyword` (a fresh KeywordModerator), or None for the
        one `settings.moderator` names (loaded by the app, as in production)."""
        options: dict[str, Any] = {
            "upstream": upstream.spec,
            "token": TOKEN,
            "upstream_key_env": UPSTREAM_KEY_ENV,
            "upstream_retries": 0,
            **overrides,
        }
        if moderator == "keyword":
            moderator = KeywordModerator()
        app = create_app(ProxySettings(**options), moderator=moderator)
        server, task, url = await serve(app)
        running.append((server, task))
        return url

    yield start
    for server, task in running:
        server.should_exit = True
        await task


ClientFactory = Callable[..., AsyncOpenAI]


@pytest.fixture
async def client() -> AsyncIterator[ClientFactory]:
    """The official async openai client for a proxy URL (no retries); closed after the test."""
    made: list[AsyncOpenAI] = []

    def make(url: str, token: str = TOKEN) -> AsyncOpenAI:
        api = AsyncOpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0, timeout=20)
        made.append(api)
        return api

    yield make
    for api in made:
        await api.close()
