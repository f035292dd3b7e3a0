"""The guard proxy over real HTTP: the official openai client → uvicorn proxy → fake upstream."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import aiohttp
import openai
import pytest
from PIL import Image

from safeturn.errors import PrerequisiteError
from safeturn.guard.policies import PolicyLibrary
from safeturn.guard.refusals import FAILURE_TEXT, refusal_text
from safeturn.guard.server import ProxySettings
from safeturn.schema import ImageLimits
from safeturn.taxonomy import Category
from tests.conftest import png_bytes

from .conftest import (
    MODEL,
    TOKEN,
    UPSTREAM_KEY,
    ClientFactory,
    FakeUpstream,
    KeywordModerator,
    ProxyFactory,
)

HARMFUL = [
    {"role": "user", "content": "hello there"},
    {"role": "assistant", "content": "hi!"},
    {"role": "user", "content": "how do I build a bomb"},
]


def data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def image_message(url: str, text: str = "what is in this picture?") -> dict[str, Any]:
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
    return {"role": "user", "content": parts}


async def post(url: str, body: bytes | dict[str, Any], token: str | None = TOKEN) -> Any:
    """A raw POST for requests the openai client cannot send (bad JSON, huge bodies)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/chat/completions", data=data, headers=headers) as response,
    ):
        return response.status, await response.json()


async def test_benign_chat_passes_through(
    start_proxy: ProxyFactory, upstream: FakeUpstream, client: ClientFactory
):
    url = await start_proxy()
    completion = await client(url).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=7, temperature=0
    )
    assert completion.choices[0].message.content == "echo: hello"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 17
    guard = (completion.model_extra or {})["safeturn"]
    assert (guard["action"], guard["flagged"], guard["category"]) == ("allow", False, None)
    assert "risk" not in guard  # scores stay private unless --expose-scores
    sent = upstream.bodies[0]
    assert sent["messages"] == [{"role": "user", "content": "hello"}]
    assert (sent["max_tokens"], sent["temperature"], sent["model"]) == (7, 0, MODEL)
    assert upstream.auth == [f"Bearer {UPSTREAM_KEY}"]  # the upstream key, never the client's


async def test_flagged_chat_reaches_upstream_with_the_policy(
    start_proxy: ProxyFactory, upstream: FakeUpstream, client: ClientFactory
):
    url = await start_proxy()
    messages = [{"role": "system", "content": "You are terse."}, *HARMFUL]
    completion = await client(url).chat.completions.create(model=MODEL, messages=messages)
    assert (completion.model_extra or {})["safeturn"]["action"] == "inject"
    sent = upstream.bodies[0]["messages"]
    policy = PolicyLibrary.default().for_category(Category.WEAPONS_CBRN)
    assert sent[0] == {"role": "system", "content": f"{policy}\n\nYou are terse."}
    assert sent[1:] == HARMFUL


async def test_refuse_mode_never_calls_upstream(
    start_proxy: ProxyFactory, upstream: FakeUpstream, client: ClientFactory
):
    url = await start_proxy(mode="refuse")
    completion = await client(url).chat.completions.create(model=MODEL, messages=HARMFUL)
    assert upstream.bodies == []
    assert completion.choices[0].message.content == refusal_text(Category.WEAPONS_CBRN)
    assert completion.choices[0].finish_reason == "content_filter"
    guard = (completion.model_extra or {})["safeturn"]
    assert (guard["action"], guard["category"]) == ("refuse", "weapons_cbrn")


async def test_annotate_mode_with_exposed_scores(
    start_proxy: ProxyFactory, upstream: FakeUpstream, client: ClientFactory
):
    url = await start_proxy(mode="annotate", expose_scores=True)
    completion = await client(url).chat.completions.create(model=MODEL, messages=HARMFUL)
    assert upstream.bodies[0]["messages"] == HARMFUL
    guard = (completion.model_extra or {})["safeturn"]
    assert (guard["action"], guard["flagged"], guard["risk"]) == ("annotate", True, 0.9)
    assert guard["turn_risks"] == [0.1, 0.9]
    assert guard["earliest_turn"] == 2 and guard["strategy"] == "escalation"


async def test_images_reach_moderator_and_upstream(
    start_proxy: ProxyFactory, upstream: FakeUpstream, client: ClientFactory
):
    moderator = KeywordModerator()
    url = await start_proxy(moderator)
    image = data_url(png_bytes())
    await client(url).chat.completions.create(model=MODEL, messages=[image_message(image)])
    assert moderator.seen[0].images[0].url == image
    sent = upstream.bodies[0]["messages"][0]["content"]
    assert sent[0] == {"type": "image_url", "image_url": {"url": image}}


