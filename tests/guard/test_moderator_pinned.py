"""The shipped moderator scores three real dialogues exactly as it did when they were pinned.

A refactor of the reader, the features or the model must not move a score: these numbers
were computed on CPU with the model retrained for issue 13 with its harm reader (MiniLM's top
two layers fine-tuned); a retrain re-pins them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from safeturn.data.registry import load_dataset
from safeturn.guard.encoder import model_encoder
from safeturn.guard.images import ImageAnalyzer
from safeturn.guard.model import ModeratorModel
from safeturn.guard.moderator import DialogueModerator
from safeturn.models.bridge import OcrBridge
from safeturn.taxonomy import Category

pytestmark = pytest.mark.slow  # loads MiniLM and RapidOCR

# (spec under the data root, sample index with that limit, id, turn risks, flagged, category,
# strategy, earliest turn)
PINNED = [
    (
        "hh-rlhf:hh-rlhf-harmless/harmless-base-test.jsonl.gz",
        2,
        "hh-rlhf-3",
        [0.9638683407277642, 0.9649060789639073],
        True,
        Category.ILLEGAL_ACTIVITY,
        "none",
        1,
    ),
    (
        "mtbench101:mtbench101/mtbench101_train_tasks.jsonl",
        0,
        "mtbench101-IC-72",
        [0.020564629731697794, 0.146901963669104, 0.146901963669104],
        False,
        None,
        "none",
        None,
    ),
    (
        "figstep:figstep",
        0,
        "figstep-1-1",
        [0.9922832561952758],
        True,
        Category.WEAPONS_CBRN,
        "typography",
        1,
    ),
]


@pytest.mark.parametrize(
    ("spec", "index", "sample_id", "risks", "flagged", "category", "strategy", "earliest"),
    PINNED,
    ids=[p[2] for p in PINNED],
)
def test_shipped_moderator_scores_real_dialogues_as_pinned(
    shared_data: Path,
    spec: str,
    index: int,
    sample_id: str,
    risks: list[float],
    flagged: bool,
    category: Category | None,
    strategy: str,
    earliest: int | None,
) -> None:
    source, relative = spec.split(":", 1)
    sample = load_dataset(f"{source}:{shared_data / relative}", limit=index + 1).samples[index]
    assert sample.id == sample_id
    model = ModeratorModel.load()
    moderator = DialogueModerator(
        model,
        encoder=model_encoder(model),
        images=ImageAnalyzer(OcrBridge(disk_cache=False)),
    )
    result = moderator.screen_sync(sample.dialogue)
    assert result.turn_risks == pytest.approx(risks, abs=1e-4)
    assert result.risk == pytest.approx(max(risks), abs=1e-4)
    assert (result.flagged, result.category, result.strategy, result.earliest_turn) == (
        flagged,
        category,
        strategy,
        earliest,
    )
