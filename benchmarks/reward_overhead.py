"""What does the turn-aware GRPO reward cost next to the plain final-turn reward and a train step?

Judge calls are excluded: every rollout's per-turn (help, safe) scores are precomputed, and the
TRL reward functions look them up, so what is timed is the grouping, the padding/masking and the
group formula. One GRPO batch is 16 prompts × N = 8 rollouts with T = 1..8 assistant turns (one
rollout in four ends a turn early, so the mask path is exercised). Printed per batch: the array
function alone and the full TRL callable, turn-aware vs final-turn, median of many repeats.

The step proxy is one forward + backward of the embedded SmolLM2-135M (float32) on 16 × 128
tokens, on this machine's device (CPU unless CUDA is present). The overhead ratio is the extra
time of the turn-aware callable over the plain one, divided by that step; target <= 5 %. Also
printed: the step time at which the turn-aware callable's whole cost would reach 5 %.

`--grpo-steps K` (default 2) then measures the same thing inside real steps of safeturn's
`TurnAwareGRPOTrainer` on the embedded model: 4 three-turn dialogues x N = 4 rollouts of 8
tokens per turn, judge scores drawn at random per rollout (the judge is excluded). In every step
the trainer's reward call computes both rewards on the same inputs (the turn-aware one trains,
the plain one is only timed), and the overhead is their time difference over the step's wall
time (rollouts + TRL's loss and optimizer).

    .venv/bin/python benchmarks/reward_overhead.py [--threads N] [--repeats 200] [--steps 3]
        [--grpo-steps 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np

from safeturn.train.rewards import (
    TurnAwareRewardConfig,
    make_per_completion_reward,
    make_turn_aware_reward,
    per_completion_rewards,
    turn_aware_rewards,
)

PROMPTS = 16
GENERATIONS = 8
SEQ_LEN = 128
CONFIG = TurnAwareRewardConfig(lam=1.0, tau=0.5, beta=0.5)


def median_s(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_batch(turns: int, rng: np.random.Generator) -> tuple[list[str], list[int], list[Any]]:
    """TRL's view of one batch: repeated prompts, completion handles, and the score table."""
    prompts = [f"dialogue {p}" for p in range(PROMPTS) for _ in range(GENERATIONS)]
    table = []
    for k in range(len(prompts)):
        length = turns - 1 if turns > 1 and k % 4 == 3 else turns
        table.append([(float(h), float(s)) for h, s in rng.random((length, 2))])
    return prompts, list(range(len(prompts))), table


def time_rewards(turns: int, repeats: int, rng: np.random.Generator) -> dict[str, float]:
    prompts, completions, table = make_batch(turns, rng)

    def lookup(prompt: str, completion: int) -> list[tuple[float, float]]:
        return table[completion]  # type: ignore[no-any-return]

    turn_aware = make_turn_aware_reward(lookup, CONFIG, num_generations=GENERATIONS)
    plain = make_per_completion_reward(lookup, CONFIG, num_generations=GENERATIONS)
    helpful = rng.random((PROMPTS, GENERATIONS, turns))
    safe = rng.random((PROMPTS, GENERATIONS, turns))

    def arrays_turn_aware() -> None:
        for g in range(PROMPTS):
            turn_aware_rewards(helpful[g], safe[g], CONFIG)

    def arrays_plain() -> None:
        for g in range(PROMPTS):
            per_completion_rewards(helpful[g], safe[g], CONFIG)

    return {
        "fn_turn_aware": median_s(arrays_turn_aware, repeats),
        "fn_plain": median_s(arrays_plain, repeats),
        "trl_turn_aware": median_s(lambda: turn_aware(prompts, completions), repeats),
        "trl_plain": median_s(lambda: plain(prompts, completions), repeats),
    }


