"""Judge throughput: the evaluation harness with each judge, and the sentence encoder alone.

Harness part: a subprocess serves chat completions with a fixed 50 ms latency; N dialogues of
8 user turns run in live mode through the real engine and a fresh SQLite run database (the
code path of `safeturn eval`), 64 dialogues in flight, every turn judged by one judge. Each
(judge, precision) runs in its own child process, so CPU time and model loading are its own;
the judge is warmed up (model loaded) before the clock starts. The fake server answers with
real replies from ../shared/data (JailbreakBench responses and XSTest completions) when they
are there, else with one short sentence (`--replies short` forces that). Printed per row:
calls/s, the ratio to the ideal (concurrency / latency), the ratio to the `refusal` row, and
CPU ms per judged turn (this process's CPU time / judged turns, so the harness's own share is
in every row; the refusal row is the floor).

Encoder part (`--embed`): texts/s of `judges.embedder.embed` on the same real replies, per
torch thread count, for the old path (`fp32-fixed`: float32, fixed batches of 32) and each
precision with length buckets (`fast_inference`), with the least cosine to the old path's
vectors and the classifier's largest probability change against it.

The machine is shared, so compare rows of one run (ratios), not numbers across runs.

    .venv/bin/python benchmarks/judge_throughput.py [--dialogues 200] [--judge SPEC ...]
        [--precision fp32 auto] [--torch-threads auto 2 1] [--replies real|short]
        [--embed] [--embed-only] [--texts 256]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_common import Clock, bench_samples, free_port, wait_for

from safeturn.judges import load_judge
from safeturn.models import load_model
from safeturn.run.engine import EvalSettings, execute_run, start_run
from safeturn.run.store import RunStore
from safeturn.schema import GenerateParams, Reply

LATENCY_S = 0.05
CONCURRENCY = 64
TURNS = 8
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHORT_REPLY = "Sure, here it is."

SERVER = textwrap.dedent(
    """
    import asyncio, json, sys
    from aiohttp import web

    replies = json.loads(open(sys.argv[3], encoding="utf-8").read())
    served = 0

    async def chat(request):
        global served
        await request.read()
        await asyncio.sleep(float(sys.argv[2]))
        served += 1
        return web.json_response({
            "choices": [{"message": {"role": "assistant",
                                     "content": replies[served % len(replies)]},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5},
        })

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None,
                backlog=1024)
    """
)


def real_replies(limit: int, seed: int = 0) -> list[str]:
    """Up to `limit` real replies (JailbreakBench + XSTest), shuffled; [] without the data."""
    if not SHARED_DATA.is_dir():
        return []
    from safeturn.judges.train_classifier import load_examples

    examples, _ = load_examples(SHARED_DATA)
    replies = [e.response for e in examples if e.response.strip()]
    random.Random(seed).shuffle(replies)
    return replies[:limit]


def harness(judge_spec: str, n: int, port: int) -> dict[str, float]:
    """Child process: n dialogues through the engine with one judge; wall and CPU seconds."""
    judge = load_judge(judge_spec)
    warm = bench_samples(1, TURNS)[0]

    async def warm_up() -> None:  # loads the judge's model outside the timed part
        try:
            await judge(warm, warm.dialogue, Reply(text=SHORT_REPLY, model="warm-up"), 1)
        finally:
            await judge.aclose()

    asyncio.run(warm_up())
    with tempfile.TemporaryDirectory() as folder:
        store = RunStore(Path(folder) / "bench.db")
        spec = f"openai:http://127.0.0.1:{port}/v1#fake"
        settings = EvalSettings(
            model=spec, params=GenerateParams(max_tokens=16), concurrency=CONCURRENCY
        )
        run_id = start_run(store, bench_samples(n, TURNS), settings)
        model = load_model(spec, max_concurrency=CONCURRENCY)

        async def go() -> None:
            try:
                await execute_run(store, run_id, model, [judge])
            finally:
                await model.aclose()
                await judge.aclose()

        with Clock() as clock:
            asyncio.run(go())
        verdicts = len(store.verdicts(run_id))
        store.close()
    assert verdicts == n * TURNS, f"expected {n * TURNS} verdicts, got {verdicts}"
    return {"turns": verdicts, "wall": clock.wall, "cpu": clock.cpu}


def _measure(judge: str, precision: str, threads: str, n: int, port: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--child-judge", judge, "--dialogues", str(n)]
    command += ["--port", str(port)]
    env = {**os.environ, "SAFETURN_INFERENCE_PRECISION": precision}
    env["SAFETURN_INFERENCE_THREADS"] = threads  # torch threads of the judge's passes
    out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True, env=env).stdout
    measured: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return measured


def bench_harness(args: argparse.Namespace, replies: list[str]) -> None:
    """Start the fake server and print one row per (judge, precision)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(replies, fh)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(LATENCY_S), fh.name])
    try:
        wait_for(port)
        ideal = CONCURRENCY / LATENCY_S
        kind = "short" if replies == [SHORT_REPLY] else f"{len(replies)} real"
        print(f"harness: {args.dialogues} dialogues x {TURNS} turns, concurrency {CONCURRENCY},")
        print(f"latency {LATENCY_S * 1000:.0f} ms (ideal {ideal:.0f} calls/s), {kind} replies")
        header = [
            "judge",
            "precision",
            "threads",
            "turns",
            "s",
            "calls/s",
            "of ideal",
            "of refusal",
        ]
        header += ["cpu ms/turn"]
        print(" ".join(f"{h:>12}" for h in header))
        floor: float | None = None
        for judge in args.judge:
            # precision only matters to the embedded judges; the others run once
            plain = judge == "refusal"
            precisions = ["-"] if plain else args.precision
            for precision, threads in itertools.product(precisions, args.torch_threads):
                if plain and threads != args.torch_threads[0]:
                    continue
                m = _measure(judge, precision, threads, args.dialogues, port)
                rate = m["turns"] / m["wall"]
                floor = rate if plain and floor is None else floor
                of_refusal = f"{rate / floor:.2f}" if floor else "-"
                row = [judge, precision, "-" if plain else threads, str(int(m["turns"]))]
                row += [f"{m['wall']:.1f}", f"{rate:.0f}", f"{rate / ideal:.2f}", of_refusal]
                row += [f"{m['cpu'] / m['turns'] * 1000:.2f}"]
                print(" ".join(f"{v:>12}" for v in row), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)
        Path(fh.name).unlink(missing_ok=True)


