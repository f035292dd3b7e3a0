"""Run a model over samples, judge each turn, and persist every step as it happens.

Two modes (DESIGN §3): *live* — the model answers every user turn on its own history and every
turn is judged; *replay* — the dataset's assistant turns stay fixed and only the final user
turn is answered (SafeMT's protocol). A failing sample is recorded with its error and never
stops the run; a killed run resumes from the database without repeating a finished call.

With `EvalSettings.samples = N > 1` every item is answered N times: `start_run` stores N draws
of each sample (ids `{id}#{k}`, metadata `item_id` and `draw`), so resume, calls and verdicts
need nothing new; draw k samples with `params.seed + k` when a seed is set.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

from pydantic import BaseModel, Field

from safeturn.errors import StoreError
from safeturn.judges.base import Judge
from safeturn.models.base import ChatModel
from safeturn.run.calls import cached_generate
from safeturn.run.store import RunStore
from safeturn.schema import Dialogue, GenerateParams, Message, Reply, Sample, Verdict

logger = logging.getLogger(__name__)

Mode = Literal["live", "replay"]
SampleCallback = Callable[[Sample, "SampleDone"], None]
"""Called after each sample with what became of it (progress bars, running tallies)."""


class EvalSettings(BaseModel):
    """Everything that defines a run; stored with it so `--resume` needs only the run id."""

    model: str
    """Spec of the target model."""
    judges: list[str] = Field(default_factory=lambda: ["refusal"])
    mode: Mode = "live"
    params: GenerateParams = Field(default_factory=GenerateParams)
    concurrency: int = 8
    """Samples in flight at once; local backends batch across them."""
    data: str = ""
    """Where the samples came from (a data spec or a description)."""
    samples: int = Field(default=1, ge=1)
    """Draws per item: each item is answered (and judged) this many times."""


DRAW_SEPARATOR = "#"
"""Joins an item id and a draw number into the id of the draw's sample: `{id}#{k}`."""


def expand_draws(samples: Sequence[Sample], n: int) -> list[Sample]:
    """N draws of each sample, side by side; the samples themselves (ids unchanged) when N = 1.

    A draw is the same sample under the id `{id}#{k}` with `metadata["item_id"]` and
    `metadata["draw"]`, so everything keyed by sample id (calls, verdicts, resume) keeps working.
    """
    if n <= 1:
        return list(samples)
    return [
        sample.model_copy(
            update={
                "id": f"{sample.id}{DRAW_SEPARATOR}{k}",
                "metadata": {**sample.metadata, "item_id": sample.id, "draw": k},
            }
        )
        for sample in samples
        for k in range(n)
    ]


def sample_draw(sample: Sample) -> int:
    """Which draw of its item a sample is (0 for runs with one draw per item)."""
    draw = sample.metadata.get("draw", 0)
    return draw if isinstance(draw, int) else 0


def draw_params(params: GenerateParams, draw: int) -> GenerateParams:
    """The sampling options of draw k: the run's options, with seed `seed + k` when seeded."""
    if draw == 0 or params.seed is None:
        return params
    return params.model_copy(update={"seed": params.seed + draw})


def start_run(store: RunStore, samples: Sequence[Sample], settings: EvalSettings) -> str:
    """Create a run holding its settings and samples (N draws each); return the run id."""
    samples = expand_draws(samples, settings.samples)
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise StoreError(f"sample ids must be unique within a run; repeated: {dupes[:5]}")
    run_id = store.create_run(settings.model_dump(mode="json"))
    store.add_samples(run_id, samples)
    return run_id


def run_settings(store: RunStore, run_id: str) -> EvalSettings:
    """The settings a run was started with."""
    return EvalSettings.model_validate(store.get_run(run_id).config)


def unfinished_samples(store: RunStore, run_id: str) -> set[str]:
    """Ids of the samples a run (or resume) still has to do: not done, or judged `invalid`."""
    status = store.sample_status(run_id)
    todo = {sample_id for sample_id, (state, _) in status.items() if state != "done"}
    todo.update(v.sample_id for v in store.verdicts(run_id) if v.label == "invalid")
    return todo


