"""Build many attack samples at once: seeds × strategies × turn counts.

`build_attacks` runs every builder concurrently (attacker calls bounded by one semaphore) and
returns samples in a fixed order: by seed, then strategy, then turn count. `load_seeds_csv`
reads FigStep-style CSV files; `localize_images` makes a JSONL file and its images portable.
"""

from __future__ import annotations

import asyncio
import csv
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from safeturn.attacks.base import (
    ATTACKER_PARAMS,
    STRATEGIES,
    AttackBuilder,
    AttackConfigError,
    BuildContext,
    ImageDirectory,
    ImageSink,
    Seed,
    check_turns,
    get_strategy,
    inline_image,
)
from safeturn.errors import SchemaError
from safeturn.models.base import ChatModel
from safeturn.schema import Dialogue, GenerateParams, ImagePart, Message, Sample

DEFAULT_TURNS = (1, 2, 4, 6, 8)
"""The SafeMT turn counts."""


def resolve_strategies(strategy: str | Iterable[str]) -> list[str]:
    """Strategy names from a name, `all`, comma-separated names or a list of those.

    Raises:
        AttackConfigError: For an unknown name (the message lists the known ones).
    """
    given = [strategy] if isinstance(strategy, str) else list(strategy)
    names: list[str] = []
    for item in given:
        for name in (part.strip() for part in item.split(",")):
            chosen = list(STRATEGIES) if name == "all" else [name] if name else []
            for one in chosen:
                get_strategy(one)  # raises a clear error for unknown names
                if one not in names:
                    names.append(one)
    if not names:
        raise AttackConfigError("no attack strategy given")
    return names


def resolve_turns(turns: int | str | Iterable[int]) -> list[int]:
    """Turn counts from an int, a comma-separated string ("1,2,4") or a list; each in 1..8."""
    if isinstance(turns, int):
        values = [turns]
    elif isinstance(turns, str):
        try:
            values = [int(part) for part in turns.split(",") if part.strip()]
        except ValueError as exc:
            raise AttackConfigError(f"turns must be comma-separated integers: {turns!r}") from exc
    else:
        values = list(turns)
    if not values:
        raise AttackConfigError("no turn count given")
    return sorted({check_turns(v) for v in values})


async def build_attacks(
    seeds: Sequence[Seed],
    strategy: str | Iterable[str],
    turns: int | str | Iterable[int],
    *,
    seed: int = 0,
    attacker: ChatModel | None = None,
    images_dir: Path | None = None,
    concurrency: int = 8,
    retries: int = 2,
    params: GenerateParams | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Sample]:
    """Build one sample per (seed, strategy, turn count).

    Args:
        seeds: The single-turn requests; their ids must be unique.
        strategy: A strategy name, `all`, or several names.
        turns: Turn counts (1..8), e.g. `[1, 2, 4, 6, 8]` or `"1,2,4"`.
        seed: The build seed; the same seed gives identical samples.
        attacker: A model that writes the dialogues; None for template mode.
        images_dir: Where rendered images are written as PNG files (samples reference them by
            absolute path); None keeps the bytes inside the samples.
        concurrency: Most attacker calls in flight at once.
        retries: Extra attacker attempts after a malformed or refusing reply.
        params: Attacker sampling options.
        options: Per-strategy builder options, e.g. `{"typography": {"font_size": 40}}`.

    Returns:
        The samples, ordered by seed, then strategy, then turn count.

    Raises:
        AttackConfigError: For an unknown strategy, a bad turn count or bad options, or a
            seed image that image-grounding cannot read.
        SchemaError: If two seeds share an id.
    """
    names = resolve_strategies(strategy)
    counts = resolve_turns(turns)
    builders = _builders(seeds, names, options or {})
    sink: ImageSink = ImageDirectory(images_dir) if images_dir is not None else inline_image
    ctx = BuildContext(
        seed=seed,
        attacker=attacker,
        images=sink,
        params=params or ATTACKER_PARAMS,
        retries=retries,
        gate=asyncio.Semaphore(max(1, concurrency)),
    )
    jobs = [(builders[name], one, n) for one in seeds for name in names for n in counts]
    return await _run_all(jobs, ctx)


def _builders(
    seeds: Sequence[Seed], names: list[str], options: Mapping[str, Mapping[str, Any]]
) -> dict[str, AttackBuilder]:
    """Each strategy's builder with its options, after checking seed ids and option keys."""
    duplicates = [i for i, n in Counter(s.id for s in seeds).items() if n > 1]
    if duplicates:
        raise SchemaError(f"seed ids must be unique; repeated: {', '.join(duplicates[:5])}")
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise AttackConfigError(f"options given for strategies not built: {', '.join(unknown)}")
    return {name: get_strategy(name, **options.get(name, {})) for name in names}


