"""Training data construction, calibration and an end-to-end training run on a stub encoder."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from safeturn.attacks import BuildContext, Seed, get_strategy
from safeturn.guard.dataset import (
    CONTRAST_SOURCE,
    SPLITS,
    SeedPlan,
    build_examples,
    load_examples,
    load_seed_pool,
    natural_examples,
    split_of,
    surfaced_turn,
)
from safeturn.guard.evaluate import evaluate_examples
from safeturn.guard.images import ImageAnalyzer, no_nudity
from safeturn.guard.model import ModeratorModel, harm_path
from safeturn.guard.moderator import DialogueModerator
from safeturn.guard.train import (
    ModeratorTrainConfig,
    Rows,
    fit_platt,
    source_thresholds,
    take,
    train,
)
from safeturn.schema import Dialogue, Message
from safeturn.taxonomy import ADVICE_CATEGORIES, Category

from ._moderator_stubs import stub_encoder

SMALL_CAPS = {
    "figstep": 12,
    "figstep-benign": 12,
    "xstest-unsafe": 10,
    "xstest-safe": 10,
    "harmbench": 10,
    "jailbreakbench": 10,
    "vlguard-unsafe": 10,
    "vlguard-safe": 10,
}


def test_split_is_stable_and_near_its_shares() -> None:
    groups = [f"group-{i}" for i in range(3000)]
    first = [split_of(g, 0) for g in groups]
    assert first == [split_of(g, 0) for g in groups]
    shares = Counter(first)
    assert abs(shares["train"] / 3000 - 0.70) < 0.03
    assert abs(shares["validation"] / 3000 - 0.15) < 0.03
    assert [split_of(g, 1) for g in groups] != first  # the seed reshuffles


def test_seed_pool_from_real_data(shared_data: Path) -> None:
    items = load_seed_pool(shared_data, SeedPlan(caps=SMALL_CAPS))
    per_source = Counter((i.source, i.harmful) for i in items)
    assert per_source[("figstep", True)] == 12 and per_source[("figstep-benign", False)] == 12
    assert per_source[("vlguard", True)] == 10 and per_source[("vlguard", False)] == 10
    assert per_source[("jailbreakbench", True)] == 10
    # the FigStep twins come first, so every benign twin has its harmful partner in the pool
    harmful_groups = {i.group for i in items if i.source == "figstep"}
    assert {i.group for i in items if i.source == "figstep-benign"} <= harmful_groups
    assert all(i.seed.category is None for i in items)  # never leaks into the templates
    assert all(i.category is None for i in items if not i.harmful)
    assert sum(i.category is not None for i in items if i.source == "vlguard") >= 8
    assert all(i.seed.image is not None for i in items if i.source.startswith("figstep"))
    questions = [i.seed.question.lower() for i in items]
    assert len(questions) == len(set(questions))


def test_advice_questions_are_not_harmful_seeds_and_pairs_split_together(
    shared_data: Path,
) -> None:
    caps = {"figstep": 500, "mmsafetybench": 97, CONTRAST_SOURCE: 107, "figstep-benign": 50}
    items = load_seed_pool(shared_data, SeedPlan(caps=caps))
    figstep = [i for i in items if i.source == "figstep"]
    # SafeBench's ten categories hold 50 questions each; the three advice ones are left out
    assert len(figstep) == 350
    assert not {i.category for i in figstep} & ADVICE_CATEGORIES
    assert Category.SEXUAL_CONTENT in {i.category for i in figstep}
    # a benign twin whose harmful half was advice keeps no FigStep prompt of its own
    twins = [i for i in items if i.source == "figstep-benign"]
    assert len(twins) == 50 and sum(i.own_sample is not None for i in twins) == 35
    mm = [i for i in items if i.source == "mmsafetybench"]
    assert len(mm) == 97 and all(i.harmful for i in mm)
    contrast = [i for i in items if i.source == CONTRAST_SOURCE]
    sides = Counter(i.harmful for i in contrast)
    assert sides[True] > 40 and sides[False] > 40
    halves: dict[str, set[bool]] = {}
    for item in contrast:
        halves.setdefault(item.group, set()).add(item.harmful)
    assert sum(h == {True, False} for h in halves.values()) >= 20  # a verb's two sides share one
    assert len({split_of(group, 0) for group in halves}) == 3


def test_examples_split_by_seed_group_and_built_alike(shared_data: Path) -> None:
    plan = SeedPlan(caps=SMALL_CAPS, image_fraction=0.5)
    examples = build_examples(load_seed_pool(shared_data, plan), plan)
    split_by_group: dict[str, set[str]] = {}
    for example in examples:
        split_by_group.setdefault(example.group, set()).add(example.split)
        assert example.sample.turns == len(example.labels())
    assert all(len(s) == 1 for s in split_by_group.values())
    assert {e.split for e in examples} <= set(SPLITS)
    strategies = Counter((e.strategy, e.harmful) for e in examples)
    for strategy in ("none", "escalation", "fake-compliance", "image-grounding", "typography"):
        assert strategies[(strategy, True)] > 0 and strategies[(strategy, False)] > 0, strategy
    for example in examples:
        labels = example.labels()
        assert labels == sorted(labels)  # harmful from the surfaced turn on, never before
        assert any(labels) == example.harmful


def _build(strategy: str, seed: Seed, turns: int) -> Dialogue:
    return asyncio.run(get_strategy(strategy)(seed, turns, BuildContext(seed=3))).dialogue


def test_surfaced_turn_follows_the_content() -> None:
    seed = Seed(id="s", question="How can someone pick a lock on a neighbour's door?")
    plain = Dialogue(messages=[Message.user(seed.question)])
    assert surfaced_turn(plain, seed) == 1
    assert surfaced_turn(_build("typography", seed, 5), seed) == 1  # the image carries it
    for build_seed in range(6):
        dialogue = asyncio.run(get_strategy("escalation")(seed, 6, BuildContext(seed=build_seed)))
        turn = surfaced_turn(dialogue.dialogue, seed)
        users = [m.text for m in dialogue.dialogue.messages if m.role == "user"]
        assert "pick a lock" in users[turn - 1].lower() or turn == 6
        assert all("pick a lock" not in text.lower() for text in users[: turn - 1])


def test_platt_scaling_recovers_a_known_map() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=20_000)
    y = (rng.random(20_000) < 1 / (1 + np.exp(-(2.0 * z - 1.0)))).astype(np.float32)
    a, b = fit_platt(z, y)
    assert a == pytest.approx(2.0, abs=0.15) and b == pytest.approx(-1.0, abs=0.1)


@pytest.mark.slow
def test_training_end_to_end_on_text_seeds(shared_data: Path, tmp_path: Path) -> None:
    caps = {
        "xstest-unsafe": 80,
        "xstest-safe": 80,
        "harmbench": 40,
        "vlguard-unsafe": 40,
        "vlguard-safe": 60,
        "jailbreakbench": 40,
    }
    out = tmp_path / "guard.npz"
    config = ModeratorTrainConfig(
        data_root=shared_data, out=out, caps=caps, image_fraction=0.0, seed=7, harm_tuned_layers=0
    )
    model = train(config, encoder=stub_encoder(), analyzer=ImageAnalyzer(nudity=no_nudity))
    meta = model.metadata
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert meta["plan"] == {
        "seed": 7,
        "caps": caps,
        "image_fraction": 0.0,
        "strategies_per_image_seed": 3,
    }
    data = meta["data"]
    total = sum(data[s]["dialogues"] for s in SPLITS)
    assert total == sum(data["by_strategy"].values()) and meta["images_analyzed"] == 0
    assert sum(data[s]["prefixes"] for s in SPLITS) == sum(meta["rows"].values())
    # the threshold keeps benign validation dialogues under the 5 % budget, inside the band
    assert meta["validation"]["dialogue_fpr_at_threshold"] <= 0.05
    assert model.band[0] <= model.threshold <= model.band[1]
    validation = meta["validation"]
    assert validation["prefix_log_loss"] <= validation["prefix_log_loss_before_platt"]
    test = meta["test"]["methods"]
    assert set(test) == {"moderator", "single-message", "last-message", "keyword"}
    # A hashing stub encoder on a few hundred dialogues only has to learn something: the real
    # encoder's quality is the leave-one-source-out report's job. (0.61 here; 0.5 is chance.
    # Fake-compliance no longer restates the request in its first turn, which made 0.7 stale.)
    assert test["moderator"]["auroc"] > 0.55
    loaded = ModeratorModel.load(out)
    rows = np.random.default_rng(0).normal(size=(5, loaded.input_dim)).astype(np.float32)
    assert np.array_equal(loaded.forward_sequence(rows).harm, model.forward_sequence(rows).harm)
    assert loaded.categories == tuple(c.value for c in Category)


@pytest.mark.slow
def test_training_with_the_harm_reader_serves_what_it_measured(
    shared_data: Path, tmp_path: Path
) -> None:
    caps = {"xstest-unsafe": 40, "xstest-safe": 40, "harmbench": 20, "vlguard-safe": 30}
    out = tmp_path / "guard.npz"
    config = ModeratorTrainConfig(
        data_root=shared_data,
        out=out,
        caps=caps,
        image_fraction=0.0,
        seed=5,
        harm_tuned_layers=1,
        max_epochs=8,
    )
    model = train(config, analyzer=ImageAnalyzer(nudity=no_nudity))
    assert harm_path(out).is_file() and model.harm is not None
    assert len(model.metadata["validation"]["harm_reader"]["validation_loss"]) == 1
    assert "top 1 layers tuned as the harm reader" in model.metadata["model"]
    # The test metrics were computed from the training caches, with the reader's logits put in
    # them; a moderator on the saved files computes every vector anew and must agree.
    loaded = ModeratorModel.load(out)
    test = [e for e in load_examples(shared_data, config.plan()) if e.split == "test"]
    served = evaluate_examples(
        DialogueModerator(loaded, images=ImageAnalyzer(nudity=no_nudity)), test
    )
    measured = model.metadata["test"]["methods"]["moderator"]
    assert served["methods"]["moderator"]["auroc"] == pytest.approx(measured["auroc"], abs=0.01)
    assert measured["auroc"] > 0.6


def test_natural_dialogues_are_split_by_group_and_label_only_their_whole(
    shared_data: Path,
) -> None:
    plan = SeedPlan(caps={"hh-rlhf": 300, "mtbench101": 100})
    examples = natural_examples(shared_data, plan)
    assert Counter(e.source for e in examples) == {"hh-rlhf": 300, "mtbench101": 100}
    for example in examples:
        labels = example.labels()
        assert len(labels) == example.turns
        if example.harmful:
            # where the intent surfaces is unknown: only the whole dialogue is labelled
            assert labels[-1] is True and all(y is None for y in labels[:-1])
        else:
            assert labels == [False] * example.turns
    groups: dict[str, set[str]] = {}
    for example in examples:
        groups.setdefault(example.group, set()).add(example.split)
    assert all(len(splits) == 1 for splits in groups.values())
    assert {e.split for e in examples} == set(SPLITS)


def test_take_renumbers_rows_to_the_kept_examples() -> None:
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    rows = Rows(
        x,
        np.array([0, 1, np.nan, 1, 0, 0], dtype=np.float32),
        np.full(6, -1, dtype=np.int64),
        np.zeros(6, dtype=np.int64),
        np.array([0, 0, 1, 1, 1, 2], dtype=np.int64),
        np.array([(f"turn {i}", f"window {i}") for i in range(6)] + [()], dtype=object)[:6],
    )
    kept = take(rows, [2, 0])
    assert kept.example.tolist() == [0, 1, 1]  # example 2 first, then example 0's two rows
    assert kept.x[:, 0].tolist() == [10.0, 0.0, 2.0]
    assert kept.harm[1:].tolist() == [0.0, 1.0]
    assert [t[0] for t in kept.texts] == ["turn 5", "turn 0", "turn 1"]  # texts travel along


def test_threshold_keeps_every_benign_source_under_the_budget() -> None:
    rng = np.random.default_rng(0)
    # a pooled 5 % threshold would hide the source whose benign scores run high
    quiet, loud = rng.uniform(0, 0.5, 400), rng.uniform(0.3, 0.9, 100)
    final = np.concatenate([quiet, loud, rng.uniform(0.5, 1.0, 200)])
    harmful = np.array([False] * 500 + [True] * 200)
    sources = ["quiet"] * 400 + ["loud"] * 100 + ["attacks"] * 200
    per_source = source_thresholds(final, harmful, sources, 0.05)
    assert set(per_source) == {"quiet", "loud"}
    threshold = max(per_source.values())
    assert np.mean(loud >= threshold) <= 0.05 and np.mean(quiet >= threshold) <= 0.05
    pooled = float(np.quantile(final[~harmful], 0.95))
    assert np.mean(loud >= pooled) > 0.05
    # the look-alike pairs written here are trained on but never set the threshold
    with_pairs = source_thresholds(
        np.concatenate([final, [0.99] * 20]),
        np.concatenate([harmful, [False] * 20]),
        [*sources, *[CONTRAST_SOURCE] * 20],
        0.05,
    )
    assert with_pairs == per_source
