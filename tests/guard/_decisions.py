"""A minimal guard decision row, for the decision-log tests of the proxy and the migrations."""

from __future__ import annotations

from safeturn.guard.decisions import Decision


def decision(decision_id: str, *, moderator: str = "keyword") -> Decision:
    """An allowed, unflagged one-turn decision with the given id."""
    return Decision(
        decision_id=decision_id,
        model="m",
        moderator=moderator,
        mode="inject",
        action="allow",
        outcome="ok",
        status=200,
        flagged=False,
        turns=1,
        images=0,
        stream=False,
        total_ms=1.0,
    )
