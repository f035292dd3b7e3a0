"""Data spec strings → loaders.

One string names a dataset, so the CLI, config files and run records all say it the same way:
`SOURCE:PATH`, with `#variant` for the sources that have variants (`mmsafetybench`, `vlguard`)
and `:split` for `hf:`. `datasets` is imported only when an `hf:` set is loaded or exported.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from safeturn.data.base import DataSpecError, LoadedSet
from safeturn.data.dialogsets import load_hh_rlhf, load_mtbench101
from safeturn.data.figstep import load_figstep, load_figstep_benign
from safeturn.data.hf import load_hf
from safeturn.data.jsonl import load_jsonl
from safeturn.data.mmsafetybench import load_mmsafetybench
from safeturn.data.safemt import load_safemt
from safeturn.data.siuo import load_siuo
from safeturn.data.textsets import load_advbench, load_harmbench, load_questions, load_xstest
from safeturn.data.vlguard import load_vlguard


class SourceInfo(NamedTuple):
    """What `safeturn data list` prints about one source."""

    prefix: str
    example: str
    summary: str


Loader = Callable[..., LoadedSet]

_LOADERS: dict[str, Loader] = {
    "safemt": load_safemt,
    "siuo": load_siuo,
    "figstep": load_figstep,
    "figstep-benign": load_figstep_benign,
    "mmsafetybench": load_mmsafetybench,
    "vlguard": load_vlguard,
    "xstest": load_xstest,
    "harmbench": load_harmbench,
    "advbench": load_advbench,
    "questions": load_questions,
    "jsonl": load_jsonl,
    "hh-rlhf": load_hh_rlhf,
    "mtbench101": load_mtbench101,
}
_WITH_VARIANTS = frozenset({"mmsafetybench", "vlguard"})


SOURCES: tuple[SourceInfo, ...] = (
    SourceInfo("safemt", "safemt:Data/ or safemt:Data/4_turn.json", "SafeMT multi-turn dialogues"),
    SourceInfo("siuo", "siuo:data/siuo_gen.json", "SIUO safe inputs, unsafe output (gen/mcqa)"),
    SourceInfo("figstep", "figstep:FigStep/data/", "FigStep SafeBench typographic images"),
    SourceInfo(
        "figstep-benign",
        "figstep-benign:SafeBench-Tiny-Benign.csv",
        "benign twins of SafeBench-Tiny",
    ),
    SourceInfo(
        "mmsafetybench",
        "mmsafetybench:MM-SafetyBench/data/#sd_typo",
        "MM-SafetyBench; variants sd_typo, typo, sd, text",
    ),
    SourceInfo(
        "vlguard",
        "vlguard:train_llava_format.json#instructions",
        "VLGuard LLaVA format; variants record, instructions",
    ),
    SourceInfo("xstest", "xstest:xstest_prompts.csv", "XSTest safe/unsafe prompts (over-refusal)"),
    SourceInfo("harmbench", "harmbench:harmbench_behaviors_text_all.csv", "HarmBench behaviors"),
    SourceInfo("advbench", "advbench:harmful_behaviors.csv", "AdvBench harmful behaviors"),
    SourceInfo("questions", "questions:my_questions.csv", "any CSV with a question column"),
    SourceInfo(
        "hh-rlhf",
        "hh-rlhf:harmless-base-test.jsonl.gz",
        "hh-rlhf red-teaming conversations (people, multi-turn)",
    ),
    SourceInfo(
        "mtbench101", "mtbench101:mtbench101_train_tasks.jsonl", "MT-Bench-101 benign dialogues"
    ),
    SourceInfo("jsonl", "jsonl:samples.jsonl", "safeturn's own JSONL samples"),
    SourceInfo("hf", "hf:/data/my_set:train", "a local or cached Hugging Face dataset"),
)


def list_sources() -> tuple[SourceInfo, ...]:
    """Every data source with an example spec."""
    return SOURCES


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """Split `SOURCE:PATH[#variant]` into its three parts (no file access)."""
    prefix, sep, rest = spec.partition(":")
    prefix = prefix.strip().lower()
    known = ", ".join(s.prefix for s in SOURCES)
    if not sep or prefix not in {s.prefix for s in SOURCES}:
        raise DataSpecError(
            f"unknown data spec {spec!r}: expected SOURCE:PATH with SOURCE in {known}"
        )
    if not rest:
        raise DataSpecError(f"{spec!r}: the path after {prefix}: is empty")
    variant: str | None = None
    if prefix in _WITH_VARIANTS and "#" in rest:
        rest, _, variant = rest.rpartition("#")
    return prefix, rest, variant


def load_dataset(
    spec: str,
    *,
    text_only: bool = False,
    limit: int | None = None,
    root: Path | None = None,
) -> LoadedSet:
    """Load the dataset a spec names.

    Args:
        spec: `SOURCE:PATH` (see `list_sources`), e.g. `figstep:../shared/data/figstep`.
        text_only: Leave images out on purpose instead of requiring them.
        limit: Consider at most this many samples.
        root: Folder that image paths resolve under (default: the dataset's folder).

    Raises:
        DataSpecError: Unknown source, empty or missing path, unknown variant.
        SchemaError: The file does not have the source's layout.
        ImageError: An image path leaves the data root.
    """
    prefix, rest, variant = parse_spec(spec)
    if prefix == "hf":
        return load_hf(rest, text_only=text_only, limit=limit, root=root)
    path = Path(rest).expanduser()
    if not path.exists():
        raise DataSpecError(f"{spec!r}: {path} does not exist")
    options: dict[str, object] = {"text_only": text_only, "limit": limit, "root": root}
    if variant is not None:
        options["variant"] = variant
    return _LOADERS[prefix](path, **options)
