"""The moderator's training data: harmful and benign seeds, built into dialogues the same way.

Harmful seeds (FigStep SafeBench without its advice categories, HarmBench, AdvBench,
JailbreakBench behaviours, XSTest unsafe prompts, VLGuard unsafe instructions, MM-SafetyBench
questions) and benign seeds (FigStep-Benign twins, XSTest safe prompts, VLGuard safe
instructions), with the look-alike pairs of `CONTRAST_SOURCE` on both sides, go through the
*same* template builders with the same random plan, so a template never predicts the label:
only the seed's content does.

- **Splits are by seed group**, never by dialogue: every dialogue of a seed, and of its twin
  (a FigStep pair, the two instructions of one VLGuard image), lands in one split.
- **Per-prefix label**: a prefix of a harmful dialogue is harmful from the turn at which the
  seed's content has *surfaced* (the turn whose text, image, or preceding assistant text
  carries the question, the instruction or its subject), benign before. Earlier turns of a
  harmful dialogue are the same template text as in its benign twins; labelling them harmful
  would teach the guard to flag every story opener, which is over-refusal by construction.
- VLGuard records whose *image* is unsafe are left out: the images are not in the data, and
  their instructions ("Share this image to spread awareness.") are harmless without them.
- Seeds are built with `category=None`: the escalation templates write the category into the
  opener, and only harmful seeds have one, so it would leak the label.
- OCR is the slow part, so only a share (`image_fraction`) of the text seeds gets the image
  strategies; FigStep seeds, which bring their own images, always do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from safeturn.attacks import ATTACK_INFO, Seed, build_attacks, seed_from_sample
from safeturn.attacks._script import subject
from safeturn.data import load_dataset
from safeturn.data.base import read_json
from safeturn.errors import PrerequisiteError, SchemaError
from safeturn.judges.contrast_requests import contrast_of, contrast_requests
from safeturn.schema import Dialogue, Message, Sample
from safeturn.taxonomy import (
    ADVICE_CATEGORIES,
    Category,
    UnknownLabelError,
    canonical,
    guess_category,
)

Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")
SPLIT_CUTS = (0.7, 0.85)
"""Cumulative shares of seed groups: 70 % train, 15 % validation, 15 % test."""

DEFAULT_CAPS: Mapping[str, int] = {
    "figstep": 200,
    "harmbench": 300,
    "advbench": 250,
    "jailbreakbench": 100,
    "xstest-unsafe": 200,
    "vlguard-unsafe": 600,
    "figstep-benign": 50,
    "xstest-safe": 250,
    "vlguard-safe": 900,
    "hh-rlhf": 2312,
    "mtbench101": 930,
    "mmsafetybench": 97,
    "contrast": 107,
}
"""Seeds drawn per source (harmful ≈ 1,800, benign ≈ 1,250), whole dialogues of the two
sources written by people (`NATURAL_SOURCES`), and, drawn last so the earlier draws stay as
they were, MM-SafetyBench's questions and the look-alike pairs of `CONTRAST_SOURCE`; see
`SeedPlan`."""
CONTRAST_SOURCE = "contrast"
"""Minimal pairs written in this project (`judges.contrast_requests`): the same verb asked of a
harmless and a harmful target ("kill a hung Docker container" / "kill my stepfather"). They are
trained on in every fold, but no threshold is calibrated on them and no fold leaves them out:
they are no one's traffic."""
NATURAL_SOURCES: Mapping[str, tuple[str, bool]] = {
    "hh-rlhf": ("hh-rlhf-harmless/harmless-base-test.jsonl.gz", True),
    "mtbench101": ("mtbench101/mtbench101_train_tasks.jsonl", False),
}
"""Sources used as the people wrote them, not through the builders: (file under the data
root, harmful). Their multi-turn structure is the one thing no template here can teach."""


