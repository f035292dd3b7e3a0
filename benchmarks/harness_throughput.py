"""Throughput of the evaluation harness against a fake OpenAI-compatible server.

A subprocess serves chat completions with a fixed 50 ms latency. N dialogues of 8 user turns
run in live mode (every turn answered on the model's own history, every turn judged by the
fast refusal judge) with 64 dialogues in flight, and every call and verdict is written to a
fresh SQLite run database, as in a real run. Each size runs in its own process, so peak RSS
is that size's own. Printed per size: calls/s, the ratio to the ideal (concurrency / latency),
peak RSS, seconds per 1,000 dialogues (flat = linear), and CPU per call on each side (the two
processes share the machine's cores). `--reference` adds a bare aiohttp client sending the
same requests with no store and no judge, just before each harness run: the ceiling on this
machine at that moment ("of bare" = harness rate / bare rate, steadier than the ratio on a
shared machine).

    .venv/bin/python benchmarks/harness_throughput.py [--dialogues 250 1000 4000]
        [--reference] [--repeats 2] [--durability group|sync] [--window-ms 5]
        [--loop asyncio|uvloop]   (uvloop: pip install uvloop first)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import textwrap
import urllib.request
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar, cast

import aiohttp
from bench_common import Clock, bench_samples, free_port, wait_for

from safeturn.judges import load_judge
from safeturn.models import load_model
from safeturn.run.engine import EvalSettings, execute_run, start_run
from safeturn.run.store import Durability, RunStore
from safeturn.schema import GenerateParams

T = TypeVar("T")
LATENCY_S = 0.05
CONCURRENCY = 64
TURNS = 8

SERVER = textwrap.dedent(
    """
    import asyncio, sys, time
    from aiohttp import web

    async def chat(request):
        await request.read()
        await asyncio.sleep(float(sys.argv[2]))
        return web.json_response({
            "choices": [{"message": {"role": "assistant", "content": "Sure, here it is."},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5},
        })

    async def cpu(request):  # this process's CPU seconds, for the CPU-per-call column
        return web.json_response(time.process_time())

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/cpu", cpu)
    if sys.argv[3] == "uvloop":
        import uvloop
        uvloop.install()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None,
                backlog=1024)
    """
)


def _server_cpu(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/cpu") as response:
        return float(json.loads(response.read()))


def _run(coro: Coroutine[Any, Any, T], loop: str) -> T:
    """Run on the chosen event loop: asyncio's own, or uvloop (libuv)."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


def harness(
    n: int, port: int, durability: Durability, window_s: float, clock: Clock, loop: str
) -> int:
    """Run n dialogues through the engine and the store; return the calls stored."""
    with tempfile.TemporaryDirectory() as folder:
        store = RunStore(Path(folder) / "bench.db", durability=durability, window_s=window_s)
        spec = f"openai:http://127.0.0.1:{port}/v1#fake"
        settings = EvalSettings(
            model=spec, params=GenerateParams(max_tokens=16), concurrency=CONCURRENCY
        )
        run_id = start_run(store, bench_samples(n, TURNS), settings)
        model = load_model(spec, max_concurrency=CONCURRENCY)
        judges = [load_judge("refusal")]

        async def go() -> None:
            try:
                await execute_run(store, run_id, model, judges)
            finally:
                await model.aclose()

        with clock:
            _run(go(), loop)  # ends with finish_run, which commits everything queued
        calls = len(store.calls(run_id))
        verdicts = len(store.verdicts(run_id))
        store.close()
    assert calls == verdicts == n * TURNS, f"expected {n * TURNS} calls, got {calls}/{verdicts}"
    return calls


