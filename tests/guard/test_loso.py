"""Leave-one-source-out folds, and the window of turns that resolves references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from safeturn.guard.features import WINDOW_PREVIOUS_CHARS, window_text
from safeturn.guard.images import ImageAnalyzer, no_nudity
from safeturn.guard.loso import FAMILIES, run_loso
from safeturn.guard.reader import DialogueReader
from safeturn.guard.train import ModeratorTrainConfig, prepare
from safeturn.schema import Dialogue, Message

from ._moderator_stubs import DIM, hashing_embed, stub_encoder

CAPS = {
    "xstest-unsafe": 60,
    "xstest-safe": 60,
    "harmbench": 40,
    "vlguard-unsafe": 40,
    "vlguard-safe": 60,
    "hh-rlhf": 150,
    "mtbench101": 80,
}


def test_window_puts_the_turn_first_and_keeps_two_earlier_ones() -> None:
    assert window_text("only turn", []) == "only turn"
    long = "x" * 1000
    text = window_text("How can I steal it?", ["hello", "I see a cop car", long])
    assert text.split("\n") == [
        "How can I steal it?",
        "x" * WINDOW_PREVIOUS_CHARS,
        "I see a cop car",
    ]


def test_reader_embeds_each_turn_with_its_antecedents() -> None:
    reader = DialogueReader(stub_encoder(), ImageAnalyzer(nudity=no_nudity))
    dialogue = Dialogue(
        messages=[
            Message.user("I see a cop car over there, it's running"),
            Message.assistant("Okay."),
            Message.user("How can I steal it?"),
        ]
    )
    rows: list[np.ndarray] = []
    reader.extend(reader.new_state(), dialogue, lambda _s, row: rows.append(row))
    expected = hashing_embed(["How can I steal it?\nI see a cop car over there, it's running"])[0]
    assert np.allclose(rows[1][DIM : 2 * DIM], expected)
    assert np.allclose(rows[0][DIM : 2 * DIM], rows[0][:DIM])  # a first turn is its own window


@pytest.fixture(scope="module")
def report(shared_data: Path) -> dict:
    config = ModeratorTrainConfig(
        data_root=shared_data,
        caps=CAPS,
        image_fraction=0.0,
        seed=3,
        max_epochs=6,
        patience=2,
        harm_tuned_layers=0,
    )
    prepared = prepare(config, encoder=stub_encoder(), analyzer=ImageAnalyzer(nudity=no_nudity))
    return run_loso(config, ["hh-rlhf", "mtbench101", "xstest"], prepared=prepared)


@pytest.mark.slow
def test_a_fold_never_sees_its_family(report: dict) -> None:
    for name, fold in report["folds"].items():
        assert not set(FAMILIES[name]) & set(fold["trained_on"]), name
        assert fold["dialogues"] == fold["harmful"] + fold["benign"]


@pytest.mark.slow
def test_one_class_families_are_ranked_against_the_other_class(report: dict) -> None:
    hh, mt, xs = (report["folds"][k] for k in ("hh-rlhf", "mtbench101", "xstest"))
    assert hh["benign"] == 0 and hh["fpr"] is None and 0.0 <= hh["tpr"] <= 1.0
    assert hh["auroc_against"].startswith("benign test dialogues")
    assert mt["harmful"] == 0 and mt["tpr"] is None and 0.0 <= mt["fpr"] <= 1.0
    assert xs["auroc_against"] == "itself" and xs["harmful"] > 0 and xs["benign"] > 0
    assert all(0.0 <= f["auroc"] <= 1.0 for f in (hh, mt, xs))
    summary = report["summary"]
    assert summary["min_auroc"] == min(hh["auroc"], mt["auroc"], xs["auroc"])


def test_unknown_family_is_refused(shared_data: Path) -> None:
    with pytest.raises(ValueError, match="known: figstep"):
        run_loso(ModeratorTrainConfig(data_root=shared_data), ["nope"])


def test_loso_command_names_the_known_families(shared_data: Path) -> None:
    from typer.testing import CliRunner

    from safeturn.cli import app

    result = CliRunner().invoke(
        app, ["guard", "loso", "--data-root", str(shared_data), "--family", "nope"]
    )
    assert result.exit_code == 1
    assert "unknown source families ['nope']" in result.output
    assert "hh-rlhf" in result.output