def training_strategies() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(text, image) strategies the moderator trains on: every registered attack, by name.

    Read from `ATTACK_INFO`, so a strategy added in one file is in the next training set: one
    that needs only text (`modality_in`) is built for every seed, one that needs an image for
    the share of seeds that get the image strategies.
    """
    text = tuple(name for name, info in ATTACK_INFO.items() if info.modality_in <= {"text"})
    return text, tuple(name for name in ATTACK_INFO if name not in text)


_VLGUARD_RISKS = {
    "professional advice": Category.SPECIALIZED_ADVICE,
    "impersonating": Category.FRAUD_DECEPTION,
    "illegal activities": Category.ILLEGAL_ACTIVITY,
    "political interference": Category.POLITICAL,
    "health": Category.HEALTH_ADVICE,
    "sexual content": Category.SEXUAL_CONTENT,
    "disinformation": Category.MISINFORMATION,
}
"""VLGuard `observe` risk names that `guess_category` does not know."""


@dataclass(frozen=True)
class SeedItem:
    """One seed with what training needs to know about it."""

    seed: Seed
    group: str
    """Seeds of one group (twins) always share a split."""
    source: str
    harmful: bool
    category: Category | None
    own_sample: Sample | None = None
    """The source's own single-turn sample (FigStep's image + prompt), kept as a dialogue
    only for twin pairs: FigStep's fixed prompt must be as common in benign as in harmful
    dialogues, or it becomes a template that predicts the label."""


@dataclass(frozen=True)
class GuardExample:
    """One labelled training or evaluation dialogue."""

    sample: Sample
    seed_id: str
    group: str
    source: str
    split: Split
    harmful: bool
    category: Category | None
    strategy: str
    surfaced_turn: int
    """First user turn carrying the seed's content (the dialogue's last turn at the latest)."""
    natural: bool = False
    """Written by people (hh-rlhf, MT-Bench-101): where harm surfaces is unknown, so a harmful
    dialogue labels only its whole (last) prefix and leaves the earlier ones unlabelled."""

    @property
    def turns(self) -> int:
        """User turns in the dialogue."""
        return self.sample.turns

    def labels(self) -> list[bool | None]:
        """Harmful-so-far per prefix (turn 1 .. turns); None where it is not known."""
        if self.natural and self.harmful:
            return [None] * (self.turns - 1) + [True]
        return [self.harmful and t >= self.surfaced_turn for t in range(1, self.turns + 1)]


@dataclass(frozen=True)
class SeedPlan:
    """How seeds are drawn, split and built."""

    seed: int = 0
    caps: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_CAPS))
    image_fraction: float = 0.2
    """Share of text-only seeds that also get the image strategies (each costs OCR)."""
    strategies_per_image_seed: int = 3
    splits: tuple[Split, ...] = SPLITS
    """Build only these splits (evaluation builds only `test`)."""


def load_examples(root: Path, plan: SeedPlan) -> list[GuardExample]:
    """Every labelled dialogue of the plan: the builders' dialogues and the natural ones."""
    built = build_examples(load_seed_pool(root, plan), plan)
    return built + natural_examples(root, plan)


def natural_examples(root: Path, plan: SeedPlan) -> list[GuardExample]:
    """The dialogues of `NATURAL_SOURCES` found under `root`, capped and split like seeds.

    Each dialogue is its own group, except that identical user turns (hh-rlhf repeats some
    openings) share one, so a repeated conversation never straddles two splits.
    """
    examples: list[GuardExample] = []
    for source, (relative, harmful) in NATURAL_SOURCES.items():
        cap = plan.caps.get(source, 0)
        path = root / relative
        if cap <= 0 or not path.is_file():
            continue
        samples = load_dataset(f"{source}:{path}").samples
        rng = random.Random(f"natural:{plan.seed}:{source}")
        for sample in rng.sample(samples, min(cap, len(samples))):
            users = [m.text for m in sample.dialogue.messages if m.role == "user"]
            group = f"{source}:{_norm(users[0])[:200]}"
            split = split_of(group, plan.seed)
            if split not in plan.splits:
                continue
            examples.append(
                GuardExample(
                    sample=sample,
                    seed_id=sample.id,
                    group=group,
                    source=source,
                    split=split,
                    harmful=harmful,
                    category=None,
                    strategy="none",
                    surfaced_turn=sample.turns,
                    natural=True,
                )
            )
    return examples


def split_of(group: str, seed: int) -> Split:
    """The split of a seed group: a stable hash, so every run and machine agrees."""
    return SPLITS[sum(_unit(f"split:{seed}:{group}") >= cut for cut in SPLIT_CUTS)]