def bench_embed(args: argparse.Namespace, replies: list[str]) -> None:
    """Texts/s of `embed` per precision and thread count, against the float32 reference."""
    import numpy as np
    import torch

    from safeturn.judges.classifier import ClassifierJudge
    from safeturn.judges.embedder import TOKEN_BUDGET, embed
    from safeturn.judges.fast_inference import bf16_native

    texts = replies[: args.texts] if replies != [SHORT_REPLY] else []
    texts = texts or [f"{SHORT_REPLY} Step {i}: " + "lorem ipsum " * (i % 60) for i in range(256)]
    requests = [f"request {i}: how do I do thing {i}?" for i in range(len(texts))]
    print(
        f"\nembed(): {len(texts)} texts, median {int(np.median([len(t) for t in texts]))} chars;"
        f" native bf16: {bf16_native()}; torch {torch.__version__}"
    )
    print(
        " ".join(
            f"{h:>12}"
            for h in ["path", "threads", "texts/s", "of old", "cpu ms", "min cos", "max dP"]
        )
    )
    judge = ClassifierJudge()
    pairs = list(zip(requests, texts, strict=True))
    reference: dict[int, float] = {}  # texts/s of the old path, per thread count
    ref_vectors: Any = None
    ref_probs: Any = None
    # "fp32-fixed": the old path (fixed batches of 32 after a global sort, no token budget)
    configs = [("fp32-fixed", "fp32", 10**9)]
    configs += [(p, p, TOKEN_BUDGET) for p in args.embed_precision]
    for (label, precision, budget), threads in itertools.product(configs, args.threads):
        os.environ["SAFETURN_INFERENCE_THREADS"] = str(threads)
        embed(texts[:32], precision=precision)  # load + warm up
        with Clock() as clock:
            vectors = embed(texts, precision=precision, token_budget=budget)
        rate = len(texts) / clock.wall
        os.environ["SAFETURN_INFERENCE_PRECISION"] = precision
        probs = np.array(judge.score_pairs(pairs))
        reference.setdefault(threads, rate)
        ref_vectors = vectors if ref_vectors is None else ref_vectors
        ref_probs = probs if ref_probs is None else ref_probs
        cos = float((vectors * ref_vectors).sum(axis=1).min())
        dp = float(np.abs(probs - ref_probs).max())
        row = [label, str(threads), f"{rate:.1f}", f"{rate / reference[threads]:.2f}"]
        row += [f"{clock.cpu / len(texts) * 1000:.2f}", f"{cos:.5f}", f"{dp:.4f}"]
        print(" ".join(f"{v:>12}" for v in row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, default=200)
    parser.add_argument(
        "--judge", action="append", help="judge spec (repeatable); default: refusal, classifier"
    )
    parser.add_argument(
        "--precision",
        nargs="+",
        default=["fp32", "auto"],
        help="SAFETURN_INFERENCE_PRECISION values for the embedded judges' rows",
    )
    parser.add_argument(
        "--torch-threads",
        nargs="+",
        default=["auto", "2"],
        help="SAFETURN_INFERENCE_THREADS values for the embedded judges' rows",
    )
    parser.add_argument("--replies", choices=["real", "short"], default="real")
    parser.add_argument("--embed", action="store_true", help="also benchmark embed() alone")
    parser.add_argument("--embed-only", action="store_true", help="only benchmark embed()")
    parser.add_argument("--texts", type=int, default=256, help="texts for the embed() part")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--embed-precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--child-judge", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_judge is not None:
        print(json.dumps(harness(args.child_judge, args.dialogues, args.port)))
        return
    args.judge = args.judge or ["refusal", "classifier"]
    if "refusal" in args.judge:  # first, so every other row has its ratio
        args.judge = ["refusal", *[j for j in args.judge if j != "refusal"]]
    replies = real_replies(2000) if args.replies == "real" else []
    replies = replies or [SHORT_REPLY]
    if not args.embed_only:
        bench_harness(args, replies)
    if args.embed or args.embed_only:
        bench_embed(args, replies)


if __name__ == "__main__":
    main()
