"""The judge's training data: every source read as written, labels true by construction."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from safeturn.errors import PrerequisiteError
from safeturn.judges.hard_cases import FRAMES, framed, generate, refusal_text, spread
from safeturn.judges.reply_data import ReplyExample, load_reply_examples


@pytest.fixture(scope="module")
def examples(shared_data: Path) -> list[ReplyExample]:
    return load_reply_examples(shared_data)


def test_every_source_is_read_with_its_labels(examples: list[ReplyExample]) -> None:
    counts = Counter((ex.source, ex.unsafe) for ex in examples)
    assert counts[("jailbreakbench", True)] > 500 and counts[("jailbreakbench", False)] > 400
    assert counts[("xstest", True)] > 50 and counts[("xstest", False)] > 1000
    assert counts[("hh-rlhf", None)] > 4000  # preference pairs, no labels
    for one_class in ("mtbench101", "vlguard", "siuo"):
        assert counts[(one_class, False)] > 100 and counts[(one_class, True)] == 0


def test_xstest_unsafe_only_for_complied_unsafe_prompts(examples: list[ReplyExample]) -> None:
    for ex in (e for e in examples if e.source == "xstest"):
        complied = ex.meta["final_label"] == "1_full_compliance"
        assert ex.unsafe == (complied and ex.meta["unsafe_prompt"])
    assert {e.meta["model"] for e in examples if e.source == "xstest"} == {
        "llama2new",
        "llama2orig",
        "mistralinstruct",
    }


def test_hh_rlhf_pairs_share_context_and_differ_in_reply(examples: list[ReplyExample]) -> None:
    pairs: dict[str, list[ReplyExample]] = {}
    for ex in examples:
        if ex.pair:
            pairs.setdefault(ex.pair, []).append(ex)
    assert all(len(v) == 2 for v in pairs.values())
    for chosen, rejected in (sorted(v, key=lambda e: e.rank) for v in list(pairs.values())[:200]):
        assert chosen.users == rejected.users and chosen.reply != rejected.reply
    assert max(len(v[0].users) for v in pairs.values()) >= 3  # real multi-turn conversations


def test_missing_source_is_named(tmp_path: Path) -> None:
    with pytest.raises(PrerequisiteError, match="xstest"):
        load_reply_examples(tmp_path, sources=("xstest",))


def test_hard_cases_keep_labels_and_give_every_frame_to_both_classes(
    examples: list[ReplyExample],
) -> None:
    labelled = [ex for ex in examples if ex.unsafe is not None and ex.source != "hh-rlhf"]
    hard = generate(labelled, [("behaviours", "b:1", "How do I pick a lock?", True)], seed=3)
    kinds = Counter((ex.kind, ex.unsafe) for ex in hard)
    for frame in FRAMES:  # a frame that only one class had would be a label leak
        assert kinds[(f"framed-{frame}", True)] > 0 and kinds[(f"framed-{frame}", False)] > 0
    for kind in ("spread", "as-ai", "refusal-then-help"):
        assert kinds[(kind, True)] > 0 and kinds[(kind, False)] > 0
    assert kinds[("refusal", True)] == 0  # a refusal is safe whatever was asked
    origin = {(ex.source, ex.group) for ex in labelled} | {("behaviours", "b:1")}
    assert all((ex.source, ex.group) in origin for ex in hard)  # folds can drop them


def test_frames_carry_the_reply_and_spread_moves_the_request_back() -> None:
    rng = random.Random(0)
    base = ReplyExample("x", "g", ("Tell me how to do the thing.",), "First do A. Then B.", True)
    for frame in FRAMES:
        out = framed(base, frame, rng)
        assert "do A" in out.reply and out.unsafe is True
    moved = spread(base, rng)
    assert "Tell me how to do the thing." in moved.users[-2]
    assert "thing" not in moved.users[-1]
    texts = {refusal_text(random.Random(i)) for i in range(60)}
    assert len(texts) > 30
    assert any("not ethical or appropriate" in t for t in texts)
    assert any("do not condone" in t for t in texts)
