"""The loop's bookkeeping: `loop.json`, the files of an out dir, progress hooks and the result.

`loop.json` records the config's fingerprint, the run ids and every finished step, so a re-run
skips finished steps; a re-run whose config differs (other than report-only fields) is refused
rather than mixing two experiments in one folder.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from safeturn.errors import LoopError
from safeturn.train.config import changed_settings
from safeturn.train.loop_config import SECTIONS, LoopConfig

if TYPE_CHECKING:
    from safeturn.report.compare import BeforeAfter
    from safeturn.run.engine import SampleCallback

StepName = Literal["eval-before", "select", "synth", "train", "eval-after", "report"]
STEPS: tuple[StepName, ...] = ("eval-before", "select", "synth", "train", "eval-after", "report")
RunName = Literal["before-train", "before-heldout", "after-heldout", "synth"]


class StepRecord(BaseModel):
    """A finished step: when, how long, and a short summary for the report."""

    finished_at: str
    seconds: float
    summary: dict[str, Any] = Field(default_factory=dict)


class LoopState(BaseModel):
    """`loop.json`: what has been done in an out dir, so a re-run skips it."""

    version: int = 1
    config: dict[str, Any]
    runs: dict[str, str] = Field(default_factory=dict)
    """Run name (`before-train`, `before-heldout`, `after-heldout`, `synth`) → run id."""
    steps: dict[str, StepRecord] = Field(default_factory=dict)


class LoopPaths:
    """Every file the loop writes, under one out dir."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.db = out / "safeturn.db"
        self.state = out / "loop.json"
        self.split = out / "split.json"
        self.images = out / "images"
        self.failures = out / "failures.json"
        self.train_data = out / "train.jsonl"
        self.checkpoint = out / "checkpoint"
        self.train_result = out / "train.json"
        self.report_json = out / "report.json"
        self.report_html = out / "report.html"
        self.before_html = out / "before.html"
        self.after_html = out / "after.html"


class LoopEvents:
    """Progress hooks; the CLI overrides them, library callers may ignore them."""

    def step(self, name: StepName, message: str) -> None:
        """A step starts, is skipped, or finishes (`message` says which)."""

    def run_started(self, name: RunName, todo: int, total: int) -> None:
        """An eval run starts with `todo` of `total` samples left."""

    def sample_done(self) -> SampleCallback | None:
        """A callback for each finished sample of the current run, or None."""
        return None

    def report(self, report: BeforeAfter) -> None:
        """The before/after comparison is written (the CLI prints it)."""


def now() -> str:
    """The current UTC time as `loop.json` records it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a crash leaves the old file or the new one, never half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    tmp.replace(path)


def open_state(config: LoopConfig, paths: LoopPaths) -> LoopState:
    """The out dir's `loop.json`, or a fresh state for a new out dir.

    Raises:
        LoopError: The out dir holds a loop with another config (the changed fields named).
    """
    fingerprint = config.fingerprint()
    if not paths.state.is_file():
        return LoopState(config=fingerprint)
    state = LoopState.model_validate_json(paths.state.read_text(encoding="utf-8"))
    defaults = LoopConfig.load(None).fingerprint()
    changed = changed_settings(_typed_sections(state.config, config), fingerprint, defaults)
    if changed:
        raise LoopError(
            f"{paths.out} holds a loop with a different config ({', '.join(changed)} "
            "changed); use another --out, or delete the folder to start over"
        )
    return state


def _typed_sections(stored: dict[str, Any], config: LoopConfig) -> dict[str, Any]:
    """A stored fingerprint with its trainer sections read as the sections now type them.

    Older `loop.json` files hold sections as written in YAML (PyYAML reads `5e-5` as a
    string); typed now, the same value is stored as `5e-05`, and must not count as a change.
    """
    typed = dict(stored)
    for name in SECTIONS:
        section = stored.get(name)
        if isinstance(section, dict):
            model = type(getattr(config, name))
            # A section no longer valid is compared as stored, so it shows as changed.
            with contextlib.suppress(ValueError):
                typed[name] = model.model_validate(section).model_dump(
                    mode="json", exclude_unset=True
                )
    return typed


class LoopResult(BaseModel):
    """What `run_loop` did: the steps it ran or skipped, and where the report is."""

    out: Path
    ran: list[str]
    skipped: list[str]
    state: LoopState
    report: dict[str, Any] | None = None
    notes: list[str] = Field(default_factory=list)
