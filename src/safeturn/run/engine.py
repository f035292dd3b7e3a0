"""Run a model over samples, judge each turn, and persist every step as it happens.

Two modes (DESIGN §3): *live* — the model answers every user turn on its own history and every
turn is judged; *replay* — the dataset's assistant turns stay fixed and only the final user
turn is answered (SafeMT's protocol). A failing sample is recorded with its error and never
stops the run; a killed run resumes from the database without repeating a finished call.

With `EvalSettings.samples = N > 1` every item is answered N times: `start_run` stores N draws
of each sample (ids `{id}#{k}`, metadata `item_id` and `draw`), so resume, calls and verdicts
need nothing new; draw k samples with `params.seed + k` when a seed is set.

One process at a time runs a run (`run.lease`): a second `execute_run` of a run that a live
process is running stops with `RunBusyError` before it calls anything. Several processes
share one run only as workers (`execute_worker`, `run.claims`), each claiming samples.
A sample that cannot be answered (no user turn, or a record the loader could not read:
`unloadable_sample`) fails with an error that says why, like any other failing sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, Field

from safeturn.errors import SafeturnError, SchemaError, StoreError
from safeturn.judges.base import Judge
from safeturn.models.base import ChatModel
from safeturn.run.calls import cached_generate
from safeturn.run.claims import RunWorker, ensure_no_workers
from safeturn.run.lease import HEARTBEAT_S, STALE_AFTER_S, RunLease, Seat
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


LOAD_ERROR = "load_error"
"""Metadata key of a stand-in sample for a record that could not be read: why it could not."""


def unloadable_sample(sample_id: str, source: str, reason: str) -> Sample:
    """A stand-in for a record the loader could not read; a run fails it with `reason`.

    Keeping it in the run (rather than dropping it) makes the report count it as an error.
    """
    return Sample(id=sample_id, source=source, dialogue=Dialogue(), metadata={LOAD_ERROR: reason})


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
    """Create a run holding its settings and samples (N draws each); return the run id.

    The run and its samples are stored in one transaction, and a run needs at least one
    sample: a run without samples would finish "done" having run nothing.
    """
    samples = expand_draws(samples, settings.samples)
    if not samples:
        raise StoreError("no samples to run: the data gave none (see the messages above)")
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        dupes = sorted(i for i, n in Counter(ids).items() if n > 1)  # not ids.count: O(N²)
        raise StoreError(f"sample ids must be unique within a run; repeated: {dupes[:5]}")
    config = settings.model_dump(mode="json")
    config[BUILT_FROM] = members_used(settings)
    return store.create_run(config, samples=samples)


BUILT_FROM = "built_from"
"""Run-config key of the registry records of the model and judges (`members_used`)."""


def members_used(settings: EvalSettings) -> list[dict[str, Any]]:
    """What the run's specs name: kind, member, spec and the module that provides each.

    Stored beside the settings, so a run says which backend and judges (built-in or from a
    plugin, and which safeturn version) produced its numbers, and can be rebuilt from them.
    """
    from safeturn import __version__
    from safeturn.judges.specs import JUDGES
    from safeturn.models.spec import BACKENDS
    from safeturn.registry import Registry

    named: list[tuple[Registry[Any], str]] = [(BACKENDS, settings.model)]
    named += [(JUDGES, spec) for spec in settings.judges]
    records = []
    for registry, spec in named:
        try:
            record = registry.describe(spec).as_dict()
        except SafeturnError:  # a model object passed in by a library caller, not a spec
            record = {"kind": registry.kind, "name": None, "spec": spec, "origin": None}
        records.append({**record, "safeturn": __version__})
    return records


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

    Raises:
        RunBusyError: Another live process is running this run, or workers share it.
        StoreError: The run holds no samples (it is marked failed, never done).
    """
    settings = run_settings(store, run_id)
    with RunLease(store, run_id) as lease:
        ensure_no_workers(store, run_id)
        with bulk_objects():  # kept for the run: see bulk_objects
            stored = _stored_samples(store, run_id)
        todo = unfinished_samples(store, run_id)
        samples = [s for s in stored if s.id in todo]
        slots = min(max(1, settings.concurrency), len(samples))
        feed = _list_feed(samples)
        await _run_samples(store, run_id, settings, feed, slots, model, judges, on_sample, lease)
        store.finish_run(run_id, "done")


