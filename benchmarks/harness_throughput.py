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

`--e2e` adds `safeturn eval` as a user runs it: the N dialogues written to a JSONL file, then
`safeturn eval --data jsonl:FILE --judge refusal --concurrency 64` in its own process against
the same server, timed from process start to exit (start-up, loading, creating the run,
running it, the reports), with the child's own peak RSS and where its time went. `--no-engine`
leaves out the engine-only row (long runs: 10,000 dialogues).

    .venv/bin/python benchmarks/harness_throughput.py [--dialogues 250 1000 4000 10000]
        [--reference] [--e2e] [--no-engine] [--repeats 2] [--durability group|sync]
        [--window-ms 5] [--loop asyncio|uvloop]   (uvloop: pip install uvloop first)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
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
from safeturn.schema import GenerateParams, write_jsonl

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


def _safeturn_command() -> list[str]:
    """The `safeturn` console script of this interpreter's environment, as a user runs it."""
    script = Path(sys.executable).parent / "safeturn"
    return [str(script)] if script.exists() else [sys.executable, "-m", "safeturn.cli"]


def e2e(n: int, port: int, folder: Path) -> dict[str, Any]:
    """`safeturn eval` on n dialogues in a JSONL file: process start to exit, child's rusage."""
    data = folder / f"dialogues-{n}.jsonl"
    write_jsonl(bench_samples(n, TURNS), data)  # the user's file exists before the run
    out = folder / f"eval-{n}"
    command = [*_safeturn_command(), "eval", "--model", f"openai:http://127.0.0.1:{port}/v1#fake"]
    command += ["--data", f"jsonl:{data}", "--judge", "refusal", "--max-tokens", "16"]
    command += ["--concurrency", str(CONCURRENCY), "--out", str(out)]
    lines: list[tuple[float, str]] = []
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert child.stdout is not None
    rss = RssSampler(child.pid, start)
    for raw in child.stdout:  # each line stamped on arrival: where the time went
        lines.append((time.perf_counter() - start, raw.decode(errors="replace").rstrip()))
    rss.stop()
    _, status, usage = os.wait4(child.pid, 0)  # this child's own peak RSS and CPU
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        tail = "\n".join(line for _, line in lines[-30:])
        raise RuntimeError(f"safeturn eval exited with {child.returncode}:\n{tail}")
    with contextlib.closing(sqlite3.connect(out / "safeturn.db")) as db:
        calls = db.execute("select count(*) from model_calls").fetchone()[0]
        verdicts = db.execute("select count(*) from verdicts").fetchone()[0]
    assert calls == verdicts == n * TURNS, f"expected {n * TURNS} calls, got {calls}/{verdicts}"
    phases = e2e_phases(lines, wall)
    return {
        "calls": calls,
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss_mb": usage.ru_maxrss / 1024,
        "steps": {name: end - begin for name, begin, end in phases},
        "step_rss": {name: rss.peak(begin, end) for name, begin, end in phases},
    }


class RssSampler:
    """A thread that reads a process's resident memory every 50 ms (Linux `/proc`)."""

    def __init__(self, pid: int, start: float) -> None:
        self.samples: list[tuple[float, float]] = []
        self._path, self._start = Path(f"/proc/{pid}/statm"), start
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
        while not self._done.wait(0.05):
            try:
                resident = int(self._path.read_text().split()[1])
            except (OSError, IndexError, ValueError):
                return  # the process has ended
            self.samples.append((time.perf_counter() - self._start, resident * page_mb))

    def stop(self) -> None:
        """Stop sampling (the process has closed its output)."""
        self._done.set()
        self._thread.join()

    def peak(self, begin: float, end: float) -> float | None:
        """The largest reading between two moments (seconds since the start), if any."""
        return max((mb for at, mb in self.samples if begin <= at <= end), default=None)


