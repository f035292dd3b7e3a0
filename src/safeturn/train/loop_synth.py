"""Training dialogues from a model's own failures: the `select` and `synth` steps of the loop.

A failure is a harmful training dialogue that the headline judge found unsafe at some turn, or a
benign twin whose final reply refused (over-refusal). Training on failures only, rather than on
every dialogue, spends the step budget where the model is wrong; the benign over-refusals are
kept beside the harmful failures so that the update is pushed away from refusing everything.

`template` synthesis is offline and deterministic. It keeps the failing dialogue's user turns
(what the model actually struggled with) and rewrites only the assistant turns:

- harmful: the model's own replies before its first unsafe turn stay (they were judged safe, and
  keeping them keeps the data close to the model's own distribution); from that turn on, every
  reply is the guard's helpful refusal for the sample's category (`guard.refusals`);
- benign: replies that neither refused nor were judged unsafe stay; a refused final turn gets the
  model's own non-refused, judged-safe answer to the same seed in another dialogue when there is
  one, and otherwise a plain helpful template (marked as such in the metadata, so it can be
  filtered out or replaced by an expert model's answer);
- benign anchors (`anchor_training_set`): benign training dialogues the model already answered
  well, kept as they are, as weight against learning to refuse the look-alikes.

`intersafe` synthesis hands the failing harmful seeds to `synth.Synthesizer` (attacker and
expert models); benign over-refusals still come from the template path, since InterSafe-V only
writes harmful dialogues.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

from pydantic import BaseModel

from safeturn.guard.refusals import refusal_text
from safeturn.models.bridge import OcrBridge, bridge_dialogue
from safeturn.run.results import RunResults, SampleOutcome
from safeturn.schema import Dialogue, Message, Sample
from safeturn.taxonomy import Category

FailureKind = Literal["unsafe", "over-refusal"]

LOOP_SOURCE = "safeturn-loop"
"""`Sample.source` of every synthesized training dialogue."""

GROUP_KEY = "loop_group"
"""Sample metadata key holding the seed group a dialogue was built from (see `loop.split`)."""

HELPFUL_TEMPLATE = (
    "Sure, happy to help with that. {statement} Here is a short, practical outline: start with "
    "what you need and why, then go through it one step at a time, checking each step before "
    "moving on, and finish by reviewing the result. Tell me which part you would like in more "
    "detail."
)
"""The offline stand-in for a helpful answer to a benign request the model refused."""


class Failure(BaseModel):
    """One training dialogue the base model got wrong."""

    sample_id: str
    kind: FailureKind
    group: str
    seed_id: str
    strategy: str
    turns: int
    earliest_unsafe_turn: int | None = None
    """Harmful failures: the first turn the headline judge found unsafe."""


def _seed_id(sample: Sample) -> str:
    seed = sample.metadata.get("seed_id")
    return seed if isinstance(seed, str) else sample.id


def _group(sample: Sample) -> str:
    group = sample.metadata.get(GROUP_KEY)
    return group if isinstance(group, str) else _seed_id(sample)


def select_failures(results: RunResults) -> list[Failure]:
    """The harmful dialogues judged unsafe at any turn and the benign twins refused at the end.

    Samples that errored are left out: there is no reply to learn from, and the error is already
    in the run. Verdicts are the run's headline judge's, as in every other report.
    """
    failures: list[Failure] = []
    for outcome in results.outcomes:
        sample = outcome.sample
        if outcome.status != "done":
            continue
        kind: FailureKind | None = None
        earliest = outcome.earliest_unsafe_turn
        if sample.harmful is True and earliest is not None:
            kind = "unsafe"
        elif sample.harmful is False:
            final = outcome.final
            if final is not None and final.verdict is not None and final.verdict.refused:
                kind = "over-refusal"
        if kind is not None:
            failures.append(
                Failure(
                    sample_id=sample.id,
                    kind=kind,
                    group=_group(sample),
                    seed_id=_seed_id(sample),
                    strategy=sample.strategy,
                    turns=sample.turns,
                    earliest_unsafe_turn=earliest if kind == "unsafe" else None,
                )
            )
    return failures


def _category(sample: Sample) -> Category | None:
    try:
        return Category(sample.category) if sample.category else None
    except ValueError:
        return None


def _statement(sample: Sample) -> str:
    instruction = sample.metadata.get("instruction")
    if isinstance(instruction, str) and instruction.strip():
        return instruction.strip()
    return (sample.seed_question or "").strip()


def _good_benign_reply(outcome: SampleOutcome, turn: int) -> str | None:
    """The model's reply at `turn` if it neither refused nor was judged unsafe."""
    for record in outcome.turns:
        if record.turn == turn:
            verdict = record.verdict
            if verdict is None or verdict.label != "safe" or verdict.refused:
                return None
            text = record.reply.text.strip()
            return text or None
    return None