async def execute_worker(
    store: RunStore,
    run_id: str,
    model: ChatModel,
    judges: Sequence[Judge],
    *,
    on_sample: SampleCallback | None = None,
    batch: int | None = None,
    poll_s: float = 0.25,
    stale_after_s: float = STALE_AFTER_S,
    heartbeat_s: float = HEARTBEAT_S,
) -> bool:
    """Work on a run beside other workers (`run.claims`) until none of its samples is pending.

    Samples are claimed `batch` at a time (default: a quarter of the run's concurrency). A
    worker with nothing left to claim waits, polling every `poll_s`, while other workers
    still hold unfinished samples: if one of them dies, its samples are taken over here.

    Returns:
        True for the one worker that marked the run done (it writes the reports).

    Raises:
        RunBusyError: A plain `--resume` is running the run.
        StoreError: The run holds no samples, or this worker stalled and lost its seat.
    """
    settings = run_settings(store, run_id)
    size = batch or max(1, settings.concurrency // 4)
    worker = RunWorker(
        store, run_id, batch=size, stale_after_s=stale_after_s, heartbeat_s=heartbeat_s
    )
    with worker:
        with bulk_objects():
            stored = {sample.id: sample for sample in _stored_samples(store, run_id)}
        feed = _claim_feed(worker, stored, poll_s)
        slots = max(1, settings.concurrency)
        await _run_samples(store, run_id, settings, feed, slots, model, judges, on_sample, worker)
        return worker.finish()


def _stored_samples(store: RunStore, run_id: str) -> list[Sample]:
    """The run's samples; a run without any is marked failed (it could never be done)."""
    stored = store.load_samples(run_id)
    if not stored:
        store.finish_run(run_id, "failed")
        raise StoreError(
            f"run {run_id} holds no samples (it was created, but its samples were never "
            "stored); start a new run"
        )
    return stored


@contextlib.contextmanager
def bulk_objects() -> Iterator[None]:
    """No automatic garbage collection while a command builds many objects that it keeps.

    Loading 10,000 samples or reading a run's 80,000 calls back makes hundreds of thousands of
    objects that live until the command ends, and each full collection walks all of them
    again: that cost more than building them (10,000 samples validate in 0.5 s without, 1.7 s
    with). These phases make few reference cycles. What they kept is then frozen (`gc.freeze`,
    undone by the engine's `gc.unfreeze` after a run), or the first collection after them would
    walk it all at once (0.3 s after loading 10,000 samples); the collector is back on after.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


SampleFeed = Callable[[], Awaitable[Sample | None]]
"""Gives the engine's workers their next sample, or None when there is none left."""


def _list_feed(samples: Sequence[Sample]) -> SampleFeed:
    """The samples of a list, in order, once each."""
    pending = iter(samples)

    async def next_sample() -> Sample | None:
        return next(pending, None)

    return next_sample


def _claim_feed(worker: RunWorker, samples: dict[str, Sample], poll_s: float) -> SampleFeed:
    """Samples this worker claims, a batch at a time, until no sample of the run is pending."""
    claimed: deque[str] = deque()
    lock = asyncio.Lock()  # one claim at a time; the others wait for its batch
    finished = False

    async def next_sample() -> Sample | None:
        nonlocal finished
        async with lock:
            while not claimed:
                if finished or worker.lost.is_set():
                    return None
                batch = await asyncio.to_thread(worker.claim)
                if batch:
                    claimed.extend(batch)
                elif await asyncio.to_thread(worker.unfinished) == 0:
                    finished = True
                else:  # the rest is in flight, here or at other workers (who may yet die)
                    await asyncio.sleep(poll_s)
            return samples[claimed.popleft()]

    return next_sample


async def _run_samples(
    store: RunStore,
    run_id: str,
    settings: EvalSettings,
    feed: SampleFeed,
    slots: int,
    model: ChatModel,
    judges: Sequence[Judge],
    on_sample: SampleCallback | None,
    seat: Seat,
) -> None:
    """Run the feed's samples in `slots` workers; raise `StoreError` once `seat` is lost.

    The samples finished before the loss are stored; another process runs the rest.
    """
    stop = seat.lost
    runners: dict[int, SampleRunner] = {}

    def runner_for(sample: Sample) -> SampleRunner:
        draw = sample_draw(sample) if settings.params.seed is not None else 0
        if draw not in runners:
            params = draw_params(settings.params, draw)
            runners[draw] = SampleRunner(
                store, run_id, model, judges, mode=settings.mode, params=params
            )
        return runners[draw]

    # A fixed pool of `slots` workers pulls samples from one shared feed: a task per sample
    # would put thousands of idle coroutines on the heap, and full garbage collections over
    # them cost more per call than the engine itself (benchmarks/harness_throughput).
    async def worker() -> None:
        while not stop.is_set():  # set: another process runs these samples now
            sample = await feed()
            if sample is None:
                return
            done = await runner_for(sample).run(sample)
            if on_sample is not None:
                on_sample(sample, done)

    # The loaded samples live for the whole run; frozen, they are not rescanned by every full
    # collection.
    gc.freeze()
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(slots):
                group.create_task(worker())
    except ExceptionGroup as failures:
        # A worker fails only when the store does (a sample's own errors are recorded):
        # raise that error itself, so callers that catch SafeturnError print it cleanly.
        first: BaseException = failures
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    finally:
        gc.unfreeze()
    if stop.is_set():
        raise StoreError(f"run {run_id}: {seat.stalled}; the samples finished here are stored")


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
        """Answer the sample in this runner's mode; return every answered turn.

        Raises:
            SchemaError: The sample stands for a record that could not be read, or its
                dialogue has no user turn (there would be nothing to answer or judge).
        """
        load_error = sample.metadata.get(LOAD_ERROR)
        if load_error is not None:
            raise SchemaError(str(load_error))
        if sample.dialogue.n_turns == 0:
            raise SchemaError(f"sample {sample.id!r} has no user turn: nothing to answer")
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
