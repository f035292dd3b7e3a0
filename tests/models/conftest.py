"""Shared fixtures for the `openai:` backend tests: a real local server and model factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from safeturn.models.openai_compat import MAX_REPLY_BYTES_ENV, OpenAICompatModel

KEY_ENV = "SAFETURN_TEST_OPENAI_KEY"
"""The API-key variable the test models read (never a real key)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def start_chat_server(handler: Handler) -> tuple[TestServer, str]:
    """Serve `handler` at /v1/chat/completions on a free local port; returns the base URL."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    return server, str(server.make_url("/v1"))


@pytest.fixture
async def make_model(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Callable[..., OpenAICompatModel]]:
    """Builds `OpenAICompatModel`s with fast backoff and no key; closes them afterwards."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(MAX_REPLY_BYTES_ENV, raising=False)
    made: list[OpenAICompatModel] = []

    def build(base_url: str, **options: Any) -> OpenAICompatModel:
        options = {"max_retries": 3, "backoff_initial_s": 0.01, "backoff_max_s": 0.05,
                   "api_key_env": KEY_ENV, **options}  # fmt: skip
        model = OpenAICompatModel(base_url=base_url, model="fake-vlm", **options)
        made.append(model)
        return model

    yield build
    for model in made:
        await model.aclose()