async def _run_all(
    jobs: Sequence[tuple[AttackBuilder, Seed, int]], ctx: BuildContext
) -> list[Sample]:
    """Run every (builder, seed, turns) job at once; results in job order."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(build(one, n, ctx)) for build, one, n in jobs]
    except ExceptionGroup as failures:
        # raise the first builder error itself (it names the seed), so that callers catching
        # SafeturnError print it cleanly instead of an exception group
        first: BaseException = failures
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return [task.result() for task in tasks]


def build_attacks_sync(
    seeds: Sequence[Seed],
    strategy: str | Iterable[str],
    turns: int | str | Iterable[int],
    **kwargs: Any,
) -> list[Sample]:
    """`build_attacks` for code without an event loop (same arguments)."""
    return asyncio.run(build_attacks(seeds, strategy, turns, **kwargs))


def load_seeds_csv(
    path: Path, *, source: str | None = None, limit: int | None = None
) -> list[Seed]:
    """Seeds from a FigStep-style CSV (SafeBench: question, instruction, category_name, ...).

    Only `question` is required. Ids come from an `id` column, else from `category_id` and
    `task_id`, else from the row number; `harmful` defaults to true.

    Raises:
        SchemaError: If the file has no `question` column or a row has an empty question.
    """
    name = source or path.stem
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "seed"
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if "question" not in (reader.fieldnames or []):
            raise SchemaError(f"{path}: a seeds CSV needs a 'question' column")
        seeds: list[Seed] = []
        for row_no, row in enumerate(reader, start=1):
            if limit is not None and len(seeds) >= limit:
                break
            question = (row.get("question") or "").strip()
            if not question:
                raise SchemaError(f"{path}: row {row_no} has an empty question")
            if row.get("id"):
                seed_id = row["id"].strip()
            elif row.get("category_id") and row.get("task_id"):
                seed_id = f"{slug}-{row['category_id'].strip()}-{row['task_id'].strip()}"
            else:
                seed_id = f"{slug}-{row_no}"
            harmful = (row.get("harmful") or "true").strip().lower() not in ("0", "false", "no")
            category = row.get("category_name") or row.get("category")
            seeds.append(
                Seed(
                    id=seed_id,
                    question=question,
                    instruction=(row.get("instruction") or "").strip() or None,
                    category=category.strip() if category else None,
                    source=name,
                    harmful=harmful,
                )
            )
    return seeds


def localize_images(samples: Iterable[Sample], images_dir: Path, base: Path) -> list[Sample]:
    """Copy every image a sample references into `images_dir`; reference it relative to `base`.

    Images already in `images_dir` stay where they are; bytes, `data:` URLs and files
    elsewhere are written there once (content-addressed); http(s) URLs are left as they are.
    Paths under `base` (the JSONL file's folder) become relative, so `read_jsonl` finds them.
    """
    images_dir = images_dir.resolve()
    base = base.resolve()
    cache: dict[str, ImagePart] = {}

    def local(part: ImagePart, sample_id: str) -> ImagePart:
        if part.is_remote:
            return part
        label = f"image of {sample_id}"
        key = part.path or part.sha256(label=label)
        if key not in cache:
            if part.path is not None and Path(part.path).resolve().is_relative_to(images_dir):
                target = Path(part.path).resolve()
            else:
                raw = part.read_bytes(label=label)
                suffix = Path(part.path).suffix.lower() if part.path else _suffix(raw)
                target = images_dir / f"{part.sha256(label=label)[:16]}{suffix or '.png'}"
                if not target.exists():
                    images_dir.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(raw)
            shown = target.relative_to(base) if target.is_relative_to(base) else target
            cache[key] = ImagePart(path=str(shown))
        return cache[key]

    out: list[Sample] = []
    for sample in samples:
        messages = [
            Message(
                role=m.role,
                parts=[local(p, sample.id) if isinstance(p, ImagePart) else p for p in m.parts],
            )
            for m in sample.dialogue.messages
        ]
        out.append(sample.model_copy(update={"dialogue": Dialogue(messages=messages)}))
    return out


def _suffix(raw: bytes) -> str:
    """A file suffix from an image's magic bytes (PNG when unknown)."""
    for magic, suffix in ((b"\xff\xd8\xff", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp")):
        if raw.startswith(magic):
            return suffix
    return ".webp" if raw[8:12] == b"WEBP" else ".png"


class BuildSummary(NamedTuple):
    """Counts per (strategy, turns), attacker fallbacks per strategy."""

    counts: dict[tuple[str, int], int]
    fallbacks: dict[str, int]
    attacker_written: dict[str, int]


def summarize(samples: Iterable[Sample]) -> BuildSummary:
    """Count samples per strategy and turn count, and attacker outcomes per strategy."""
    counts: Counter[tuple[str, int]] = Counter()
    fallbacks: Counter[str] = Counter()
    written: Counter[str] = Counter()
    for sample in samples:
        counts[(sample.strategy, sample.turns)] += 1
        if sample.metadata.get("attacker_fallback"):
            fallbacks[sample.strategy] += 1
        if sample.metadata.get("mode") == "attacker":
            written[sample.strategy] += 1
    return BuildSummary(dict(counts), dict(fallbacks), dict(written))
