"""The closed loop: eval → select failures → synthesize → train → re-eval held out → report.

`run_loop(config)` runs six steps, each resumable from `config.out`:

1. `eval-before`: build the same attacks from every seed and run the base model on them, as two
   runs in `out/safeturn.db`: the training seeds and the held-out seeds. A killed eval resumes
   through the engine without repeating a stored call.
2. `select`: failures on the training seeds (`loop_synth.select_failures`) → `failures.json`.
3. `synth`: training dialogues from the failures → `train.jsonl`.
4. `train`: SFT, GRPO or DREAM on `train.jsonl` → `checkpoint/` and `train.json`.
5. `eval-after`: the checkpoint on exactly the held-out samples of step 1 (copied from that run).
6. `report`: before vs after on the held-out seeds → `report.json`, `report.html` and
   `before.html` / `after.html` (`report.compare.before_after`).

The held-out split is by seed group (`loop_split`: a seed, its benign twin and any seed with the
same question stay together). Before training, `check_no_leak` verifies that no training
dialogue comes from a held-out group or repeats a held-out question; the loop stops otherwise.
The config lives in `loop_config`, failure selection and synthesis in `loop_synth`.

`loop.json` records the config, the run ids and every finished step. A re-run with the same
out dir skips finished steps, and one with a different config (other than report-only fields)
is refused rather than mixing two experiments in one folder.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from safeturn.attacks.builder import build_attacks, localize_images
from safeturn.run.engine import EvalSettings, SampleCallback, start_run, unfinished_samples
from safeturn.run.store import RunStore
from safeturn.schema import GenerateParams, Sample, write_jsonl
from safeturn.train.config import is_vlm, resolve_model_dir
from safeturn.train.loop_config import LoopConfig, LoopError
from safeturn.train.loop_split import check_no_leak, load_seeds, seed_groups, split_groups
from safeturn.train.loop_synth import (
    GROUP_KEY,
    Failure,
    anchor_training_set,
    bridge_images,
    select_failures,
    template_training_set,
)

if TYPE_CHECKING:
    from safeturn.judges.pairwise import PairVerdict
    from safeturn.report.compare import BeforeAfter, PairwiseReport
    from safeturn.run.results import RunResults

logger = logging.getLogger(__name__)

StepName = Literal["eval-before", "select", "synth", "train", "eval-after", "report"]
STEPS: tuple[StepName, ...] = ("eval-before", "select", "synth", "train", "eval-after", "report")
RunName = Literal["before-train", "before-heldout", "after-heldout", "synth"]
SPLIT_KEY = "loop_split"
"""Sample metadata key: `train` or `held-out`."""


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


# ---------------------------------------------------------------- state and steps


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    tmp.replace(path)


class LoopResult(BaseModel):
    """What `run_loop` did: the steps it ran or skipped, and where the report is."""

    out: Path
    ran: list[str]
    skipped: list[str]
    state: LoopState
    report: dict[str, Any] | None = None
    notes: list[str] = Field(default_factory=list)


class Loop:
    """One out dir's loop: its config, state, store and steps (see the module docstring)."""

    def __init__(self, config: LoopConfig, events: LoopEvents | None = None) -> None:
        self.config = config
        self.paths = LoopPaths(config.out)
        self.events = events or LoopEvents()
        self.notes: list[str] = []
        self.state = self._open_state()

    def _open_state(self) -> LoopState:
        fingerprint = self.config.fingerprint()
        if not self.paths.state.is_file():
            return LoopState(config=fingerprint)
        state = LoopState.model_validate_json(self.paths.state.read_text(encoding="utf-8"))
        defaults = LoopConfig.load(None).fingerprint()
        changed = sorted(
            k
            for k in fingerprint.keys() | state.config.keys()
            if fingerprint.get(k) != state.config.get(k)
            # a field added since the loop started changes nothing while it keeps its default
            and not (k not in state.config and fingerprint.get(k) == defaults.get(k))
        )
        if changed:
            raise LoopError(
                f"{self.paths.out} holds a loop with a different config ({', '.join(changed)} "
                "changed); use another --out, or delete the folder to start over"
            )
        return state

    def save(self) -> None:
        """Write `loop.json` atomically."""
        _write_json(self.paths.state, self.state.model_dump(mode="json"))

    def done(self, step: StepName) -> bool:
        """Whether `step` finished in an earlier (or this) invocation."""
        return step in self.state.steps

    def finish(self, step: StepName, started: float, **summary: Any) -> None:
        """Record `step` as finished, with its wall time and summary."""
        record = StepRecord(
            finished_at=_now(), seconds=time.perf_counter() - started, summary=summary
        )
        self.state.steps[step] = record
        self.save()

    # -- step 1 and 5: evaluation runs

    def settings(self, model: str) -> EvalSettings:
        """The eval settings of every run of this loop; only the model differs."""
        cfg = self.config
        return EvalSettings(
            model=model,
            judges=list(cfg.judges),
            mode="live",
            params=GenerateParams(max_tokens=cfg.max_tokens),
            concurrency=cfg.concurrency,
            data=(
                f"loop: {', '.join(cfg.data)} → {', '.join(cfg.strategies)} × turns "
                f"{', '.join(map(str, cfg.turns))}"
            ),
        )

    def build_samples(self) -> tuple[list[Sample], list[Sample]]:
        """(train, held-out) attack samples, tagged with their group and split; writes split.json.

        Raises:
            LoopError: An earlier split.json disagrees (the data changed under the out dir).
        """
        cfg = self.config
        seeds = load_seeds(cfg, self.notes)
        groups = seed_groups(seeds)
        train, held = split_groups(groups.values(), cfg.held_out, cfg.split_seed)
        split = {
            "train": sorted(s.id for s in seeds if groups[s.id] in train),
            "held_out": sorted(s.id for s in seeds if groups[s.id] in held),
            "groups": {"train": sorted(train), "held_out": sorted(held)},
        }
        if self.paths.split.is_file():
            if json.loads(self.paths.split.read_text(encoding="utf-8")) != split:
                raise LoopError(
                    f"{self.paths.split} disagrees with the split of the data now; the seed "
                    "files changed under this out dir. Use another --out"
                )
        else:
            _write_json(self.paths.split, split)
        samples = asyncio.run(
            build_attacks(
                seeds,
                cfg.strategies,
                cfg.turns,
                seed=cfg.build_seed,
                images_dir=self.paths.images,
            )
        )
        if cfg.heldout_strategies:  # attack templates the training data never shows
            held_seeds = [s for s in seeds if groups[s.id] in held]
            samples += asyncio.run(
                build_attacks(
                    held_seeds,
                    cfg.heldout_strategies,
                    cfg.turns,
                    seed=cfg.build_seed,
                    images_dir=self.paths.images,
                )
            )
        tagged: list[Sample] = []
        for sample in samples:
            seed_id = str(sample.metadata.get("seed_id") or sample.id)
            group = groups[seed_id]
            side = "train" if group in train else "held-out"
            meta = {**sample.metadata, "seed_id": seed_id, GROUP_KEY: group, SPLIT_KEY: side}
            tagged.append(sample.model_copy(update={"metadata": meta}))
        return (
            [s for s in tagged if s.metadata[SPLIT_KEY] == "train"],
            [s for s in tagged if s.metadata[SPLIT_KEY] == "held-out"],
        )

    def execute(self, store: RunStore, names: Sequence[RunName]) -> None:
        """Run (or resume) the named eval runs with one loaded model and set of judges."""
        from safeturn.judges import load_judge
        from safeturn.models import load_model
        from safeturn.run.engine import execute_run, run_settings

        todo = [n for n in names if unfinished_samples(store, self.state.runs[n])]
        if not todo:
            return
        settings = run_settings(store, self.state.runs[todo[0]])
        model = load_model(settings.model)
        judges = [load_judge(spec) for spec in settings.judges]

        async def go() -> None:
            try:
                for name in todo:
                    run_id = self.state.runs[name]
                    left = len(unfinished_samples(store, run_id))
                    self.events.run_started(name, left, len(store.sample_status(run_id)))
                    await execute_run(
                        store, run_id, model, judges, on_sample=self.events.sample_done()
                    )
            finally:
                await model.aclose()
                for judge in judges:
                    await judge.aclose()

        asyncio.run(go())

    def eval_before(self, store: RunStore) -> None:
        """Step 1: the base model on the training seeds and on the held-out seeds."""
        if "before-train" not in self.state.runs or "before-heldout" not in self.state.runs:
            train, held = self.build_samples()
            settings = self.settings(self.config.eval_spec)
            self.state.runs["before-train"] = start_run(store, train, settings)
            self.state.runs["before-heldout"] = start_run(store, held, settings)
            store.flush()
            self.save()  # the run ids first: a crash from here on resumes these runs
        self.execute(store, ["before-train", "before-heldout"])

    def eval_after(self, store: RunStore, checkpoint: Path) -> None:
        """Step 5: the trained checkpoint on exactly the held-out samples of step 1."""
        if "after-heldout" not in self.state.runs:
            held = store.load_samples(self.state.runs["before-heldout"])
            settings = self.settings(f"hf:{checkpoint.resolve()}")
            self.state.runs["after-heldout"] = start_run(store, held, settings)
            store.flush()
            self.save()
        self.execute(store, ["after-heldout"])

    # -- steps 2 and 3: failures and training data

    def select(self, store: RunStore) -> list[Failure]:
        """Step 2: failures on the training seeds (benign ones only with `include_benign`)."""
        from safeturn.run.results import load_results

        results = load_results(store, self.state.runs["before-train"])
        failures = [
            f for f in select_failures(results) if f.kind == "unsafe" or self.config.include_benign
        ]
        _write_json(self.paths.failures, [f.model_dump(mode="json") for f in failures])
        return failures

    def synthesize(self, store: RunStore, failures: list[Failure]) -> list[Sample]:
        """Step 3: training dialogues from the failures, checked against the held-out set.

        Raises:
            LoopError: There are no failures to learn from, or the data would leak.
        """
        from safeturn.run.results import load_results

        if not failures:
            raise LoopError(
                "the base model failed no training dialogue (no unsafe turn, no over-refusal "
                "by the headline judge), so there is nothing to train on; add seeds, turn "
                "counts or strategies"
            )
        results = load_results(store, self.state.runs["before-train"])
        benign = [f for f in failures if f.kind == "over-refusal"]
        if self.config.synthesis == "template":
            samples = template_training_set(results, failures)
        else:
            harmful = [f for f in failures if f.kind == "unsafe"]
            samples = self._intersafe(store, harmful) + template_training_set(results, benign)
        if self.config.benign_anchors:
            samples += anchor_training_set(results, exclude=[f.sample_id for f in failures])
        if self.config.max_train_dialogues is not None:
            samples = samples[: self.config.max_train_dialogues]
        held = store.load_samples(self.state.runs["before-heldout"])
        check_no_leak(samples, held)
        if self._bridge_for_training():
            samples = bridge_images(samples)
        else:
            samples = localize_images(samples, self.paths.images, self.paths.out)
        write_jsonl(samples, self.paths.train_data)
        return samples

    def _bridge_for_training(self) -> bool:
        """Whether images must become OCR text: the model to train is text-only."""
        try:
            model = self.config.train_model
        except LoopError:
            return False  # not trainable here (scripted, openai); the train step says so
        return not is_vlm(resolve_model_dir(model))

    def _intersafe(self, store: RunStore, failures: list[Failure]) -> list[Sample]:
        from safeturn.models import load_model
        from safeturn.synth import Synthesizer, SynthSettings

        cfg = self.config
        wanted = {f.seed_id for f in failures}
        seeds = [s for s in load_seeds(cfg) if s.id in wanted]
        by_seed = {f.seed_id: f.group for f in failures}
        settings = SynthSettings(
            attacker=cfg.attacker or cfg.expert,
            expert=cfg.expert,
            turns=list(cfg.turns),
            seed=cfg.build_seed,
            data=f"loop failures of {', '.join(cfg.data)}",
        )
        if "synth" not in self.state.runs:
            config = {**settings.model_dump(mode="json"), "loop": str(self.paths.out)}
            self.state.runs["synth"] = store.create_run(config, kind="synth")
            self.save()
        run_id = self.state.runs["synth"]

        async def go() -> list[Sample]:
            attacker = load_model(settings.attacker)
            expert = attacker if settings.expert == settings.attacker else load_model(cfg.expert)
            try:
                synth = Synthesizer(store, run_id, settings, attacker=attacker, expert=expert)
                return await synth.run(seeds)
            finally:
                for model in {id(m): m for m in (attacker, expert)}.values():
                    await model.aclose()

        samples = asyncio.run(go())
        store.finish_run(run_id, "done")
        return [
            s.model_copy(
                update={
                    "id": f"loop-{s.id}",
                    "metadata": {**s.metadata, GROUP_KEY: by_seed[str(s.metadata["seed_id"])]},
                }
            )
            for s in samples
        ]

    # -- step 4: training

    def trainer_config(self) -> Any:
        """The configured trainer's config, pointed at `train.jsonl` and `checkpoint/`.

        GRPO takes the training dialogues' user turns as its prompts. DREAM runs its SFT stage
        on `train.jsonl` and its RLAIF rounds on the same dialogues' prompts; without a risk
        file its judge scores replies without disentangled risks.

        Raises:
            LoopError: The base model cannot be trained here.
            SafeturnError: The trainer's own config rejects the section's values.
        """
        cfg, data, out = self.config, self.paths.train_data, self.paths.checkpoint
        if cfg.trainer == "sft":
            from safeturn.train.sft import SafeSFTConfig

            return SafeSFTConfig.load(
                None,
                model=cfg.train_model,
                data=data,
                output_dir=out,
                **{**cfg.sft, "merge_lora": True},  # the re-eval loads full weights with hf:
            )
        if cfg.trainer == "grpo":
            from safeturn.train.grpo import SafeGRPOConfig

            return SafeGRPOConfig.load(
                None,
                model=cfg.train_model,
                data=data,
                output_dir=out,
                **{**cfg.grpo, "merge_lora": True},
            )
        from safeturn.train.dream import DreamConfig

        section = dict(cfg.dream)
        sft = section.pop("sft", None)
        rlaif = {**section.pop("rlaif", {}), "data": data}
        return DreamConfig.load(
            None,
            sft=sft,
            rlaif=rlaif,
            model=cfg.train_model,
            output_dir=out,
            sft_data=data,
            **section,
        )

    def train(self) -> dict[str, Any]:
        """Step 4: the configured trainer on `train.jsonl`; returns its result as JSON data."""
        config = self.trainer_config()
        result: Any
        if self.config.trainer == "sft":
            from safeturn.train.sft import train_sft

            result = train_sft(config)
        elif self.config.trainer == "grpo":
            from safeturn.train.grpo import train_grpo

            result = train_grpo(config)
        else:
            from safeturn.train.dream import train_dream

            result = train_dream(config)
        data: dict[str, Any] = result.model_dump(mode="json")
        data.update(trainer=self.config.trainer, checkpoint=str(result.checkpoint))
        _write_json(self.paths.train_result, data)
        return data

    # -- step 6: the before/after report

    def report(self, store: RunStore) -> dict[str, Any]:
        """Step 6: before vs after on the held-out samples; writes JSON, HTML and run reports."""
        from safeturn.report.compare import (
            before_after,
            before_after_json,
            render_before_after_html,
        )
        from safeturn.report.html import write_html
        from safeturn.run.results import load_results

        before = load_results(store, self.state.runs["before-heldout"])
        after = load_results(store, self.state.runs["after-heldout"])
        pairwise = None
        if self.config.pairwise:
            pairwise = _pairwise(after, before, self.config.pairwise, self.config.concurrency)
        report = before_after(before, after, n_resamples=self.config.bootstrap, pairwise=pairwise)
        write_html(before, self.paths.before_html)
        write_html(after, self.paths.after_html)
        context = {
            "config": self.config.model_dump(mode="json"),
            "runs": dict(self.state.runs),
            "steps": {k: v.model_dump(mode="json") for k, v in self.state.steps.items()},
        }
        data = {**before_after_json(report), "loop": context}
        _write_json(self.paths.report_json, data)
        links = [
            ("before: full run report", self.paths.before_html.name),
            ("after: full run report", self.paths.after_html.name),
        ]
        html = render_before_after_html(report, links=links, context=context)
        self.paths.report_html.write_text(html, encoding="utf-8")
        self.events.report(report)
        return data

    def checkpoint(self) -> Path:
        """The trained checkpoint recorded by step 4."""
        data = json.loads(self.paths.train_result.read_text(encoding="utf-8"))
        return Path(str(data["checkpoint"]))


