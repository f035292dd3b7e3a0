"""Throughput of 1, 2 and 4 worker processes sharing one run (`safeturn eval --worker`).

A subprocess serves chat completions with a fixed 50 ms latency. One run of N 8-turn live
dialogues is stored in a fresh database (PostgreSQL when a server binary is installed, as
tests/postgres_server.py finds it; else SQLite, or `--db sqlite`), then K worker processes
take its samples by claiming them (`execute_worker`), each with `--concurrency` dialogues in
flight and the refusal judge. Each worker is latency-bound on its own, so the ideal grows
with K: K × concurrency / latency. Printed per K: wall time from the first worker's start to
the last one's end (process start-up included), the work span (from the first worker's
start of work to the last one's end), calls/s over that span, the ratio to ideal, the
speed-up over one worker, and each worker's share of the samples (an even split means the
claims balance).

    .venv/bin/python benchmarks/worker_throughput.py [--workers 1 2 4] [--dialogues 800]
        [--concurrency 16] [--db postgresql|sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from bench_common import bench_samples, free_port, wait_for
from harness_throughput import LATENCY_S, SERVER

REPO = Path(__file__).resolve().parents[1]
TURNS = 8


def one_worker(db: str, run_id: str, port: int) -> None:
    """Child process: work on the run until nothing is pending; print what it did."""
    from safeturn.judges import load_judge
    from safeturn.models import load_model
    from safeturn.run.engine import execute_worker
    from safeturn.run.store import RunStore

    store = RunStore(db)
    model = load_model(f"openai:http://127.0.0.1:{port}/v1#fake", max_concurrency=256)
    samples = 0

    def count(*_: object) -> None:
        nonlocal samples
        samples += 1

    async def go() -> None:
        try:
            await execute_worker(store, run_id, model, [load_judge("refusal")], on_sample=count)
        finally:
            await model.aclose()

    started = time.time()
    asyncio.run(go())
    ended = time.time()
    store.close()
    print(json.dumps({"samples": samples, "started": started, "ended": ended}))


@contextmanager
def database(kind: str) -> Iterator[tuple[str, str]]:
    """(kind, URL) of a fresh run database: PostgreSQL if a server binary exists, else SQLite."""
    with tempfile.TemporaryDirectory() as folder:
        if kind == "postgresql":
            sys.path.insert(0, str(REPO))
            from tests.postgres_server import PostgresServer, find_bin_dir

            bin_dir = find_bin_dir()
            if bin_dir is not None:
                with PostgresServer.started(bin_dir) as server:
                    yield "postgresql", server.url(server.create_database())
                    return
            print("no PostgreSQL server binary found: using SQLite")
        yield "sqlite", str(Path(folder) / "workers.db")


class Measured(NamedTuple):
    kind: str
    calls: int
    wall: float
    span: float
    """From the first worker's start of work to the last one's end (no process start-up)."""
    split: list[int]


def measure(workers: int, args: argparse.Namespace, port: int) -> Measured:
    """One fresh run shared by `workers` processes; wall time and the split of samples."""
    from safeturn.run.engine import EvalSettings, start_run
    from safeturn.run.store import RunStore
    from safeturn.schema import GenerateParams

    with database(args.db) as (kind, url):
        store = RunStore(url)
        settings = EvalSettings(
            model=f"openai:http://127.0.0.1:{port}/v1#fake",
            params=GenerateParams(max_tokens=16),
            concurrency=args.concurrency,
        )
        run_id = start_run(store, bench_samples(args.dialogues, TURNS), settings)
        store.close()
        command = [sys.executable, __file__, "--one", url, run_id, "--port", str(port)]
        started = time.perf_counter()
        children = [
            subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(workers)
        ]
        outs = [child.communicate()[0] for child in children]
        wall = time.perf_counter() - started
        if any(child.returncode for child in children):
            raise SystemExit(f"a worker failed: {outs}")
        reports = [json.loads(out.strip().splitlines()[-1]) for out in outs]
        split = [r["samples"] for r in reports]
        span = max(r["ended"] for r in reports) - min(r["started"] for r in reports)
        store = RunStore(url)
        calls = len(store.calls(run_id))
        store.close()
    assert calls == args.dialogues * TURNS, f"expected {args.dialogues * TURNS} calls, got {calls}"
    return Measured(kind, calls, wall, span, split)


def main() -> None:
    """Start the fake server, run each worker count on a fresh run, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--dialogues", type=int, default=800)
    parser.add_argument("--concurrency", type=int, default=16, help="dialogues in flight each")
    parser.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        one_worker(args.one[0], args.one[1], args.port)
        return

    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(LATENCY_S), "asyncio"])
    try:
        wait_for(port)
        print(f"{args.dialogues} dialogues × {TURNS} turns, {args.concurrency} in flight a worker")
        header = [
            "db",
            "workers",
            "calls",
            "wall s",
            "work s",
            "calls/s",
            "ideal",
            "ratio",
            "speed-up",
            "split",
        ]
        print(" ".join(f"{h:>10}" for h in header))
        one = None  # the rate of one worker, measured in this run
        for k in args.workers:
            m = measure(k, args, port)
            rate = m.calls / m.span
            one = rate if k == 1 else one
            ideal = k * args.concurrency / LATENCY_S
            speedup = f"{rate / one:.2f}" if one else "-"
            split = "/".join(str(s) for s in m.split)
            row = [m.kind, str(k), str(m.calls), f"{m.wall:.1f}", f"{m.span:.1f}", f"{rate:.0f}"]
            row += [f"{ideal:.0f}", f"{rate / ideal:.2f}", speedup, split]
            print(" ".join(f"{v:>10}" for v in row), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
