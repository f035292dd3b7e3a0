"""Datasets → `Sample`s: one loader per source, a spec-string registry, and exporters.

`load_dataset("figstep:path/to/FigStep/data")` returns a `LoadedSet`: the samples, plus the
samples left out because an image they reference is not on disk, and (line-based files) the
records that could not be read, each failed alone. See `registry.list_sources`
for every source and `safeturn.taxonomy` for the shared risk categories.
"""

from safeturn.data.base import DataSpecError, LoadedSet, LoadError, MissingImage
from safeturn.data.export import export_hf, export_jsonl
from safeturn.data.registry import SourceInfo, list_sources, load_dataset, parse_spec

__all__ = [
    "DataSpecError",
    "LoadError",
    "LoadedSet",
    "MissingImage",
    "SourceInfo",
    "export_hf",
    "export_jsonl",
    "list_sources",
    "load_dataset",
    "parse_spec",
]
