"""Latency the guard proxy adds in front of an OpenAI-compatible server.

A fake upstream (aiohttp, fixed `--latency-ms`) and the proxy (uvicorn, the real app with
decision records and JSON logs) each run in their own process. The client sends the same
multi-turn dialogues one at a time, alternating direct and proxied calls, and prints p50/p95
of both and the difference (target: p95 added ≤ 20 ms). The moderator is the embedded one
when its model is installed, else a no-op stub (the script says which): the stub measures
the proxy's own cost, the embedded one adds the moderator's. `--mode annotate` shows the
monitor-only deployment, where the moderator runs while the upstream answers.

Two dialogue kinds: `warm` continues one conversation, so earlier turns are in the moderator's
caches and each request brings one new turn (the normal case of a chat client); `cold` makes
every turn new.

    .venv/bin/python benchmarks/proxy_overhead.py [--requests 200 --latency-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

TOKEN = "bench-token-0123456789abcdef"
MODEL = "bench-vlm"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_upstream(port: int, latency_s: float) -> None:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(latency_s)
        return web.json_response(
            {
                "choices": [
                    {"message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 1},
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


class StubModerator:
    """Flags nothing, costs nothing: isolates the proxy's own overhead."""

    name = "stub"
    threshold = 0.5

    async def screen(self, dialogue: Any) -> Any:
        from safeturn.guard.base import ModerationResult

        return ModerationResult(risk=0.0, flagged=False, threshold=self.threshold)

    async def aclose(self) -> None:
        return None


def serve_proxy(
    port: int, upstream_port: int, moderator: str, db: str, threads: int, mode: str
) -> None:
    import uvicorn

    from safeturn.commands.guard_serve import limit_torch_threads
    from safeturn.guard.jsonlog import configure_json_logging
    from safeturn.guard.server import ProxySettings, create_app

    stub = None
    if moderator == "embedded":
        try:
            from safeturn.guard.spec import load_moderator

            load_moderator("embedded")
        except Exception as exc:  # not installed yet: measure the proxy alone
            print(f"embedded moderator unavailable ({type(exc).__name__}: {exc})", flush=True)
            moderator, stub = "stub", StubModerator()
    else:
        stub = StubModerator()
    print(f"MODERATOR {moderator}", flush=True)
    settings = ProxySettings(
        upstream=f"openai:http://127.0.0.1:{upstream_port}/v1#{MODEL}",
        moderator=moderator,
        mode="annotate" if mode == "annotate" else "inject",
        token=TOKEN,
        upstream_retries=0,
        database=db,
    )
    if threads > 0:
        limit_torch_threads(threads)  # as `safeturn guard serve` does (--torch-threads 1)
    configure_json_logging(logging.INFO)  # as served: one JSON line per request and decision
    uvicorn.run(
        create_app(settings, moderator=stub),
        host="127.0.0.1",
        port=port,
        access_log=False,
        log_config=None,
    )


async def wait_for(url: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as response:
                    if response.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not come up")
            await asyncio.sleep(0.1)


def dialogue(i: int, kind: str) -> list[dict[str, str]]:
    tag = f" (case {i})" if kind == "cold" else ""
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": f"I am writing a story about a chemist{tag}."},
        {"role": "assistant", "content": "That sounds interesting. What happens in it?"},
        {"role": "user", "content": f"She works in a lab and has a rival{tag}."},
        {"role": "assistant", "content": "A rivalry adds tension. How does it develop?"},
        {"role": "user", "content": f"What should happen in chapter {i} of the story?"},
    ]


async def measure(
    base: str, upstream: str, n: int, kind: str, headers: dict[str, str]
) -> tuple[list[float], list[float]]:
    direct, proxied = [], []
    async with aiohttp.ClientSession() as session:

        async def call(url: str, body: dict[str, Any], extra: dict[str, str]) -> float:
            start = time.perf_counter()
            async with session.post(url, json=body, headers=extra) as response:
                await response.read()
                assert response.status == 200, response.status
            return time.perf_counter() - start

        for i in range(-10, n):  # ten warm-up rounds
            body = {"model": MODEL, "messages": dialogue(i, kind), "max_tokens": 16}
            d = await call(f"{upstream}/v1/chat/completions", body, {})
            p = await call(f"{base}/v1/chat/completions", body, headers)
            if i >= 0:
                direct.append(d)
                proxied.append(p)
    return direct, proxied


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] * 1000


async def moderator_mean_ms(base: str, headers: dict[str, str]) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base}/metrics", headers=headers) as response,
    ):
        text = await response.text()
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("safeturn_guard_moderator_seconds_")
    }
    count = values.get("safeturn_guard_moderator_seconds_count", 0.0)
    return 1000 * values.get("safeturn_guard_moderator_seconds_sum", 0.0) / max(count, 1.0)


async def run_client(base: str, upstream: str, args: argparse.Namespace) -> None:
    await wait_for(f"{upstream}/")
    await wait_for(f"{base}/healthz")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for kind in ("warm", "cold"):
        direct, proxied = await measure(base, upstream, args.requests, kind, headers)
        d50, d95, p50, p95 = pct(direct, 50), pct(direct, 95), pct(proxied, 50), pct(proxied, 95)
        print(
            f"{kind:>4}: direct p50 {d50:6.2f} ms p95 {d95:6.2f} ms | proxy p50 "
            f"{p50:6.2f} ms p95 {p95:6.2f} ms | added p50 {p50 - d50:6.2f} ms "
            f"p95 {p95 - d95:6.2f} ms"
        )
    mean = await moderator_mean_ms(base, headers)
    print(f"mean moderator time over all requests: {mean:.2f} ms")


def main(args: argparse.Namespace) -> None:
    up_port, proxy_port = free_port(), free_port()
    here = str(Path(__file__).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        upstream_proc = subprocess.Popen(
            [sys.executable, here, "--serve-upstream", str(up_port), "--latency-ms",
             str(args.latency_ms)]
        )  # fmt: skip
        proxy_proc = subprocess.Popen(
            [sys.executable, here, "--serve-proxy", str(proxy_port), "--upstream-port",
             str(up_port), "--moderator", args.moderator, "--db", f"{tmp}/guard.db",
             "--torch-threads", str(args.torch_threads), "--mode", args.mode],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        try:
            assert proxy_proc.stdout is not None
            for line in proxy_proc.stdout:
                if not line.startswith("MODERATOR"):
                    print(line.rstrip())
                    continue
                print(
                    f"moderator: {line.split()[1]}; upstream latency {args.latency_ms} ms; "
                    f"{args.requests} sequential requests per kind; 3-turn text dialogue; "
                    f"torch threads {args.torch_threads}; mode {args.mode}"
                )
                break
            base, upstream = f"http://127.0.0.1:{proxy_port}", f"http://127.0.0.1:{up_port}"
            asyncio.run(run_client(base, upstream, args))
        finally:
            for proc in (proxy_proc, upstream_proc):
                proc.terminate()
                proc.wait(timeout=30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--moderator", choices=["embedded", "stub"], default="embedded")
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-proxy", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--mode", choices=["inject", "annotate"], default="inject")
    parser.add_argument("--db", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if ns.serve_upstream:
        serve_upstream(ns.serve_upstream, ns.latency_ms / 1000)
    elif ns.serve_proxy:
        serve_proxy(
            ns.serve_proxy, ns.upstream_port, ns.moderator, ns.db, ns.torch_threads, ns.mode
        )
    else:
        main(ns)
