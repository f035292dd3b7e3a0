"""OpenAICompatModel against a real local aiohttp server that speaks the chat-completions API."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from PIL import Image

from safeturn.errors import BackendError, ModelSpecError
from safeturn.models import load_model
from safeturn.models.openai_compat import OpenAICompatModel
from safeturn.schema import Dialogue, GenerateParams, ImagePart, Message
from tests.models.conftest import KEY_ENV, start_chat_server

SECRET = "sk-test-very-secret-0123456789"


@dataclass
class Step:
    """How the fake server answers one request."""

    status: int = 200
    body: dict[str, Any] | str | None = None  # None → a completion echoing the last user text
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    echo_auth: bool = False


@dataclass
class FakeServer:
    """Answers requests by consuming `plan` in order; the last step repeats."""

    plan: list[Step] = field(default_factory=lambda: [Step()])
    bodies: list[Any] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    active: int = 0
    max_active: int = 0
    base_url: str = ""

    @property
    def hits(self) -> int:
        return len(self.times)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        index = len(self.times)
        self.times.append(time.perf_counter())
        self.auth.append(request.headers.get("Authorization"))
        body = await request.json()
        self.bodies.append(body)
        step = self.plan[min(index, len(self.plan) - 1)]
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if step.delay_s:
                await asyncio.sleep(step.delay_s)
        finally:
            self.active -= 1
        if step.echo_auth:
            text = f"bad key: {request.headers.get('Authorization')}"
            return web.Response(status=step.status, text=text, headers=step.headers)
        if isinstance(step.body, str):
            return web.Response(status=step.status, text=step.body, headers=step.headers)
        answer = step.body if step.body is not None else _completion(body)
        return web.json_response(answer, status=step.status, headers=step.headers)


def _completion(request_body: dict[str, Any]) -> dict[str, Any]:
    last = request_body["messages"][-1]["content"]
    if isinstance(last, list):
        last = " ".join(p.get("text", "") for p in last if p.get("type") == "text")
    return {
        "id": "cmpl-1",
        "object": "chat.completion",
        "model": request_body["model"],
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": f"echo: {last}"},
             "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }  # fmt: skip


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    state = FakeServer()
    server, state.base_url = await start_chat_server(state.handle)
    yield state
    await server.close()


def _ask(text: str = "hello") -> Dialogue:
    return Dialogue(messages=[Message.system("be brief"), Message.user(text)])


async def test_completion_with_image_and_params(
    fake: FakeServer, make_model: Callable[..., OpenAICompatModel], tmp_path: Path
) -> None:
    png = tmp_path / "red.png"
    Image.new("RGB", (8, 6), (255, 0, 0)).save(png)
    dialogue = Dialogue(messages=[Message.user("what is this?", [ImagePart(path=str(png))])])
    model = make_model(fake.base_url, extra_body={"top_k": 5})
    params = GenerateParams(max_tokens=32, temperature=0.5, top_p=0.9, seed=7, stop=("END",))

    reply = await model.generate(dialogue, params)

    assert reply.text == "echo: what is this?"
    assert (reply.finish_reason, reply.prompt_tokens, reply.completion_tokens) == ("stop", 11, 7)
    assert reply.model == model.name and reply.latency_s > 0
    body = fake.bodies[0]
    assert body["model"] == "fake-vlm"
    assert (body["max_tokens"], body["temperature"], body["top_p"]) == (32, 0.5, 0.9)
    assert (body["seed"], body["stop"], body["top_k"]) == (7, ["END"], 5)
    image_part, text_part = body["messages"][0]["content"]
    assert text_part == {"type": "text", "text": "what is this?"}
    url = image_part["image_url"]["url"]
    assert image_part["type"] == "image_url" and url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.partition(",")[2]) == png.read_bytes()
    assert fake.auth == [None]  # no key in the environment → no Authorization header


async def test_optional_params_are_omitted(
    fake: FakeServer, make_model: Callable[..., OpenAICompatModel]
) -> None:
    await make_model(fake.base_url).generate(_ask(), GenerateParams())
    body = fake.bodies[0]
    assert "seed" not in body and "stop" not in body
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
    ]


async def test_api_key_sent_but_never_shown(
    fake: FakeServer,
    make_model: Callable[..., OpenAICompatModel],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    model = make_model(fake.base_url)
    assert SECRET not in repr(model)
    # A retried 500 (logged), then a 401 whose body echoes the Authorization header.
    fake.plan = [Step(status=500, body="boom"), Step(), Step(status=401, echo_auth=True)]
    with caplog.at_level(logging.DEBUG, logger="safeturn"):
        await model.generate(_ask(), GenerateParams())
        with pytest.raises(BackendError) as info:
            await model.generate(_ask(), GenerateParams())
    assert fake.auth == [f"Bearer {SECRET}"] * 3
    message = str(info.value)
    assert "HTTP 401" in message and "bad key: Bearer ***" in message
    assert SECRET not in message and SECRET not in repr(info.value)
    assert SECRET not in "".join(traceback.format_exception(info.value))
    assert "HTTP 500" in caplog.text and SECRET not in caplog.text
    assert "hello" not in caplog.text  # no message content in logs


async def test_429_twice_then_success(
    fake: FakeServer, make_model: Callable[..., OpenAICompatModel]
) -> None:
    fake.plan = [Step(status=429, body={"error": "slow down"})] * 2 + [Step()]
    reply = await make_model(fake.base_url).generate(_ask(), GenerateParams())
    assert reply.text == "echo: hello"
    assert fake.hits == 3


async def test_retry_after_is_honoured_and_capped(
    fake: FakeServer, make_model: Callable[..., OpenAICompatModel]
) -> None:
    fake.plan = [
        Step(status=429, headers={"Retry-After": "0.3"}),
        Step(status=503, headers={"Retry-After": "3600"}),
        Step(),
    ]
    model = make_model(fake.base_url, backoff_initial_s=30.0, retry_after_max_s=0.5)
    started = time.perf_counter()
    await model.generate(_ask(), GenerateParams())
    assert time.perf_counter() - started < 3.0  # neither the 30 s backoff nor the hour
    first_gap, second_gap = fake.times[1] - fake.times[0], fake.times[2] - fake.times[1]
    assert 0.3 <= first_gap < 0.5 + 0.4  # Retry-After: 0.3 honoured
    assert 0.5 <= second_gap < 0.5 + 0.4  # Retry-After: 3600 capped to 0.5


async def test_500_then_success(
    fake: FakeServer, make_model: Callable[..., OpenAICompatModel]
) -> None:
    fake.plan = [Step(status=500, body="internal"), Step()]
    reply = await make_model(fake.base_url).generate(_ask("again"), GenerateParams())
    assert reply.text == "echo: again"
    assert fake.hits == 2


async def test_timeout_is_retried(
    fake: FakeServer, make_model: Callable[..., OpenAICompatModel]
) -> None:
    fake.plan = [Step(delay_s=0.6), Step()]
    model = make_model(fake.base_url, timeout_s=0.2)
    reply = await model.generate(_ask(), GenerateParams())
    assert reply.text == "echo: hello"
    assert fake.hits == 2


async def test_persistent_timeout_raises(
    fake: FakeServer, make_model: Callable[..., OpenAICompatModel]
) -> None:
    fake.plan = [Step(delay_s=0.4)]
    model = make_model(fake.base_url, timeout_s=0.1, max_retries=1)
    with pytest.raises(BackendError, match=r"timed out after 0\.1s after 2 attempts"):
        await model.generate(_ask(), GenerateParams())
    assert fake.hits == 2


async def test_persistent_500_gives_up(
    fake: FakeServer, make_model: Callable[..., OpenAICompatModel]
) -> None:
    fake.plan = [Step(status=500, body="upstream exploded " + "x" * 1000)]
    model = make_model(fake.base_url, max_retries=2)
    with pytest.raises(BackendError) as info:
        await model.generate(_ask(), GenerateParams())
    message = str(info.value)
    assert fake.hits == 3
    assert "HTTP 500 after 3 attempts" in message
    assert "'fake-vlm'" in message and f"{fake.base_url}/chat/completions" in message
    assert "upstream exploded" in message and len(message) < 400


async def test_400_is_not_retried(
    fake: FakeServer, make_model: Callable[..., OpenAICompatModel]
) -> None:
    fake.plan = [Step(status=400, body={"error": {"message": "max_tokens too large"}})]
    with pytest.raises(BackendError, match=r"HTTP 400 after 1 attempt: .*max_tokens too large"):
        await make_model(fake.base_url).generate(_ask(), GenerateParams())
    assert fake.hits == 1


async def test_400_after_a_retry_counts_attempts(
    fake: FakeServer, make_model: Callable[..., OpenAICompatModel]
) -> None:
    fake.plan = [Step(status=502, body="bad gateway"), Step(status=404, body="no such model")]
    with pytest.raises(BackendError, match=r"HTTP 404 after 2 attempts: no such model"):
        await make_model(fake.base_url).generate(_ask(), GenerateParams())
    assert fake.hits == 2


async def test_malformed_json_raises(
    fake: FakeServer, make_model: Callable[..., OpenAICompatModel]
) -> None:
    fake.plan = [Step(body="<html>not json")]
    with pytest.raises(BackendError, match=r"malformed JSON after 4 attempts: <html>not json"):
        await make_model(fake.base_url).generate(_ask(), GenerateParams())
    assert fake.hits == 4  # retried like a 5xx (tests/models/test_openai_faults.py)


@pytest.mark.parametrize(
    "body",
    [{"error": "no choices"}, {"choices": []}, {"choices": [{"message": None}]}, [1, 2]],
)
async def test_not_a_completion_raises(
    fake: FakeServer, make_model: Callable[..., OpenAICompatModel], body: Any
) -> None:
    fake.plan = [Step(body=body)]
    with pytest.raises(BackendError, match="not a chat completion"):
        await make_model(fake.base_url, max_retries=0).generate(_ask(), GenerateParams())


async def test_connection_refused_raises(
    fake: FakeServer, make_model: Callable[..., OpenAICompatModel]
) -> None:
    model = make_model("http://127.0.0.1:9/v1", max_retries=1)
    with pytest.raises(BackendError, match=r"ClientConnectorError.* after 2 attempts"):
        await model.generate(_ask(), GenerateParams())


async def test_batch_bounds_concurrency_and_keeps_order(
    fake: FakeServer, make_model: Callable[..., OpenAICompatModel]
) -> None:
    fake.plan = [Step(delay_s=0.03)]
    model = make_model(fake.base_url, max_concurrency=4)
    dialogues = [_ask(f"question {i}") for i in range(20)]
    replies = await model.generate_batch(dialogues, GenerateParams())
    assert [r.text for r in replies] == [f"echo: question {i}" for i in range(20)]
    assert fake.hits == 20
    assert fake.max_active == 4


async def test_generate_itself_bounds_concurrency(
    fake: FakeServer, make_model: Callable[..., OpenAICompatModel]
) -> None:
    fake.plan = [Step(delay_s=0.03)]
    model = make_model(fake.base_url, max_concurrency=3)
    replies = await asyncio.gather(*(model.generate(_ask(), GenerateParams()) for _ in range(12)))
    assert len(replies) == 12 and fake.max_active == 3


async def test_aclose_then_reuse(
    fake: FakeServer, make_model: Callable[..., OpenAICompatModel]
) -> None:
    model = make_model(fake.base_url)
    await model.generate(_ask(), GenerateParams())
    await model.aclose()
    await model.aclose()  # idempotent
    await model.generate(_ask(), GenerateParams())  # a fresh session is opened lazily
    assert fake.hits == 2


async def test_load_model_spec(fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    spec = f"openai:{fake.base_url}#fake"
    model = load_model(spec, max_concurrency=2)
    try:
        assert isinstance(model, OpenAICompatModel)
        assert model.name == spec and model.max_concurrency == 2
        reply = await model.generate(_ask(), GenerateParams())
        assert reply.model == spec
        assert fake.bodies[0]["model"] == "fake"
    finally:
        await model.aclose()
    with pytest.raises(ModelSpecError):
        load_model("openai:nonsense")
    with pytest.raises(ModelSpecError):
        load_model("openai:http://127.0.0.1:1/v1")