def _pairwise(a: RunResults, b: RunResults, spec: str, concurrency: int) -> PairwiseReport:
    """A's win rate over B by a pairwise judge, on samples matched by id."""
    from safeturn.judges import judge_pairs, load_pairwise_judge
    from safeturn.report.compare import match_runs, pairwise_report

    judge = load_pairwise_judge(spec)
    match = match_runs(a, b)

    async def go() -> list[PairVerdict]:
        try:
            return await judge_pairs(judge, match.requests, concurrency=concurrency)
        finally:
            await judge.aclose()

    return pairwise_report(a, b, judge.name, match, asyncio.run(go()))


def run_loop(
    config: LoopConfig,
    *,
    until: StepName = "report",
    events: LoopEvents | None = None,
) -> LoopResult:
    """Run every unfinished step up to `until` (inclusive); finished steps are skipped.

    Raises:
        LoopError: The out dir belongs to another config, a step has nothing to work on, the
            data would leak into training, or the trainer is unavailable.
    """
    loop = Loop(config, events)
    config.out.mkdir(parents=True, exist_ok=True)
    loop.save()
    ran: list[str] = []
    skipped: list[str] = []
    report: dict[str, Any] | None = None
    store = RunStore(loop.paths.db)
    try:
        for step in STEPS[: STEPS.index(until) + 1]:
            if step != "report" and loop.done(step):
                loop.events.step(step, "already done; skipped")
                skipped.append(step)
                continue
            loop.events.step(step, "running")
            started = time.perf_counter()
            if step == "eval-before":
                loop.eval_before(store)
                loop.finish(step, started, runs=dict(loop.state.runs))
            elif step == "select":
                failures = loop.select(store)
                kinds = [f.kind for f in failures]
                loop.finish(
                    step,
                    started,
                    unsafe=kinds.count("unsafe"),
                    over_refusal=kinds.count("over-refusal"),
                )
            elif step == "synth":
                raw = json.loads(loop.paths.failures.read_text(encoding="utf-8"))
                samples = loop.synthesize(store, [Failure.model_validate(f) for f in raw])
                anchors = sum(s.metadata.get("loop_failure") == "anchor" for s in samples)
                loop.finish(
                    step,
                    started,
                    dialogues=len(samples),
                    anchors=anchors,
                    mode=config.synthesis,
                )
            elif step == "train":
                result = loop.train()
                loop.finish(step, started, **{k: v for k, v in result.items() if k != "model"})
            elif step == "eval-after":
                loop.eval_after(store, loop.checkpoint())
                loop.finish(step, started, run=loop.state.runs["after-heldout"])
            else:
                report = loop.report(store)
                loop.finish(step, started)
            ran.append(step)
            loop.events.step(step, "done")
    finally:
        store.close()
    return LoopResult(
        out=config.out, ran=ran, skipped=skipped, state=loop.state, report=report, notes=loop.notes
    )
