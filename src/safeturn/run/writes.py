"""The rows a run writes most: calls, verdicts and done-marks, as queued writes and statements.

`RunStore` queues them (`safeturn.run.writer`) and commits a group as one executemany per
statement, marks last, so a sample is never marked done before its calls and verdicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

from sqlalchemy import bindparam, delete, insert, update
from sqlalchemy.engine import Connection

from safeturn.errors import StoreError
from safeturn.run.tables import CallRow, SampleRow, VerdictRow
from safeturn.schema import Sample

VERDICT_FIELDS = ("sample_id", "turn", "judge", "label", "refused", "score", "rationale")
"""The columns of a verdict that make a `Verdict`."""


class Write(NamedTuple):
    """One queued write: a call, a verdict or a sample's done/error mark."""

    kind: Literal["call", "verdict", "mark"]
    values: dict[str, Any]
    replace: bool = False
    """For a verdict: a stored verdict with the same key is deleted first."""

    def key(self) -> tuple[Any, ...]:
        """Identity of the row it writes: (run, hash), (run, sample, turn, judge), (run, sample)."""
        v = self.values
        if self.kind == "call":
            return (v["run_id"], v["request_hash"])
        if self.kind == "verdict":
            return (v["run_id"], v["sample_id"], v["turn"], v["judge"])
        return (v["b_run"], v["b_sample"])

    def describe(self) -> str:
        """The write, for error messages."""
        v = self.values
        if self.kind == "call":
            where = f"sample {v['sample_id']!r} turn {v['turn']} {v['role']}"
            return f"call (run {v['run_id']}, {where}, hash {v['request_hash'][:12]})"
        if self.kind == "verdict":
            where = f"sample {v['sample_id']!r} turn {v['turn']} judge {v['judge']!r}"
            return f"verdict (run {v['run_id']}, {where})"
        return f"mark (run {v['b_run']}, sample {v['b_sample']!r} → {v['b_status']})"


_INSERT_CALL = insert(CallRow)
_INSERT_VERDICT = insert(VerdictRow)
_DELETE_VERDICT = delete(VerdictRow).where(
    VerdictRow.run_id == bindparam("b_run"),
    VerdictRow.sample_id == bindparam("b_sample"),
    VerdictRow.turn == bindparam("b_turn"),
    VerdictRow.judge == bindparam("b_judge"),
)
_MARK_SAMPLE = (
    update(SampleRow)
    .where(SampleRow.run_id == bindparam("b_run"), SampleRow.sample_id == bindparam("b_sample"))
    .values(status=bindparam("b_status"), error=bindparam("b_error"))
)


def execute_group(connection: Connection, group: Sequence[Write]) -> None:
    """One executemany per statement; marks go last, after the calls and verdicts they follow."""
    calls = [w.values for w in group if w.kind == "call"]
    verdicts: dict[tuple[Any, ...], dict[str, Any]] = {}
    replaced: set[tuple[Any, ...]] = set()
    for w in group:
        if w.kind == "verdict":
            key = w.key()
            verdicts.pop(key, None)  # a repeat within the group: the last one wins, in order
            verdicts[key] = w.values
            if w.replace:
                replaced.add(key)
    marks = [w.values for w in group if w.kind == "mark"]
    if calls:
        connection.execute(_INSERT_CALL, calls)
    if replaced:
        keys = [
            dict(zip(("b_run", "b_sample", "b_turn", "b_judge"), k, strict=True)) for k in replaced
        ]
        connection.execute(_DELETE_VERDICT, keys)
    if verdicts:
        connection.execute(_INSERT_VERDICT, list(verdicts.values()))
    if marks:
        connection.execute(_MARK_SAMPLE, marks)


def sample_rows(run_id: str, samples: Sequence[Sample]) -> list[dict[str, Any]]:
    """The `samples` rows of a run's samples, pending, in their order."""
    return [
        {
            "run_id": run_id,
            "sample_id": sample.id,
            "position": position,
            "payload": sample.model_dump(mode="json", exclude_none=True),
            "status": "pending",
        }
        for position, sample in enumerate(samples)
    ]


def write_error(url: str, write: Write, exc: Exception) -> StoreError:
    """A failed write as a `StoreError` naming the database and the write."""
    detail = getattr(exc, "orig", None) or exc
    return StoreError(f"run store {url}: could not write {write.describe()}: {detail}")