def e2e_phases(lines: list[tuple[float, str]], wall: float) -> list[tuple[str, float, float]]:
    """Start-up, loading, creating the run, running it, the reports and the exit: (name, from, to).

    From the arrival times of `safeturn eval`'s own lines: `loaded N samples ... in S s`,
    `run ID: N of M samples to do`, `done in S s`, the summary's last line (results read back
    and summed up) and `report: FILE` (HTML and JSON written); empty when one is missing.
    """

    def at(pattern: str) -> tuple[int, float, re.Match[str]] | None:
        for index, (stamp, line) in enumerate(lines):
            if (found := re.search(pattern, line)) is not None:
                return index, stamp, found
        return None

    loaded = at(r"^loaded \d+ samples .* in ([\d.]+) s")
    created = at(r"^run \w+: \d+ of \d+ samples to do")
    done = at(r"^done in ")
    written = at(r"^report: ")
    if loaded is None or created is None or done is None or written is None:
        return []
    began_loading = loaded[1] - float(loaded[2][1])
    summed = lines[written[0] - 1][0]  # the summary's last line, just before the HTML
    marks = [0.0, began_loading, loaded[1], created[1], done[1], summed, written[1], wall]
    names = ["start-up", "loading", "create", "run", "results+summary", "html+json", "exit"]
    return [(name, marks[i], marks[i + 1]) for i, name in enumerate(names)]


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


def _measure(client: str, n: int, port: int, args: argparse.Namespace) -> dict[str, Any]:
    """One size in a fresh child process, plus the server's CPU over the same span."""
    command = [sys.executable, __file__, "--one", str(n), "--port", str(port)]
    command += ["--durability", args.durability, "--window-ms", str(args.window_ms)]
    command += ["--loop", args.loop]
    command += ["--bare"] if client == "bare" else []
    server_cpu = _server_cpu(port)
    if client == "e2e":
        with tempfile.TemporaryDirectory() as folder:
            measured = e2e(n, port, Path(folder))
    else:
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        measured = json.loads(out.strip().splitlines()[-1])
    measured["server_cpu"] = _server_cpu(port) - server_cpu
    return measured


def _row(client: str, n: int, m: dict[str, Any], ideal: float, bare_rate: float | None) -> str:
    rate = m["calls"] / m["wall"]
    of_bare = f"{rate / bare_rate:.2f}" if client != "bare" and bare_rate else "-"
    row = [client, str(n), str(m["calls"]), f"{m['wall']:.1f}", f"{rate:.0f}"]
    row += [f"{rate / ideal:.2f}", of_bare, f"{m['rss_mb']:.0f}"]
    row += [f"{m['wall'] / n * 1000:.2f}", f"{m['cpu'] / m['calls'] * 1000:.3f}"]
    row += [f"{m['server_cpu'] / m['calls'] * 1000:.3f}"]
    line = " ".join(f"{v:>11}" for v in row)
    if m.get("steps"):
        steps = ", ".join(f"{name} {s:.2f}" for name, s in m["steps"].items())
        peaks = ", ".join(
            f"{name} {'-' if mb is None else f'{mb:.0f}'}" for name, mb in m["step_rss"].items()
        )
        line += f"\n{'':>11} seconds: {steps}\n{'':>11} peak RSS MB: {peaks}"
    return line


def main() -> None:
    """Start the fake server, run each size in a child process, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, nargs="+", default=[250, 1000, 4000])
    parser.add_argument("--durability", choices=["group", "sync"], default="group")
    parser.add_argument("--window-ms", type=float, default=5.0)
    parser.add_argument("--reference", action="store_true", help="also run bare aiohttp")
    parser.add_argument("--e2e", action="store_true", help="also run `safeturn eval` (CLI)")
    parser.add_argument("--no-engine", action="store_true", help="leave out the engine row")
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
        clients = ["bare"] if args.reference else []
        clients += [] if args.no_engine else ["harness"]
        clients += ["e2e"] if args.e2e else []
        for _ in range(args.repeats):
            for n in args.dialogues:
                bare_rate = None  # each row is paired with a bare run just before it
                for client in clients:
                    m = _measure(client, n, port, args)
                    bare_rate = m["calls"] / m["wall"] if client == "bare" else bare_rate
                    print(_row(client, n, m, ideal, bare_rate), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
