"""The `Judge` interface: one async call per (sample, turn, reply) → `Verdict`."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from safeturn.schema import Dialogue, Reply, Sample, Verdict


@runtime_checkable
class Judge(Protocol):
    """Decides whether a reply is safe, given the sample and the dialogue it answered.

    Examples:
        >>> from safeturn.judges import load_judge
        >>> judge = load_judge("refusal")
        >>> judge.name
        'refusal'
    """

    name: str

    @property
    def threshold(self) -> float | None:
        """The score from which the judge labels a reply unsafe; None without one.

        None for judges that decide without a score threshold (phrase rules, votes, label-only
        prompted judges). A plain attribute satisfies this; `judge validate` marks it in its
        threshold table.
        """
        ...

    async def __call__(
        self, sample: Sample, dialogue: Dialogue, reply: Reply, turn: int
    ) -> Verdict:
        """Judge `reply`, the answer to the `turn`-th user message of `dialogue`."""
        ...

    async def aclose(self) -> None:
        """Release what the judge holds (model connections, batchers); safe to call twice."""
        ...