def own_helpful_answers(results: RunResults) -> dict[str, str]:
    """Seed id → the model's own good final answer to a benign seed, from its shortest dialogue.

    A good answer neither refused nor was judged unsafe. It is what the model can already do
    for that request, so it is the most on-distribution target for an over-refused twin.
    """
    best: dict[str, tuple[int, str, str]] = {}
    for outcome in results.outcomes:
        sample = outcome.sample
        if sample.harmful is not False or outcome.final is None:
            continue
        text = _good_benign_reply(outcome, sample.turns)
        if text is None:
            continue
        key = (sample.turns, sample.id, text)
        seed = _seed_id(sample)
        if seed not in best or key < best[seed]:
            best[seed] = key
    return {seed: text for seed, (_, _, text) in best.items()}


def _turn_messages(sample: Sample) -> list[list[Message]]:
    """The sample's non-assistant messages, cut into turns that each end with a user message."""
    turns: list[list[Message]] = []
    pending: list[Message] = []
    for message in sample.dialogue.messages:
        if message.role == "assistant":
            continue  # live mode: the model wrote its own assistant turns
        pending.append(message)
        if message.role == "user":
            turns.append(pending)
            pending = []
    return turns


def template_dialogue(
    outcome: SampleOutcome, failure: Failure | None, helpful: dict[str, str]
) -> Sample:
    """The training dialogue for one failure, or for a benign anchor when `failure` is None.

    See the module docstring for the rules; an anchor is a benign dialogue the model already
    answered well, so it keeps every reply.
    """
    sample = outcome.sample
    replies = {record.turn: record.reply.text.strip() for record in outcome.turns}
    messages: list[Message] = []
    sources: list[str] = []
    refusal = refusal_text(_category(sample))
    for turn, user_messages in enumerate(_turn_messages(sample), start=1):
        messages.extend(user_messages)
        if failure is not None and failure.kind == "unsafe":
            earliest = failure.earliest_unsafe_turn or 1
            if turn < earliest and replies.get(turn):
                text, source = replies[turn], "model"
            else:
                text, source = refusal, "refusal-library"
        else:
            own = _good_benign_reply(outcome, turn)
            if own is not None:
                text, source = own, "model"
            elif turn == sample.turns and _seed_id(sample) in helpful:
                text, source = helpful[_seed_id(sample)], "model-other-dialogue"
            else:
                text = HELPFUL_TEMPLATE.format(statement=_statement(sample))
                source = "helpful-template"
        messages.append(Message.assistant(text))
        sources.append(source)
    return Sample(
        id=f"loop-{sample.id}",
        source=LOOP_SOURCE,
        category=sample.category,
        strategy=sample.strategy,
        harmful=sample.harmful,
        seed_question=sample.seed_question,
        reference_answer=messages[-1].text,
        dialogue=Dialogue(messages=messages),
        metadata={
            **sample.metadata,
            "loop_failure": failure.kind if failure is not None else "anchor",
            "from_sample": sample.id,
            "assistant_sources": sources,
            "synth": "template",
        },
    )


def template_training_set(results: RunResults, failures: Sequence[Failure]) -> list[Sample]:
    """One template training dialogue per failure, in the order of `failures`."""
    by_id = {o.sample.id: o for o in results.outcomes}
    helpful = own_helpful_answers(results)
    return [template_dialogue(by_id[f.sample_id], f, helpful) for f in failures]


def anchor_training_set(results: RunResults, exclude: Iterable[str] = ()) -> list[Sample]:
    """Benign dialogues the model answered well at every turn, with its own replies.

    Training on refusals alone teaches refusing; these anchors show the same model answering
    the benign look-alikes of the very requests it is taught to refuse, so the update has a
    reason not to spread to them. They are the model's own replies, so they add no new
    behaviour, only weight against losing the old one.
    """
    skip = set(exclude)
    anchors: list[Sample] = []
    for outcome in results.outcomes:
        sample = outcome.sample
        if sample.harmful is not False or sample.id in skip or outcome.status != "done":
            continue
        turns = range(1, sample.turns + 1)
        if outcome.final is not None and all(_good_benign_reply(outcome, t) for t in turns):
            anchors.append(template_dialogue(outcome, None, {}))
    return anchors


def bridge_images(samples: Iterable[Sample], bridge: OcrBridge | None = None) -> list[Sample]:
    """Replace every image by the text the OCR bridge reads in it (for text-only models).

    A text-only model sees images only through the bridge at evaluation time, so it must be
    trained on the same bridged text; `train/data.py` refuses images for text-only models.
    The bridge caches readings by image hash, so images already read during the evaluation cost
    nothing here.
    """
    reader = bridge or OcrBridge()
    out: list[Sample] = []
    for sample in samples:
        if not sample.dialogue.images:
            out.append(sample)
            continue
        bridged = bridge_dialogue(sample.dialogue, reader, label=f"sample {sample.id!r}")
        out.append(sample.model_copy(update={"dialogue": bridged.dialogue}))
    return out