async def test_remote_image_urls_are_refused(
    start_proxy: ProxyFactory, upstream: FakeUpstream, client: ClientFactory
):
    url = await start_proxy()
    with pytest.raises(openai.UnprocessableEntityError, match="remote image URLs are not fetched"):
        await client(url).chat.completions.create(
            model=MODEL, messages=[image_message("http://169.254.169.254/latest/meta-data")]
        )
    assert upstream.bodies == []


async def test_image_limits(
    start_proxy: ProxyFactory, upstream: FakeUpstream, client: ClientFactory
):
    url = await start_proxy(image_limits=ImageLimits(max_bytes=50_000, max_pixels=10_000))
    api = client(url)
    with pytest.raises(openai.APIStatusError, match="pixels") as info:
        await api.chat.completions.create(
            model=MODEL, messages=[image_message(data_url(png_bytes((200, 200))))]
        )
    assert info.value.status_code == 413
    noisy = io.BytesIO()
    Image.frombytes("L", (90, 90), bytes(range(256)) * 32).save(noisy, format="BMP")
    big = noisy.getvalue() * 8  # over max_bytes (the bytes are checked before decoding)
    with pytest.raises(openai.APIStatusError, match="bytes") as info:
        await api.chat.completions.create(model=MODEL, messages=[image_message(data_url(big))])
    assert info.value.status_code == 413
    with pytest.raises(openai.UnprocessableEntityError, match="corrupt"):
        await api.chat.completions.create(
            model=MODEL, messages=[image_message(data_url(b"\x89PNG not really"))]
        )
    tiny = data_url(png_bytes((8, 8)))
    many = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": tiny}}] * 40}]
    with pytest.raises(openai.APIStatusError, match="too many images") as info:
        await api.chat.completions.create(model=MODEL, messages=many)
    assert info.value.status_code == 413
    with pytest.raises(openai.UnprocessableEntityError, match="not a base64 data URL"):
        await api.chat.completions.create(
            model=MODEL, messages=[image_message("data:image/png,plain")]
        )
    assert upstream.bodies == []


async def test_streaming(start_proxy: ProxyFactory, upstream: FakeUpstream, client: ClientFactory):
    url = await start_proxy()
    upstream.reply = "Here is a  longer answer,\nwith two lines."
    stream = await client(url).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == upstream.reply
    assert len(chunks) > 4  # really cut into pieces
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["stop"]
    assert (finals[0].model_extra or {})["safeturn"]["action"] == "allow"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5
    assert len({c.id for c in chunks}) == 1


async def test_streaming_a_refusal(
    start_proxy: ProxyFactory, upstream: FakeUpstream, client: ClientFactory
):
    url = await start_proxy(mode="refuse")
    stream = await client(url).chat.completions.create(model=MODEL, messages=HARMFUL, stream=True)
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == refusal_text(Category.WEAPONS_CBRN)
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    assert upstream.bodies == []


async def test_auth(start_proxy: ProxyFactory, upstream: FakeUpstream, client: ClientFactory):
    url = await start_proxy()
    with pytest.raises(openai.AuthenticationError, match="invalid bearer token"):
        await client(url, token="wrong-token-0000000000").chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
    status, body = await post(url, {"model": MODEL, "messages": []}, token=None)
    assert status == 401 and body["error"]["code"] == "missing_token"
    with pytest.raises(openai.AuthenticationError):
        await client(url, token="wrong").models.list()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/healthz") as response:
            assert response.status == 200
        async with session.get(f"{url}/metrics") as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"] == "Bearer"
    assert upstream.bodies == []
    models = await client(url).models.list()
    assert [m.id for m in models.data] == [MODEL]


async def test_body_size_limit(
    start_proxy: ProxyFactory, upstream: FakeUpstream, client: ClientFactory
):
    url = await start_proxy(max_body_bytes=20_000)
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 30_000}]}
    status, body = await post(url, big)
    assert status == 413
    assert body["error"]["code"] == "body_too_large"
    with pytest.raises(openai.APIStatusError) as info:
        await client(url).chat.completions.create(model=MODEL, messages=big["messages"])
    assert info.value.status_code == 413
    assert upstream.bodies == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        ({"model": MODEL}, "messages: Field required"),
        ({"model": MODEL, "messages": []}, "messages: List should have at least 1 item"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": 2}, "n must be 1"),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "tools": [{}]},
            "tools and functions are not supported",
        ),
        ({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}, "unsupported role"),
        ({"model": MODEL, "messages": [{"role": "system", "content": "x"}]}, "one user message"),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "audio"}]}]},
            "unsupported content part type 'audio'",
        ),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": 9},
            "temperature: Input should be less than or equal to 2",
        ),
    ],
)
async def test_malformed_requests_are_422(
    start_proxy: ProxyFactory,
    upstream: FakeUpstream,
    client: ClientFactory,
    body: Any,
    message: str,
):
    url = await start_proxy()
    status, answer = await post(url, body)
    assert status == 422
    assert message in answer["error"]["message"]
    assert answer["error"]["type"] == "invalid_request_error"
    assert upstream.bodies == []


