"""Seeds for the closed loop and the held-out split that keeps the re-eval honest.

The split is by seed *group*: seeds that share an id, a `pair` (a FigStep seed and its benign
twin) or the same question text (one request loaded from two files) are one group and always
land on the same side. Groups are ranked by a hash of (split seed, group), so the split does not
depend on load order. `check_no_leak` is the last line of defence, run on the training data
itself before any training.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

from safeturn.attacks.base import Seed, seed_from_sample
from safeturn.errors import LoopError
from safeturn.schema import Sample
from safeturn.train.loop_config import LoopConfig
from safeturn.train.loop_synth import GROUP_KEY


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def load_seeds(config: LoopConfig, notes: list[str] | None = None) -> list[Seed]:
    """Every seed of every data spec (`demo` = the bundled set); missing images go to `notes`.

    Raises:
        LoopError: Two seeds share an id, or no seed was loaded.
    """
    from safeturn.data import load_dataset
    from safeturn.demo import demo_seeds

    seeds: list[Seed] = []
    for spec in config.data:
        if spec == "demo":
            seeds.extend(demo_seeds(limit=config.limit))
            continue
        loaded = load_dataset(spec, text_only=config.text_only, limit=config.limit)
        for missing in loaded.missing_images:
            if notes is not None:
                notes.append(f"left out {missing.sample_id}: {missing.reason}")
        seeds.extend(seed_from_sample(sample) for sample in loaded.samples)
    ids = [seed.id for seed in seeds]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise LoopError(f"seed ids repeat across the data specs: {', '.join(repeated[:5])}")
    if not seeds:
        raise LoopError(f"no seeds loaded from {config.data}")
    return seeds


def seed_groups(seeds: Sequence[Seed]) -> dict[str, str]:
    """Seed id → group: seeds linked by id, `pair` metadata or equal question text are one group.

    The group's name is its smallest seed id, so it does not depend on load order.
    """
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    for seed in seeds:
        node = f"id:{seed.id}"
        pair = seed.metadata.get("pair")
        if isinstance(pair, str) and pair:
            union(node, f"id:{pair}")
        union(node, f"q:{_norm(seed.question)}")
    members: dict[str, list[str]] = {}
    for seed in seeds:
        members.setdefault(find(f"id:{seed.id}"), []).append(seed.id)
    return {sid: min(ids) for ids in members.values() for sid in ids}


def split_groups(groups: Iterable[str], held_out: float, seed: int) -> tuple[set[str], set[str]]:
    """(train, held-out) groups: the first round(held_out · n) groups by hash rank are held out.

    Both sides get at least one group, so the loop always has something to train on and
    something to measure.

    Raises:
        LoopError: There are fewer than two groups.
    """
    distinct = sorted(set(groups))
    if len(distinct) < 2:
        raise LoopError(f"need at least two seed groups to hold one out; got {len(distinct)}")
    order = sorted(distinct, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    count = min(len(order) - 1, max(1, round(held_out * len(order))))
    return set(order[count:]), set(order[:count])


def check_no_leak(training: Iterable[Sample], held_out: Iterable[Sample]) -> None:
    """Refuse training data that shares a group, a seed or a seed question with the held-out set.

    Raises:
        LoopError: Naming the first training dialogue that would leak.
    """
    held = list(held_out)
    groups = {s.metadata.get(GROUP_KEY) for s in held} - {None}
    seeds = {s.metadata.get("seed_id") for s in held} - {None}
    questions = {_norm(s.seed_question) for s in held if s.seed_question}
    for sample in training:
        question = _norm(sample.seed_question) if sample.seed_question else None
        leak = None
        if sample.metadata.get(GROUP_KEY) in groups:
            leak = "group"
        elif sample.metadata.get("seed_id") in seeds:
            leak = "seed"
        elif question is not None and question in questions:
            leak = "question"
        if leak is not None:
            raise LoopError(
                f"training dialogue {sample.id} shares its {leak} with the held-out set; "
                "the re-eval would not be held out"
            )