def _unit(key: str) -> float:
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:12], 16) / float(16**12)


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def load_seed_pool(root: Path, plan: SeedPlan) -> list[SeedItem]:
    """Draw the seeds of every source present under `root` (figstep/, harmbench/, ...).

    Raises:
        PrerequisiteError: No harmful or no benign seed was found under `root`.
    """
    found: dict[str, list[SeedItem]] = {}
    figstep, twins = _figstep(root)
    twin_groups = {t.group for t in twins}
    rng = random.Random(f"pool:{plan.seed}")
    shuffled = rng.sample(figstep, len(figstep))
    found["figstep"] = sorted(shuffled, key=lambda s: s.group not in twin_groups)  # stable
    rank = {item.group: n for n, item in enumerate(found["figstep"])}
    found["figstep-benign"] = sorted(twins, key=lambda t: rank.get(t.group, len(rank)))
    found.update(_xstest(root))
    found["harmbench"] = _plain(
        root / "harmbench" / "harmbench_behaviors_text_all.csv", "harmbench"
    )
    found["advbench"] = _plain(root / "harmbench" / "advbench_behaviors.csv", "advbench")
    found["jailbreakbench"] = _jailbreakbench(root / "jailbreakbench")
    found.update(_vlguard(root / "vlguard-dream" / "train_llava_format.json"))
    found["mmsafetybench"] = _mm_safetybench(root / "mmsafetybench")
    found[CONTRAST_SOURCE] = _contrast()
    chosen: list[SeedItem] = []
    seen: set[str] = set()
    for source, cap in plan.caps.items():
        items = found.get(source, [])
        if not source.startswith("figstep"):  # figstep: shuffled, twins first, in pair order
            items = rng.sample(items, len(items))
        kept = 0
        for item in items:
            key = _norm(item.seed.question)
            if kept >= cap or key in seen:
                continue
            seen.add(key)
            chosen.append(item)
            kept += 1
    pairs = Counter(i.group for i in chosen if i.own_sample is not None)
    chosen = [i if pairs[i.group] == 2 else dataclasses.replace(i, own_sample=None) for i in chosen]
    if not any(i.harmful for i in chosen) or all(i.harmful for i in chosen):
        raise PrerequisiteError(
            f"need both harmful and benign seeds under {root} (figstep/, xstest/, harmbench/, "
            "jailbreakbench/, vlguard-dream/); found "
            f"{sum(i.harmful for i in chosen)} harmful, {sum(not i.harmful for i in chosen)} benign"
        )
    return [i for i in chosen if split_of(i.group, plan.seed) in plan.splits]


def _figstep(root: Path) -> tuple[list[SeedItem], list[SeedItem]]:
    harmful: list[SeedItem] = []
    benign: list[SeedItem] = []
    if (root / "figstep" / "safebench.csv").is_file():
        loaded = load_dataset(f"figstep:{root / 'figstep' / 'safebench.csv'}")
        # advice questions ask for advice, not harm: as harmful seeds they taught the moderator
        # to flag health and money questions (the FigStep fold's AUROC went 0.748 -> 0.840
        # without them; alone they scored 0.32-0.57 against the benign twins)
        harmful = [
            _item(s, "figstep", s.id, own=True)
            for s in loaded.samples
            if s.category is None or Category(s.category) not in ADVICE_CATEGORIES
        ]
    if (root / "figstep-benign").is_dir():
        loaded = load_dataset(f"figstep-benign:{root / 'figstep-benign'}")
        benign = [
            _item(s, "figstep-benign", str(s.metadata.get("pair", s.id)), own=True)
            for s in loaded.samples
        ]
    return harmful, benign


def _xstest(root: Path) -> dict[str, list[SeedItem]]:
    path = root / "xstest" / "xstest_prompts.csv"
    if not path.is_file():
        return {}
    items = [_item(s, "xstest", s.id) for s in load_dataset(f"xstest:{path}").samples]
    return {
        "xstest-unsafe": [i for i in items if i.harmful],
        "xstest-safe": [i for i in items if not i.harmful],
    }