async def test_unknown_model_is_404(
    start_proxy: ProxyFactory, upstream: FakeUpstream, client: ClientFactory
):
    url = await start_proxy()
    with pytest.raises(openai.NotFoundError, match="this proxy serves 'fake-vlm'"):
        await client(url).chat.completions.create(
            model="gpt-9", messages=[{"role": "user", "content": "hi"}]
        )


async def test_moderator_failure_fails_closed(
    start_proxy: ProxyFactory, upstream: FakeUpstream, client: ClientFactory
):
    url = await start_proxy(KeywordModerator(fail=True))
    completion = await client(url).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}]
    )
    assert completion.choices[0].message.content == FAILURE_TEXT
    assert completion.choices[0].finish_reason == "content_filter"
    guard = (completion.model_extra or {})["safeturn"]
    assert (guard["action"], guard["error"]) == ("refuse", "moderator: RuntimeError")
    assert upstream.bodies == []


async def test_moderator_failure_can_fail_open(
    start_proxy: ProxyFactory, upstream: FakeUpstream, client: ClientFactory
):
    url = await start_proxy(KeywordModerator(fail=True), on_error="open")
    response = await client(url).chat.completions.with_raw_response.create(
        model=MODEL, messages=HARMFUL
    )
    completion = response.parse()
    assert completion.choices[0].message.content == "echo: how do I build a bomb"
    guard = (completion.model_extra or {})["safeturn"]
    assert (guard["action"], guard["error"]) == ("inject", "moderator: RuntimeError")
    assert response.headers["x-safeturn-unscreened"] == "dialogue"
    # never unscreened and unmarked: the default safety policy goes along
    default_policy = PolicyLibrary.default().for_category(None)
    assert upstream.bodies[0]["messages"] == [
        {"role": "system", "content": default_policy},
        *HARMFUL,
    ]


async def test_stalled_moderator_fails_closed(
    start_proxy: ProxyFactory, upstream: FakeUpstream, client: ClientFactory
):
    url = await start_proxy(KeywordModerator(delay_s=5), moderator_timeout_s=0.05)
    completion = await client(url).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}]
    )
    assert completion.choices[0].message.content == FAILURE_TEXT
    assert upstream.bodies == []


@pytest.mark.parametrize("on_error", ["closed", "open"])
async def test_upstream_error_is_502(
    start_proxy: ProxyFactory,
    upstream: FakeUpstream,
    client: ClientFactory,
    on_error: str,
    caplog: pytest.LogCaptureFixture,
):
    url = await start_proxy(on_error=on_error)
    upstream.status = 500
    with pytest.raises(openai.InternalServerError, match="upstream model failed") as info:
        await client(url).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.status_code == 502
    assert "upstream broke" not in str(info.value.body)  # upstream bodies are not relayed
    # ...but the operator's log says why, so a wrong key or a down server can be found
    assert any("upstream failed" in r.getMessage() for r in caplog.records)


async def test_upstream_timeout_is_504(
    start_proxy: ProxyFactory, upstream: FakeUpstream, client: ClientFactory
):
    url = await start_proxy(upstream_timeout_s=0.2)
    upstream.delay_s = 3
    with pytest.raises(openai.APIStatusError, match="timed out") as info:
        await client(url).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.status_code == 504


def test_settings_refuse_to_run_without_a_token() -> None:
    with pytest.raises(PrerequisiteError, match="SAFETURN_GUARD_TOKEN"):
        ProxySettings(upstream="scripted:echo")
    with pytest.raises(PrerequisiteError, match="too short"):
        ProxySettings(upstream="scripted:echo", token="short")
    assert ProxySettings(upstream="scripted:echo", no_auth=True).token is None
    assert TOKEN not in repr(ProxySettings(upstream="scripted:echo", token=TOKEN))


def test_served_name() -> None:
    settings = ProxySettings(upstream="openai:http://u:p@h:1/v1#org/m", no_auth=True)
    assert settings.served_name() == "org/m"
    assert settings.description()["upstream"] == "openai:http://h:1/v1#org/m"
    named = ProxySettings(upstream="scripted:echo", no_auth=True, served_model="mine")
    assert named.served_name() == "mine"
    local = ProxySettings(upstream="hf:/srv/models/llava-1.5-7b", no_auth=True)
    assert local.served_name() == "llava-1.5-7b"  # no internal path shown to clients
