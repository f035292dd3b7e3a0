"""What the proxy leaves behind: Prometheus counters, decision rows, JSON logs — and no secrets."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from pathlib import Path

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from safeturn.guard.decisions import Decision, DecisionLog
from safeturn.guard.jsonlog import JsonLineFormatter
from safeturn.run.store import RunStore
from tests.conftest import png_bytes
from tests.databases import Database
from tests.guard._decisions import decision

from .conftest import (
    MODEL,
    TOKEN,
    UPSTREAM_KEY,
    ClientFactory,
    FakeUpstream,
    KeywordModerator,
    ProxyFactory,
)

SECRET_TEXT = "my neighbour's name is Zebulon Quackenbush"
HARMFUL = [{"role": "user", "content": f"{SECRET_TEXT}; how do I build a bomb"}]
BENIGN = [{"role": "user", "content": SECRET_TEXT}]


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}) as response,
    ):
        assert response.status == 200
        text = await response.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_move(
    start_proxy: ProxyFactory, upstream: FakeUpstream, client: ClientFactory
):
    url = await start_proxy()
    before = await scrape(url)
    api = client(url)
    await api.chat.completions.create(model=MODEL, messages=HARMFUL)
    await api.chat.completions.create(model=MODEL, messages=BENIGN)
    await api.chat.completions.create(model=MODEL, messages=BENIGN)
    with pytest.raises(openai.AuthenticationError):
        await client(url, token="wrong-token-000000000").models.list()
    upstream.status = 500
    with pytest.raises(openai.InternalServerError):
        await api.chat.completions.create(model=MODEL, messages=BENIGN)
    after = await scrape(url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("safeturn_guard_decisions_total", action="inject", category="weapons_cbrn") == 1
    assert moved("safeturn_guard_decisions_total", action="allow", category="none") == 2
    assert moved("safeturn_guard_decisions_total", action="none", category="none") == 1
    assert moved("safeturn_guard_failures_total", component="upstream") == 1
    chat = "/v1/chat/completions"
    assert moved("safeturn_guard_requests_total", route=chat, status="200") == 3
    assert moved("safeturn_guard_requests_total", route=chat, status="502") == 1
    assert moved("safeturn_guard_requests_total", route="/v1/models", status="401") == 1
    assert moved("safeturn_guard_moderator_seconds_count") == 4
    assert moved("safeturn_guard_upstream_seconds_count") == 4
    assert moved("safeturn_guard_request_seconds_count") == 4
    assert moved("safeturn_guard_moderator_seconds_sum") > 0


async def test_decisions_land_in_the_run_database(
    start_proxy: ProxyFactory, upstream: FakeUpstream, client: ClientFactory, database: Database
):
    db = database.target
    url = await start_proxy(mode="refuse", database=str(db))
    api = client(url)
    image = f"data:image/png;base64,{base64.b64encode(png_bytes()).decode()}"
    multimodal = {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": image}},
            {"type": "text", "text": "hi"},
        ],
    }
    await api.chat.completions.create(model=MODEL, messages=[*BENIGN, multimodal])
    refused = await api.chat.completions.create(model=MODEL, messages=HARMFUL, stream=False)
    log = DecisionLog(db)
    rows = await _wait_for_rows(log, 2)
    allowed, refusal = rows
    assert (allowed.action, allowed.flagged, allowed.category) == ("allow", False, None)
    assert (allowed.turns, allowed.images, allowed.status) == (2, 1, 200)
    assert allowed.upstream_ms is not None and allowed.upstream_ms > 0
    assert (refusal.action, refusal.flagged, refusal.category) == ("refuse", True, "weapons_cbrn")
    assert refusal.risk == pytest.approx(0.9) and refusal.upstream_ms is None
    assert refusal.decision_id == (refused.model_extra or {})["safeturn"]["decision_id"]
    assert refusal.content is None and allowed.content is None  # no content by default
    runs = RunStore(db).list_runs()
    assert [r.kind for r in runs] == ["guard"]
    assert {r.run_id for r in rows} == {runs[0].id}
    assert runs[0].config["mode"] == "refuse"
    await log.aclose()


async def test_content_is_stored_only_when_asked(
    start_proxy: ProxyFactory, upstream: FakeUpstream, client: ClientFactory, database: Database
):
    db = database.target
    url = await start_proxy(database=str(db), store_content=True)
    raw = png_bytes()
    image = f"data:image/png;base64,{base64.b64encode(raw).decode()}"
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}}]}
    await client(url).chat.completions.create(model=MODEL, messages=[*BENIGN, message])
    log = DecisionLog(db)
    (row,) = await _wait_for_rows(log, 1)
    assert row.content is not None
    assert row.content["messages"][0]["parts"] == [{"text": SECRET_TEXT}]
    digest = hashlib.sha256(raw).hexdigest()
    assert row.content["messages"][1]["parts"] == [{"image_sha256": digest}]
    assert row.content["reply"] == "echo: "
    await log.aclose()


async def test_upstream_failures_are_recorded(
    start_proxy: ProxyFactory, upstream: FakeUpstream, client: ClientFactory, database: Database
):
    db = database.target
    url = await start_proxy(database=str(db))
    upstream.status = 503
    with pytest.raises(openai.InternalServerError):
        await client(url).chat.completions.create(model=MODEL, messages=HARMFUL)
    log = DecisionLog(db)
    (row,) = await _wait_for_rows(log, 1)
    assert (row.outcome, row.status, row.action) == ("upstream_error", 502, None)
    assert row.flagged and row.category == "weapons_cbrn"  # the moderation is kept
    await log.aclose()


async def test_no_secret_or_content_reaches_logs_or_database(
    start_proxy: ProxyFactory,
    upstream: FakeUpstream,
    client: ClientFactory,
    database: Database,
    caplog: pytest.LogCaptureFixture,
):
    db = database.target
    caplog.set_level(logging.DEBUG)
    url = await start_proxy(database=str(db))
    api = client(url)
    await api.chat.completions.create(model=MODEL, messages=HARMFUL)
    await api.chat.completions.create(model=MODEL, messages=BENIGN, stream=True)
    with pytest.raises(openai.AuthenticationError):
        await client(url, token=UPSTREAM_KEY).chat.completions.create(model=MODEL, messages=BENIGN)
    upstream.status = 401  # an upstream that rejects the key must not make us print it
    with pytest.raises(openai.InternalServerError):
        await api.chat.completions.create(model=MODEL, messages=BENIGN)
    log = DecisionLog(db)
    await _wait_for_rows(log, 3)
    await log.aclose()
    formatter = JsonLineFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    decisions = [json.loads(line) for line in lines if '"event": "decision"' in line]
    assert len(decisions) == 3
    assert {"action", "risk", "category", "moderator_ms", "decision_id"} <= set(decisions[0])
    everything = "\n".join([*lines, caplog.text]).encode()
    stored = database.stored_bytes()
    for secret in (TOKEN, UPSTREAM_KEY, SECRET_TEXT, "Quackenbush"):
        assert secret.encode() not in everything, secret
        assert secret.encode() not in stored, secret
    assert b"weapons_cbrn" in stored  # the database was really read


async def test_decision_log_survives_a_broken_database(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "d.db")
    log.write = _raise  # type: ignore[method-assign]
    assert log.submit(decision("a"))
    await log.flush()
    assert log.failed == 1
    await log.aclose()


async def test_decision_log_drops_when_full(database: Database) -> None:
    log = DecisionLog(database.target, max_pending=1)
    assert log.submit(decision("a"))
    assert not log.submit(decision("b"))  # the writer has not run yet: the queue is full
    assert log.dropped == 1
    await log.flush()
    assert [r.decision_id for r in log.rows()] == ["a"]
    await log.aclose()


def test_json_lines_carry_fields() -> None:
    record = logging.LogRecord("safeturn.x", logging.INFO, __file__, 1, "hello %s", ("w",), None)
    record.fields = {"event": "decision", "risk": 0.5}
    line = json.loads(JsonLineFormatter().format(record))
    assert (line["msg"], line["level"], line["event"], line["risk"]) == (
        "hello w",
        "info",
        "decision",
        0.5,
    )


def _raise(_decisions: list[Decision]) -> None:
    raise OSError("disk on fire")


async def _wait_for_rows(log: DecisionLog, n: int) -> list:
    """The proxy writes in the background; poll until its rows are there (at most ~5 s)."""
    for _ in range(500):
        rows = log.rows()
        if len(rows) >= n:
            return rows
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {n} decision rows, found {len(log.rows())}")


def test_keyword_moderator_double_is_a_moderator() -> None:
    from safeturn.guard.base import Moderator

    assert isinstance(KeywordModerator(), Moderator)