async def execute_run(
    store: RunStore,
    run_id: str,
    model: ChatModel,
    judges: Sequence[Judge],
    *,
    on_sample: SampleCallback | None = None,
) -> None:
    """Run (or resume) every sample of a run that has not finished yet.

    A finished sample with an `invalid` verdict counts as unfinished: the judge that could not
    decide (a malformed answer, an endpoint that was down) is asked again, while its stored
    model calls and valid verdicts are reused.
    """
    settings = run_settings(store, run_id)
    todo = unfinished_samples(store, run_id)
    samples = [s for s in store.load_samples(run_id) if s.id in todo]
    runners: dict[int, SampleRunner] = {}

    def runner_for(sample: Sample) -> SampleRunner:
        draw = sample_draw(sample) if settings.params.seed is not None else 0
        if draw not in runners:
            params = draw_params(settings.params, draw)
            runners[draw] = SampleRunner(
                store, run_id, model, judges, mode=settings.mode, params=params
            )
        return runners[draw]

    # A fixed pool of workers pulls samples from one shared iterator: a task per sample would
    # put thousands of idle coroutines on the heap, and full garbage collections over them
    # cost more per call than the engine itself (measured with benchmarks/harness_throughput).
    pending = iter(samples)

    async def worker() -> None:
        for sample in pending:
            done = await runner_for(sample).run(sample)
            if on_sample is not None:
                on_sample(sample, done)

    # The loaded samples live for the whole run; frozen, they are not rescanned by every full
    # collection.
    gc.freeze()
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(max(1, settings.concurrency), len(samples))):
                group.create_task(worker())
    finally:
        gc.unfreeze()
    store.finish_run(run_id, "done")


class TurnOutcome(NamedTuple):
    """One answered user turn: the reply and each judge's verdict, in judge order."""

    turn: int
    reply: Reply
    verdicts: list[Verdict]


class SampleDone(NamedTuple):
    """A sample the runner has finished with: its error (None if it finished) and its turns."""

    error: str | None
    turns: list[TurnOutcome]
    """Every answered turn (empty when the sample failed)."""

    @property
    def final_verdicts(self) -> list[Verdict]:
        """The verdicts on the last user turn, in judge order; empty if it was not reached."""
        return self.turns[-1].verdicts if self.turns else []


class SampleRunner:
    """Answers one sample with the model and judges each answer, writing through the store.

    Calls and verdicts already in the store are reused, so a resumed sample costs nothing
    for the turns it had finished.
    """

    def __init__(
        self,
        store: RunStore,
        run_id: str,
        model: ChatModel,
        judges: Sequence[Judge],
        *,
        mode: Mode,
        params: GenerateParams,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.model = model
        self.judges = judges
        self.mode = mode
        self.params = params

    async def run(self, sample: Sample) -> SampleDone:
        """Answer a sample and mark it done; an error is returned and recorded, not raised."""
        try:
            turns = await self.answer(sample)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            logger.warning("sample %s failed: %s", sample.id, error)
            self.store.mark_sample(self.run_id, sample.id, "error", error)
            return SampleDone(error, [])
        self.store.mark_sample(self.run_id, sample.id, "done")
        return SampleDone(None, turns)

    async def answer(self, sample: Sample) -> list[TurnOutcome]:
        """Answer the sample in this runner's mode; return every answered turn."""
        return await (self._live(sample) if self.mode == "live" else self._replay(sample))

    async def _live(self, sample: Sample) -> list[TurnOutcome]:
        history: list[Message] = []
        outcomes: list[TurnOutcome] = []
        for message in sample.dialogue.messages:
            if message.role == "assistant":
                continue  # live mode: the model writes its own assistant turns
            history.append(message)
            if message.role != "user":
                continue
            outcome = await self._turn(sample, len(outcomes) + 1, Dialogue(messages=list(history)))
            outcomes.append(outcome)
            history.append(Message.assistant(outcome.reply.text))
        return outcomes

    async def _replay(self, sample: Sample) -> list[TurnOutcome]:
        dialogue = sample.dialogue
        if not dialogue.messages or dialogue.messages[-1].role != "user":
            raise ValueError("replay mode needs a dialogue that ends with a user message")
        return [await self._turn(sample, sample.turns, dialogue)]

    async def _turn(self, sample: Sample, turn: int, dialogue: Dialogue) -> TurnOutcome:
        reply = await cached_generate(
            self.store,
            self.run_id,
            self.model,
            dialogue,
            self.params,
            sample_id=sample.id,
            turn=turn,
            role="target",
        )
        verdicts = []
        for judge in self.judges:
            verdict = self.store.get_verdict(self.run_id, sample.id, turn, judge.name)
            if verdict is None or verdict.label == "invalid":
                verdict = await judge(sample, dialogue, reply, turn)
                self.store.record_verdict(self.run_id, verdict)
            verdicts.append(verdict)
        return TurnOutcome(turn, reply, verdicts)