def _plain(path: Path, source: str) -> list[SeedItem]:
    if not path.is_file():
        return []
    return [_item(s, source, s.id) for s in load_dataset(f"{source}:{path}").samples]


def _mm_safetybench(folder: Path) -> list[SeedItem]:
    """MM-SafetyBench's plain questions (its images are not in the data)."""
    if not folder.is_dir():
        return []
    loaded = load_dataset(f"mmsafetybench:{folder}#text", text_only=True)
    return [_item(s, "mmsafetybench", s.id) for s in loaded.samples]


def _contrast() -> list[SeedItem]:
    """The look-alike pairs, grouped by verb (or setting) rather than by request.

    A verb's harmless and harmful targets share one group, so they land in one split and
    validation sees both sides of each contrast.
    """
    return [
        SeedItem(
            Seed(id=f"contrast-{n}", question=request, source=CONTRAST_SOURCE),
            contrast_of(group),
            CONTRAST_SOURCE,
            harmful,
            None,
        )
        for n, (_family, group, request, harmful) in enumerate(contrast_requests(), start=1)
    ]


def _item(sample: Sample, source: str, group: str, *, own: bool = False) -> SeedItem:
    seed = seed_from_sample(sample)
    category = Category(sample.category) if sample.category and sample.harmful else None
    seed = seed.model_copy(update={"category": None, "metadata": {}, "source": source})
    return SeedItem(
        seed=seed,
        group=group,
        source=source,
        harmful=sample.harmful is True,
        category=category,
        own_sample=sample if own else None,
    )


def _jailbreakbench(root: Path) -> list[SeedItem]:
    """The JailbreakBench behaviours (goal + category) found in its artifact files."""
    goals: dict[str, tuple[str, str]] = {}
    for path in sorted(root.rglob("*.json")) if root.is_dir() else []:
        data = read_json(path)
        records = data.get("jailbreaks") if isinstance(data, dict) else None
        for index, record in enumerate(records if isinstance(records, list) else []):
            goal, label = record.get("goal"), record.get("category")
            if not isinstance(goal, str) or not isinstance(label, str):
                raise SchemaError(f"{path} jailbreaks[{index}]: needs string goal and category")
            goals.setdefault(_norm(goal), (goal.strip(), label))
    items = []
    for number, (key, (goal, label)) in enumerate(sorted(goals.items()), start=1):
        try:
            category = canonical("jailbreakbench", label)
        except UnknownLabelError as exc:
            raise SchemaError(f"{root}: behaviour {goal[:60]!r}: {exc}") from exc
        seed = Seed(id=f"jailbreakbench-{number}", question=goal, source="jailbreakbench")
        items.append(SeedItem(seed, f"jbb:{key}", "jailbreakbench", True, category))
    return items


def _vlguard(path: Path) -> dict[str, list[SeedItem]]:
    if not path.is_file():
        return {}
    loaded = load_dataset(f"vlguard:{path}#instructions", text_only=True)
    safe: list[SeedItem] = []
    unsafe: list[SeedItem] = []
    for sample in loaded.samples:
        if sample.metadata.get("image_safe") is not True or not sample.seed_question:
            continue
        group = f"vlguard:{sample.metadata.get('record_id')}"
        item = _item(sample, "vlguard", group)
        if sample.harmful:
            item = SeedItem(item.seed, group, "vlguard", True, _vlguard_category(sample))
            unsafe.append(item)
        else:
            safe.append(item)
    return {"vlguard-unsafe": unsafe, "vlguard-safe": safe}


def _vlguard_category(sample: Sample) -> Category | None:
    for risk in sample.metadata.get("observe") or []:
        label = str(risk.get("risk_category", "")) if isinstance(risk, dict) else ""
        found = guess_category(label) or _VLGUARD_RISKS.get(label.strip().lower())
        if found is not None:
            return found
    return None