def bare(n: int, port: int, clock: Clock, loop: str) -> int:
    """The same requests (live history, 64 dialogues in flight) from plain aiohttp."""

    async def go() -> int:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        gate = asyncio.Semaphore(CONCURRENCY)
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        done = 0
        async with aiohttp.ClientSession(connector=connector) as http:

            async def dialogue(i: int) -> None:
                nonlocal done
                history: list[dict[str, Any]] = []
                async with gate:
                    for t in range(1, TURNS + 1):
                        history.append({"role": "user", "content": f"dialogue {i}, turn {t}"})
                        body = {"model": "fake", "messages": history, "max_tokens": 16}
                        async with http.post(url, data=json.dumps(body).encode()) as response:
                            reply = json.loads(await response.read())
                        history.append(reply["choices"][0]["message"])
                        done += 1

            async with asyncio.TaskGroup() as group:
                for i in range(n):
                    group.create_task(dialogue(i))
        return done

    with clock:
        done = _run(go(), loop)
    return done


def one(args: argparse.Namespace) -> None:
    """Child process: run one size, print one JSON line of measurements."""
    clock = Clock()
    if args.bare:
        calls = bare(args.one, args.port, clock, args.loop)
    else:
        durability = cast("Durability", args.durability)
        window_s = args.window_ms / 1000
        calls = harness(args.one, args.port, durability, window_s, clock, args.loop)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"calls": calls, "wall": clock.wall, "cpu": clock.cpu, "rss_mb": rss_mb}))


def _measure(client: str, n: int, port: int, args: argparse.Namespace) -> dict[str, float]:
    """One size in a fresh child process, plus the server's CPU over the same span."""
    command = [sys.executable, __file__, "--one", str(n), "--port", str(port)]
    command += ["--durability", args.durability, "--window-ms", str(args.window_ms)]
    command += ["--loop", args.loop]
    command += ["--bare"] if client == "bare" else []
    server_cpu = _server_cpu(port)
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    measured: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    measured["server_cpu"] = _server_cpu(port) - server_cpu
    return measured


def main() -> None:
    """Start the fake server, run each size in a child process, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, nargs="+", default=[250, 1000, 4000])
    parser.add_argument("--durability", choices=["group", "sync"], default="group")
    parser.add_argument("--window-ms", type=float, default=5.0)
    parser.add_argument("--reference", action="store_true", help="also run bare aiohttp")
    parser.add_argument(
        "--loop", choices=["asyncio", "uvloop"], default="asyncio", help="event loop, both sides"
    )
    parser.add_argument("--repeats", type=int, default=1, help="run every size this often")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        one(args)
        return

    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(LATENCY_S), args.loop])
    try:
        wait_for(port)
        ideal = CONCURRENCY / LATENCY_S
        print(f"ideal: {ideal:.0f} calls/s (concurrency {CONCURRENCY} / latency {LATENCY_S}s)")
        print(f"store: durability={args.durability}, window {args.window_ms} ms; loop {args.loop}")
        header = ["client", "dialogues", "calls", "s", "calls/s", "ratio", "of bare", "RSS MB"]
        header += ["s/1k dlg", "cpu ms/call", "srv ms/call"]
        print(" ".join(f"{h:>11}" for h in header))
        clients = ["bare", "harness"] if args.reference else ["harness"]
        for _ in range(args.repeats):
            for n in args.dialogues:
                bare_rate = None  # each harness row is paired with a bare run just before it
                for client in clients:
                    m = _measure(client, n, port, args)
                    rate = m["calls"] / m["wall"]
                    bare_rate = rate if client == "bare" else bare_rate
                    of_bare = f"{rate / bare_rate:.2f}" if client != "bare" and bare_rate else "-"
                    row = [client, str(n), str(m["calls"]), f"{m['wall']:.1f}", f"{rate:.0f}"]
                    row += [f"{rate / ideal:.2f}", of_bare, f"{m['rss_mb']:.0f}"]
                    row += [f"{m['wall'] / n * 1000:.2f}", f"{m['cpu'] / m['calls'] * 1000:.3f}"]
                    row += [f"{m['server_cpu'] / m['calls'] * 1000:.3f}"]
                    print(" ".join(f"{v:>11}" for v in row), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
