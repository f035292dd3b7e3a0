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
The config lives in `loop_config` (trainer sections in `loop_sections`), the eval runs in
`loop_eval`, failure selection and synthesis in `loop_synth`, `loop.json` in `loop_state`; the
trainer is looked up in the trainer registry (`train.trainers`).

`loop.json` records the config, the run ids and every finished step. A re-run with the same
out dir skips finished steps, and one with a different config (other than report-only fields)
is refused rather than mixing two experiments in one folder.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safeturn.attacks.builder import localize_images
from safeturn.errors import LoopError
from safeturn.report.pairwise_judging import judge_runs_pairwise
from safeturn.run.engine import start_run
from safeturn.run.store import RunStore
from safeturn.schema import Sample, write_jsonl
from safeturn.train.config import is_vlm, resolve_model_dir
from safeturn.train.loop_config import LoopConfig
from safeturn.train.loop_eval import SPLIT_KEY, build_samples, eval_settings, execute_runs
from safeturn.train.loop_split import check_no_leak, load_seeds
from safeturn.train.loop_state import (
    STEPS,
    LoopEvents,
    LoopPaths,
    LoopResult,
    LoopState,
    RunName,
    StepName,
    StepRecord,
    now,
    open_state,
    write_json,
)
from safeturn.train.loop_synth import (
    GROUP_KEY,
    Failure,
    anchor_training_set,
    bridge_images,
    select_failures,
    template_training_set,
)
from safeturn.train.trainers import get_trainer

__all__ = [
    "SPLIT_KEY",
    "STEPS",
    "Loop",
    "LoopEvents",
    "LoopPaths",
    "LoopResult",
    "LoopState",
    "RunName",
    "StepName",
    "StepRecord",
    "run_loop",
]

logger = logging.getLogger(__name__)


class Loop:
    """One out dir's loop: its config, state, store and steps (see the module docstring)."""

    def __init__(self, config: LoopConfig, events: LoopEvents | None = None) -> None:
        self.config = config
        self.paths = LoopPaths(config.out)
        self.events = events or LoopEvents()
        self.notes: list[str] = []
        self.state = open_state(config, self.paths)

    def save(self) -> None:
        """Write `loop.json` atomically."""
        write_json(self.paths.state, self.state.model_dump(mode="json"))

    def done(self, step: StepName) -> bool:
        """Whether `step` finished in an earlier (or this) invocation."""
        return step in self.state.steps

    def finish(self, step: StepName, started: float, **summary: Any) -> None:
        """Record `step` as finished, with its wall time and summary."""
        record = StepRecord(
            finished_at=now(), seconds=time.perf_counter() - started, summary=summary
        )
        self.state.steps[step] = record
        self.save()

    # -- steps 1 and 5: evaluation runs

    def execute(self, store: RunStore, names: list[RunName]) -> None:
        """Run (or resume) the named eval runs."""
        execute_runs(store, self.state.runs, names, self.events)

    def eval_before(self, store: RunStore) -> dict[str, Any]:
        """Step 1: the base model on the training seeds and on the held-out seeds."""
        if "before-train" not in self.state.runs or "before-heldout" not in self.state.runs:
            train, held = build_samples(self.config, self.paths, self.notes)
            settings = eval_settings(self.config, self.config.eval_spec)
            self.state.runs["before-train"] = start_run(store, train, settings)
            self.state.runs["before-heldout"] = start_run(store, held, settings)
            store.flush()
            self.save()  # the run ids first: a crash from here on resumes these runs
        self.execute(store, ["before-train", "before-heldout"])
        return {"runs": dict(self.state.runs)}

    def eval_after(self, store: RunStore) -> dict[str, Any]:
        """Step 5: the trained checkpoint on exactly the held-out samples of step 1."""
        if "after-heldout" not in self.state.runs:
            held = store.load_samples(self.state.runs["before-heldout"])
            settings = eval_settings(self.config, f"hf:{self.checkpoint().resolve()}")
            self.state.runs["after-heldout"] = start_run(store, held, settings)
            store.flush()
            self.save()
        self.execute(store, ["after-heldout"])
        return {"run": self.state.runs["after-heldout"]}

    # -- steps 2 and 3: failures and training data

    def select_step(self, store: RunStore) -> dict[str, Any]:
        """Step 2, summarised: how many failures of each kind."""
        kinds = [f.kind for f in self.select(store)]
        return {"unsafe": kinds.count("unsafe"), "over_refusal": kinds.count("over-refusal")}

    def synth_step(self, store: RunStore) -> dict[str, Any]:
        """Step 3 on the failures of step 2, summarised."""
        raw = json.loads(self.paths.failures.read_text(encoding="utf-8"))
        samples = self.synthesize(store, [Failure.model_validate(f) for f in raw])
        anchors = sum(s.metadata.get("loop_failure") == "anchor" for s in samples)
        return {"dialogues": len(samples), "anchors": anchors, "mode": self.config.synthesis}

    def select(self, store: RunStore) -> list[Failure]:
        """Step 2: failures on the training seeds (benign ones only with `include_benign`)."""
        from safeturn.run.results import load_results

        results = load_results(store, self.state.runs["before-train"])
        failures = [
            f for f in select_failures(results) if f.kind == "unsafe" or self.config.include_benign
        ]
        write_json(self.paths.failures, [f.model_dump(mode="json") for f in failures])
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

        Raises:
            LoopError: The base model cannot be trained here, or the section's values are
                rejected by the trainer's config.
        """
        return self.config.trainer_section.trainer_config(
            model=self.config.train_model,
            data=self.paths.train_data,
            output_dir=self.paths.checkpoint,
        )

    def train(self, _store: RunStore | None = None) -> dict[str, Any]:
        """Step 4: the configured trainer on `train.jsonl`; returns its result as JSON data."""
        result = get_trainer(self.config.trainer).train(self.trainer_config())
        data: dict[str, Any] = result.model_dump(mode="json")
        data.update(trainer=self.config.trainer, checkpoint=str(data["checkpoint"]))
        write_json(self.paths.train_result, data)
        return {k: v for k, v in data.items() if k != "model"}

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
            pairwise = judge_runs_pairwise(
                after, before, self.config.pairwise, concurrency=self.config.concurrency
            )
        report = before_after(before, after, n_resamples=self.config.bootstrap, pairwise=pairwise)
        write_html(before, self.paths.before_html)
        write_html(after, self.paths.after_html)
        context = {
            "config": self.config.model_dump(mode="json"),
            "runs": dict(self.state.runs),
            "steps": {k: v.model_dump(mode="json") for k, v in self.state.steps.items()},
        }
        data = {**before_after_json(report), "loop": context}
        write_json(self.paths.report_json, data)
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


_STEPS: dict[StepName, Callable[[Loop, RunStore], dict[str, Any]]] = {
    "eval-before": Loop.eval_before,
    "select": Loop.select_step,
    "synth": Loop.synth_step,
    "train": Loop.train,
    "eval-after": Loop.eval_after,
}


def run_loop(
    config: LoopConfig,
    *,
    until: StepName = "report",
    events: LoopEvents | None = None,
) -> LoopResult:
    """Run every unfinished step up to `until` (inclusive); finished steps are skipped.

    The report step always runs again (it is cheap, and report-only settings may change).

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
            if step == "report":
                report = loop.report(store)
                loop.finish(step, started)
            else:
                loop.finish(step, started, **_STEPS[step](loop, store))
            ran.append(step)
            loop.events.step(step, "done")
    finally:
        store.close()
    return LoopResult(
        out=config.out, ran=ran, skipped=skipped, state=loop.state, report=report, notes=loop.notes
    )
