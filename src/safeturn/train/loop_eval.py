"""The loop's evaluation runs: the attack samples of both splits, and running them.

Steps 1 and 5 (`eval-before`, `eval-after`) build the same attacks from every seed, tag each
sample with its seed group and split, and run them through the engine as stored runs in
`out/safeturn.db`, so a killed eval resumes without repeating a stored call.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence

from safeturn.attacks.base import Seed
from safeturn.attacks.builder import build_attacks
from safeturn.errors import LoopError
from safeturn.run.engine import EvalSettings, unfinished_samples
from safeturn.run.members import run_members
from safeturn.run.store import RunStore
from safeturn.schema import GenerateParams, Sample
from safeturn.train.loop_config import LoopConfig
from safeturn.train.loop_split import load_seeds, seed_groups, split_groups
from safeturn.train.loop_state import LoopEvents, LoopPaths, RunName, write_json
from safeturn.train.loop_synth import GROUP_KEY

SPLIT_KEY = "loop_split"
"""Sample metadata key: `train` or `held-out`."""


def eval_settings(config: LoopConfig, model: str) -> EvalSettings:
    """The eval settings of every run of this loop; only the model differs."""
    return EvalSettings(
        model=model,
        judges=list(config.judges),
        mode="live",
        params=GenerateParams(max_tokens=config.max_tokens),
        concurrency=config.concurrency,
        data=(
            f"loop: {', '.join(config.data)} → {', '.join(config.strategies)} × turns "
            f"{', '.join(map(str, config.turns))}"
        ),
    )


def build_samples(
    config: LoopConfig, paths: LoopPaths, notes: list[str]
) -> tuple[list[Sample], list[Sample]]:
    """(train, held-out) attack samples, tagged with their group and split; writes split.json.

    Raises:
        LoopError: An earlier split.json disagrees (the data changed under the out dir).
    """
    seeds = load_seeds(config, notes)
    groups = seed_groups(seeds)
    train, held = split_groups(groups.values(), config.held_out, config.split_seed)
    split = {
        "train": sorted(s.id for s in seeds if groups[s.id] in train),
        "held_out": sorted(s.id for s in seeds if groups[s.id] in held),
        "groups": {"train": sorted(train), "held_out": sorted(held)},
    }
    if paths.split.is_file():
        if json.loads(paths.split.read_text(encoding="utf-8")) != split:
            raise LoopError(
                f"{paths.split} disagrees with the split of the data now; the seed "
                "files changed under this out dir. Use another --out"
            )
    else:
        write_json(paths.split, split)

    def attacks(chosen: list[Seed], strategies: list[str]) -> list[Sample]:
        return asyncio.run(
            build_attacks(
                chosen, strategies, config.turns, seed=config.build_seed, images_dir=paths.images
            )
        )

    samples = attacks(seeds, config.strategies)
    if config.heldout_strategies:  # attack templates the training data never shows
        held_seeds = [s for s in seeds if groups[s.id] in held]
        samples += attacks(held_seeds, config.heldout_strategies)
    tagged = [_tagged(sample, groups, train) for sample in samples]
    return (
        [s for s in tagged if s.metadata[SPLIT_KEY] == "train"],
        [s for s in tagged if s.metadata[SPLIT_KEY] == "held-out"],
    )


def _tagged(sample: Sample, groups: Mapping[str, str], train: set[str]) -> Sample:
    seed_id = str(sample.metadata.get("seed_id") or sample.id)
    group = groups[seed_id]
    side = "train" if group in train else "held-out"
    meta = {**sample.metadata, "seed_id": seed_id, GROUP_KEY: group, SPLIT_KEY: side}
    return sample.model_copy(update={"metadata": meta})


def execute_runs(
    store: RunStore, runs: Mapping[str, str], names: Sequence[RunName], events: LoopEvents
) -> None:
    """Run (or resume) the named eval runs with one loaded model and set of judges."""
    from safeturn.run.engine import execute_run, run_settings

    todo = [n for n in names if unfinished_samples(store, runs[n])]
    if not todo:
        return

    async def go() -> None:
        async with run_members(run_settings(store, runs[todo[0]])) as (model, judges):
            for name in todo:
                run_id = runs[name]
                left = len(unfinished_samples(store, run_id))
                events.run_started(name, left, len(store.sample_status(run_id)))
                await execute_run(store, run_id, model, judges, on_sample=events.sample_done())

    asyncio.run(go())