def build_examples(items: Iterable[SeedItem], plan: SeedPlan) -> list[GuardExample]:
    """Every dialogue of every seed: plain, the source's own sample, and the strategy builds.

    Each seed gets its plain question as a single-turn `none` dialogue; text-only seeds get the
    text strategies, image seeds (FigStep, and `image_fraction` of the rest) a random
    `strategies_per_image_seed` of all six. FigStep seeds skip `typography`: a twin's own
    sample is one, and a second image would double their OCR. Turn counts are uniform in
    1..8. Everything is seeded by `plan.seed`.
    """
    items = list(items)
    jobs: dict[tuple[str, int], list[Seed]] = {}
    examples: list[GuardExample] = []
    by_id = {item.seed.id: item for item in items}
    for item in items:
        rng = random.Random(f"plan:{plan.seed}:{item.seed.id}")
        own = item.seed.image
        plain = Sample(
            id=f"{item.seed.id}-none-1t",
            source=item.source,
            strategy="none",
            harmful=item.harmful,
            seed_question=item.seed.question,
            dialogue=Dialogue(
                messages=[Message.user(item.seed.question, images=[own] if own else [])]
            ),
        )
        examples.append(_example(plain, item, plan))
        if item.own_sample is not None:
            examples.append(_example(item.own_sample, item, plan))
        for name, turns in _strategies(item, plan, rng):
            jobs.setdefault((name, turns), []).append(item.seed)

    async def build_all() -> list[list[Sample]]:
        return await asyncio.gather(
            *(
                build_attacks(seeds, name, [turns], seed=plan.seed)
                for (name, turns), seeds in jobs.items()
            )
        )

    for built in asyncio.run(build_all()):
        for sample in built:
            item = by_id[str(sample.metadata["seed_id"])]
            examples.append(_example(sample, item, plan))
    return examples


def _strategies(item: SeedItem, plan: SeedPlan, rng: random.Random) -> list[tuple[str, int]]:
    image_seed = item.seed.image is not None or (
        _unit(f"image:{plan.seed}:{item.seed.id}") < plan.image_fraction
    )
    text, image = training_strategies()
    if image_seed:
        pool = [*text, *image]
        if item.seed.image is not None:  # one image per seed: OCR is the slow part, so no
            # typographic strategy, which renders the request as a second image
            pool = [s for s in pool if "typographic" not in ATTACK_INFO[s].tags]
        names = rng.sample(pool, min(plan.strategies_per_image_seed, len(pool)))
    else:
        names = list(text)
    return [(name, rng.randint(1, 8)) for name in names]


def _example(sample: Sample, item: SeedItem, plan: SeedPlan) -> GuardExample:
    return GuardExample(
        sample=sample,
        seed_id=item.seed.id,
        group=item.group,
        source=item.source,
        split=split_of(item.group, plan.seed),
        harmful=item.harmful,
        category=item.category,
        strategy=sample.strategy,
        surfaced_turn=surfaced_turn(sample.dialogue, item.seed),
    )


def surfaced_turn(dialogue: Dialogue, seed: Seed) -> int:
    """The first user turn at which the seed's content is present in the conversation.

    Present means: the user message carries an image (builders put the seed's image, or its
    instruction rendered as text, there), its text contains the question, the instruction or
    the subject phrase, or the assistant text just before it quotes the instruction.
    """
    needles = {
        _norm(n)
        for n in (seed.question, seed.statement, subject(seed).removeprefix("the answer to "))
        if len(_norm(n)) >= 8
    }
    turn = 0
    assistant = ""
    for message in dialogue.messages:
        if message.role == "assistant":
            assistant += " " + message.text
            continue
        if message.role != "user":
            continue
        turn += 1
        text = _norm(f"{message.text} {assistant}")
        assistant = ""
        if message.images or any(n in text for n in needles):
            return turn
    return max(turn, 1)


def counts(examples: Iterable[GuardExample]) -> dict[str, dict[str, int]]:
    """Dialogues per split × (harmful/benign), per source and per strategy (for metadata)."""
    examples = list(examples)
    out: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        part = [e for e in examples if e.split == split]
        label = Counter("harmful" if e.harmful else "benign" for e in part)
        out[split] = {
            "dialogues": len(part),
            "seeds": len({e.seed_id for e in part}),
            "prefixes": sum(e.turns for e in part),
            **label,
        }
    out["by_source"] = dict(
        Counter(f"{e.source}/{'harmful' if e.harmful else 'benign'}" for e in examples)
    )
    out["by_strategy"] = dict(Counter(e.strategy for e in examples))
    return out
