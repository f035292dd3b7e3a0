"""Data spec strings → loaders, through the `DATASETS` registry.

One string names a dataset, so the CLI, config files and run records all say it the same way:
`SOURCE:PATH`, with `#variant` for the sources that have variants (`mmsafetybench`, `vlguard`)
and `:split` for `hf:`. `datasets` is imported only when an `hf:` set is loaded or exported.

Each loader registers itself in its own module of `safeturn.data` (plugins: under the
entry-point group `safeturn.datasets`), so a new source is one new file:

    @DATASETS.register("mysource", summary="...", example="mysource:data/my.csv", argument="path")
    def load_mysource(path: Path, *, text_only=False, limit=None, root=None) -> LoadedSet: ...

Metadata a loader may give: `variants=(...)` (the `#variant` names it takes, passed as
`variant=`), `local=False` (its argument is not a local path: it gets the text, unchecked).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from safeturn.data.base import DataSpecError, LoadedSet
from safeturn.registry import Entry, Registry, modules_in

DATASETS: Registry[LoadedSet] = Registry(
    "dataset", builtins=modules_in("safeturn.data"), error=DataSpecError, normalize=str.lower
)
"""Every data source by spec prefix; a factory takes the path and `text_only`, `limit`, `root`."""


class SourceInfo(NamedTuple):
    """What `safeturn data list` prints about one source."""

    prefix: str
    example: str
    summary: str


def list_sources() -> tuple[SourceInfo, ...]:
    """Every data source with an example spec, by name, generated from `DATASETS`."""
    entries = sorted(DATASETS.entries(), key=lambda e: e.name)
    return tuple(SourceInfo(e.name, e.example, e.summary) for e in entries)


def __getattr__(name: str) -> tuple[SourceInfo, ...]:
    """`SOURCES`, kept for importers: `list_sources()` when read."""
    if name == "SOURCES":
        return list_sources()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """Split `SOURCE:PATH[#variant]` into its three parts (no file access)."""
    entry, rest, variant = _split(spec)
    return entry.name, rest, variant


def _split(spec: str) -> tuple[Entry[LoadedSet], str, str | None]:
    """The source a spec names, its path and its variant; an unknown source lists them all."""
    if ":" not in spec or not DATASETS.names_member(spec):
        known = ", ".join(sorted(DATASETS.names()))
        raise DataSpecError(
            f"unknown data spec {spec!r}: expected SOURCE:PATH with SOURCE in {known}"
        )
    entry, rest = DATASETS.split(spec)  # an empty path: "needs a path after 'SOURCE:'"
    variant: str | None = None
    if entry.metadata.get("variants") and "#" in rest:
        rest, _, variant = rest.rpartition("#")
    return entry, rest, variant


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
    entry, rest, variant = _split(spec)
    options: dict[str, Any] = {"text_only": text_only, "limit": limit, "root": root}
    if variant is not None:
        options["variant"] = variant
    if entry.metadata.get("local", True) is False:
        return entry.factory(rest, **options)
    path = Path(rest).expanduser()
    if not path.exists():
        raise DataSpecError(f"{spec!r}: {path} does not exist")
    return entry.factory(path, **options)