def step_time(steps: int) -> tuple[float, str]:
    """One forward + backward of SmolLM2-135M on 16 × 128 tokens: the GRPO step proxy."""
    import torch
    from transformers import AutoModelForCausalLM

    from safeturn.models.embedded import embedded_model_dir

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir(), dtype=torch.float32)
    model.to(device).train()
    ids = torch.randint(0, model.config.vocab_size, (PROMPTS, SEQ_LEN), device=device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()

    return median_s(step, steps), f"{device} ({torch.get_num_threads()} threads)"


def grpo_step_overhead(steps: int) -> dict[str, float]:
    """Seconds per GRPO step and per reward call, turn-aware vs plain, in the same steps."""
    import tempfile
    from pathlib import Path

    from transformers import TrainerCallback

    from safeturn.judges.turn_scores import TurnScores
    from safeturn.schema import Dialogue, Message, Sample, write_jsonl
    from safeturn.train.grpo import SafeGRPOConfig, build_grpo_trainer
    from safeturn.train.rollouts import RolloutRecord

    rng = np.random.default_rng(1)
    topics = ["locks", "chemistry", "networks", "medicine"]
    samples = [
        Sample(
            id=f"bench-{i}",
            source="benchmark",
            harmful=True,
            dialogue=Dialogue(
                messages=[
                    Message.user(f"I'm reading about {topic}."),
                    Message.assistant("Sounds interesting."),
                    Message.user("What are the basics?"),
                    Message.assistant("Here they are."),
                    Message.user("And the risky parts, step by step?"),
                ]
            ),
        )
        for i, topic in enumerate(topics)
    ]

    class RandomScores:
        """A stand-in judge: fixed random (help, safe) per rollout turn, no model."""

        name = "random"

        def __call__(self, record: RolloutRecord) -> list[TurnScores]:
            return [TurnScores(*map(float, rng.random(2))) for _ in record.replies]

        def close(self) -> None:
            pass

    timings: dict[str, list[float]] = {"turn_aware": [], "plain": [], "step": []}

    class StepClock(TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            timings["step"].append(time.perf_counter() - self.start)

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "dialogues.jsonl"
        write_jsonl(samples, data)
        config = SafeGRPOConfig(
            data=data,
            output_dir=Path(tmp) / "out",
            num_generations=4,
            batch_size=16,
            max_steps=steps,
            max_turn_tokens=8,
            max_length=512,
            learning_rate=1e-6,
            save=False,
        )
        trainer = build_grpo_trainer(config, scorer=RandomScores())
        turn_aware = trainer.turn_reward
        plain = make_per_completion_reward(
            turn_aware.score_fn, CONFIG, num_generations=config.num_generations
        )

        def both(prompts: Any, completions: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            plain(prompts, completions, **kwargs)
            middle = time.perf_counter()
            values = turn_aware(prompts, completions, **kwargs)
            timings["plain"].append(middle - start)
            timings["turn_aware"].append(time.perf_counter() - middle)
            return values

        both.__name__ = turn_aware.__name__
        trainer.reward_funcs[0] = both
        trainer.add_callback(StepClock())
        trainer.train()
    return {k: statistics.median(v) for k, v in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--grpo-steps", type=int, default=2, help="0 skips the real GRPO steps")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows = {turns: time_rewards(turns, args.repeats, rng) for turns in range(1, 9)}
    step_s, where = step_time(args.steps)

    print(f"batch: {PROMPTS} prompts x {GENERATIONS} rollouts; judge scores precomputed")
    print(f"step proxy: SmolLM2-135M fwd+bwd, {PROMPTS}x{SEQ_LEN} tokens on {where}: ", end="")
    print(f"{step_s * 1e3:.0f} ms (median of {args.steps})")
    print(
        f"{'T':>2} {'fn turn-aware':>14} {'fn plain':>9} {'TRL turn-aware':>15} {'TRL plain':>10}"
        f" {'extra/step':>11} {'5 % break-even step':>20}"
    )
    worst = 0.0
    for turns, t in rows.items():
        extra = t["trl_turn_aware"] - t["trl_plain"]
        worst = max(worst, extra / step_s)
        print(
            f"{turns:>2} {t['fn_turn_aware'] * 1e3:>11.3f} ms {t['fn_plain'] * 1e3:>6.3f} ms"
            f" {t['trl_turn_aware'] * 1e3:>12.3f} ms {t['trl_plain'] * 1e3:>7.3f} ms"
            f" {extra / step_s:>10.3%} {t['trl_turn_aware'] / 0.05 * 1e3:>17.1f} ms"
        )
    print(f"worst overhead of turn-aware over plain: {worst:.3%} of a step (target <= 5 %)")
    if args.grpo_steps:
        real = grpo_step_overhead(args.grpo_steps)
        extra = real["turn_aware"] - real["plain"]
        print(
            f"in real TurnAwareGRPOTrainer steps (4 dialogues x 4 rollouts x 3 turns, median of "
            f"{args.grpo_steps}): step {real['step']:.2f} s; reward call turn-aware "
            f"{real['turn_aware'] * 1e3:.3f} ms, plain {real['plain'] * 1e3:.3f} ms; "
            f"overhead {extra / real['step']:.4%} of the step (target <= 5 %)"
        )


if __name__ == "__main__":
    main()
