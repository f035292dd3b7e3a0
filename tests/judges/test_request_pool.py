"""The judge's bare-request pool: real harmful requests phrased as people ask, look-alike pairs."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import pytest

from safeturn.judges.contrast_requests import contrast_requests
from safeturn.judges.reply_data import load_reply_examples
from safeturn.judges.request_pool import HH_RLHF_REQUESTS, behaviour_requests


@pytest.fixture(scope="module")
def pool(shared_data: Path) -> list[tuple[str, str, str, bool]]:
    return behaviour_requests(shared_data)


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def test_every_family_of_requests_is_read_with_its_harm(
    pool: list[tuple[str, str, str, bool]],
) -> None:
    counts = Counter((family, harmful) for family, _, _, harmful in pool)
    assert counts[("behaviours", True)] == 920  # HarmBench 400 + AdvBench 520
    assert counts[("figstep", True)] == 350  # SafeBench categories 1–7, 50 each
    assert counts[("figstep", False)] == 50  # FigStep-Benign twins
    assert counts[("mmsafetybench", True)] == 97
    assert counts[("hh-rlhf", True)] == HH_RLHF_REQUESTS
    assert counts[("xstest", False)] == 250 and counts[("xstest", True)] == 0
    assert counts[("contrast", True)] > 40 and counts[("contrast", False)] > 40
    new = [group for family, group, _, _ in pool if family != "vlguard"]  # VLGuard repeats ids
    assert len(set(new)) == len(new)  # one request per split unit


def test_safebench_advice_categories_are_not_called_harmful(
    pool: list[tuple[str, str, str, bool]], shared_data: Path
) -> None:
    with (shared_data / "figstep/safebench.csv").open(encoding="utf-8", newline="") as fh:
        advice = {
            row["question"].strip()
            for row in csv.DictReader(fh)
            if row["category_name"] in {"Legal Opinion", "Financial Advice", "Health Consultation"}
        }
    assert len(advice) == 150
    assert not advice & {text for _, _, text, _ in pool}


def test_hh_rlhf_requests_split_with_their_conversation(
    pool: list[tuple[str, str, str, bool]], shared_data: Path
) -> None:
    """A request shares its conversation's group, so a split never puts them on two sides."""
    openers = {group: text for family, group, text, _ in pool if family == "hh-rlhf"}
    pairs = load_reply_examples(shared_data, sources=("hh-rlhf",))
    matched = [ex for ex in pairs if ex.group in openers]
    assert len({ex.group for ex in matched}) > 500
    assert all(ex.users[0] == openers[ex.group] for ex in matched)
    assert all(len(text.split()) >= 4 for text in openers.values())


def test_contrast_pairs_share_verbs_and_repeat_no_xstest_prompt(shared_data: Path) -> None:
    requests = list(contrast_requests())
    by_verb: dict[str, set[bool]] = {}
    for _, group, _, harmful in requests:
        by_verb.setdefault(group.split(":")[1], set()).add(harmful)
    both = [verb for verb, classes in by_verb.items() if classes == {True, False}]
    assert len(both) >= 12  # most verbs are asked of a harmless and a harmful target
    with (shared_data / "xstest/xstest_prompts.csv").open(encoding="utf-8", newline="") as fh:
        xstest = {_key(row["prompt"]) for row in csv.DictReader(fh)}
    assert not {_key(text) for _, _, text, _ in requests} & xstest
