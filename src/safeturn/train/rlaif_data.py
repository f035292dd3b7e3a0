"""RLAIF's data: the prompts a round answers, and the preference pairs among their replies.

A prompt is a sample's dialogue up to its last user message, with the sample's kept risks
(`synth.risks`) for the judge. `build_pairs` turns one prompt's scored replies into DPO pairs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, NamedTuple

from safeturn.errors import ImageError, RlaifError, SchemaError
from safeturn.schema import Dialogue, Sample, read_jsonl
from safeturn.synth.risks import Risk, risks_by_sample

Pairing = Literal["best-worst", "all"]


def file_sha256(path: Path | None) -> str | None:
    """The sha256 of a file's bytes, or None for no file (or a missing one)."""
    if path is None or not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class PromptItem(NamedTuple):
    """One training or evaluation prompt."""

    sample: Sample
    prompt: Dialogue
    """The dialogue up to and including its last user message."""
    risks: tuple[Risk, ...]


class Pair(NamedTuple):
    """A preference between two of one prompt's replies (indices into its k replies)."""

    chosen: int
    rejected: int


def prompt_dialogue(sample: Sample) -> Dialogue:
    """The dialogue up to its last user message: what the policy answers.

    Raises:
        RlaifError: The sample has no user message.
    """
    messages = sample.dialogue.messages
    last = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    if last < 0:
        raise RlaifError(f"sample {sample.id!r} has no user message to answer")
    return Dialogue(messages=messages[: last + 1])


def load_prompts(
    path: Path, risks: Path | None = None, *, require_risks: bool = False
) -> list[PromptItem]:
    """Read samples and attach each one's kept risks.

    Raises:
        RlaifError: The file is missing, empty or unreadable, a sample has no user message, or
            (with `require_risks`) harmful samples have no risk record; the message names them.
    """
    if not path.is_file():
        raise RlaifError(f"prompt data {path} does not exist")
    try:
        samples = list(read_jsonl(path))
        records = risks_by_sample(risks) if risks is not None else {}
    except (SchemaError, ImageError) as exc:
        raise RlaifError(str(exc)) from exc
    if not samples:
        raise RlaifError(f"{path} holds no samples; RLAIF needs prompts to sample from")
    if require_risks:
        missing = [s.id for s in samples if s.harmful is not False and s.id not in records]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise RlaifError(
                f"{path}: no risk record in {risks} for sample(s) {shown}{more}; run "
                "`safeturn synth mrd` on them or set require_risks: false"
            )
    items = []
    for sample in samples:
        record = records.get(sample.id)
        kept = tuple(record.kept()) if record is not None else ()
        try:
            items.append(PromptItem(sample, prompt_dialogue(sample), kept))
        except RlaifError as exc:
            raise RlaifError(f"{path}: {exc}") from exc
    return items


def build_pairs(
    scores: Sequence[float | None],
    texts: Sequence[str],
    *,
    margin: float,
    pairing: Pairing = "best-worst",
) -> list[Pair]:
    """Preference pairs among one prompt's replies.

    Unscored replies (judge failures, `None`) take no part. Two replies make a pair only when
    their scores differ by more than zero and by at least `margin`, and their texts differ:
    identical texts teach DPO nothing. With `best-worst`, the first highest-scored reply is
    chosen over the first lowest-scored one; with `all`, every qualifying pair is used
    (higher score chosen), in index order.
    """
    scored = [(i, s) for i, s in enumerate(scores) if s is not None]

    def qualifies(high: tuple[int, float], low: tuple[int, float]) -> bool:
        gap = high[1] - low[1]
        return gap > 0 and gap >= margin and texts[high[0]].strip() != texts[low[0]].strip()

    if pairing == "best-worst":
        if len(scored) < 2:
            return []
        best = max(scored, key=lambda x: x[1])
        worst = min(scored, key=lambda x: x[1])
        return [Pair(best[0], worst[0])] if qualifies(best, worst) else []
    pairs = []
    for a in range(len(scored)):
        for b in range(a + 1, len(scored)):
            high, low = sorted((scored[a], scored[b]), key=lambda x: -x[1])
            if qualifies(high, low):
                pairs.append(Pair(high[0], low[0]))
    return pairs


def names_of(ids: Sequence[str], shown: int = 5) -> str:
    """`'a', 'b' and 3 more`: sample ids for a message."""
    text = ", ".join(repr(i) for i in ids[:shown])
    return text + (f" and {len(ids) - shown} more" if len(ids) > shown else "")
