"""DREAM step 2: risk-aware SFT samples whose reply first names the observed risks.

Each training reply starts by saying what is risky and where it sits ("The image shows …",
"The text in the image …"), then declines and offers safe help for a harmful sample, or answers
helpfully with a note of care for a benign one. Naming the source is the point: a student that
learns to look at the image and at text drawn in it refuses typographic attacks for the right
reason instead of reacting to trigger words in the prompt.

Two writers produce the reply. `TemplateWriter` needs no model: it composes the reply from the
kept risks, the category's policy (`guard.policies`) and refusal wording (`guard.refusals`), and
uses the sample's reference answer for the helpful part. A writer ChatModel writes it from our
prompt instead, with every call recorded in the run database like the rest of `synth`.

Earlier assistant turns are dropped from the training dialogue: every assistant turn carries
loss, and turns written by an attack builder (fake compliance, say) must not be learned. The user
turns left are merged into one message, so the template never sees two user turns in a row.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from safeturn.guard.policies import PolicyLibrary
from safeturn.guard.refusals import CONCERNS, Concern
from safeturn.judges import detect_refusal
from safeturn.models.base import ChatModel
from safeturn.run.calls import cached_generate
from safeturn.run.store import RunStore
from safeturn.schema import Dialogue, GenerateParams, Message, Sample, TextPart
from safeturn.synth.mrd import request_context
from safeturn.synth.prompts import SOURCE_PHRASES, writer_system
from safeturn.synth.risks import Risk, RiskRecord, RiskSource
from safeturn.taxonomy import Category

logger = logging.getLogger(__name__)

ReplyMode = Literal["decline", "help"]
ItemCallback = Callable[[str], None]

_SOURCE_LEADS: dict[RiskSource, str] = {
    "text_instruction": "Your request itself carries a risk",
    "text_content": "Other text you shared carries a risk",
    "image_content": "The image shows a risk",
    "text_in_image": "The text in the image carries a risk",
}
_GENERIC = Concern("something that could cause harm", "the safe parts of the topic")
_STILL = "You may still "


def reply_mode(sample: Sample, kept: Sequence[Risk]) -> ReplyMode:
    """Decline a sample labelled harmful, or an unlabelled one with kept risks; else help.

    A sample labelled harmful is declined even when no risk survived verification: a helpful
    answer to it would teach compliance, which costs more than a reply that names no risk.
    """
    if sample.harmful is True or (sample.harmful is None and kept):
        return "decline"
    return "help"


def main_category(sample: Sample, kept: Sequence[Risk]) -> Category | None:
    """The category a decline is about: the commonest among the kept risks, else the sample's.

    A tie goes to the risk listed first; the sample's category counts only when canonical.
    """
    if kept:
        counts = Counter(risk.category for risk in kept)
        return max(counts, key=lambda c: (counts[c], -[r.category for r in kept].index(c)))
    try:
        return Category(sample.category) if sample.category else None
    except ValueError:
        return None


def describe_risks(kept: Sequence[Risk]) -> str:
    """One sentence per risk, led by where it sits: "The image shows a risk: …"."""
    sentences = []
    for risk in kept:
        content = risk.content.rstrip(" .")
        first = content.split(maxsplit=1)[0]
        if first != "I" and first[0].isupper() and (len(first) == 1 or first[1:].islower()):
            content = content[0].lower() + content[1:]  # "A person …" but not "FBI …"
        label = risk.category.value.replace("_", " ")
        sentences.append(f"{_SOURCE_LEADS[risk.source]}: {content} ({label}).")
    return " ".join(sentences)


class TemplateWriter:
    """Composes replies without a model, from the risks, policies and refusal wording.

    Args:
        policies: Where the "what I can still help with" clause comes from (default: ours).
    """

    name = "template"

    def __init__(self, policies: PolicyLibrary | None = None) -> None:
        self.policies = policies or PolicyLibrary.default()

    def write(self, sample: Sample, kept: Sequence[Risk], mode: ReplyMode) -> str | None:
        """The reply, or None for a helpful one when the sample has no reference answer.

        A template cannot answer a question; a writer model can, so the caller skips it.
        """
        if mode == "decline":
            return self._decline(sample, kept)
        answer = (sample.reference_answer or "").strip()
        if not answer:
            return None
        if not kept:
            return f"I see no safety risk in this request. {answer}"
        return (
            f"Before answering, one thing to note. {describe_risks(kept)} "
            f"I'll keep to the safe side of this. {answer}"
        )

    def _decline(self, sample: Sample, kept: Sequence[Risk]) -> str:
        category = main_category(sample, kept)
        concern = _GENERIC if category is None else CONCERNS.get(category, _GENERIC)
        if kept:
            joined = "Together these point" if len(kept) > 1 else "This points"
            head = (
                f"Before answering, here is what I notice. {describe_risks(kept)} {joined} "
                f"towards {concern.concern}, so I can't help with this request."
            )
        else:
            head = f"I can't help with this request: it points towards {concern.concern}."
        return f"{head} {self.safe_help(category, concern)}"

    def safe_help(self, category: Category | None, concern: Concern) -> str:
        """The policy's "You may still …" clause as an offer, else the concern's offer.

        Reusing the policy keeps the training reply and the guard's runtime policy in step: what
        the model learns to offer is what the guard tells it it may still do.
        """
        policy = self.policies.for_category(category)
        start = policy.find(_STILL)
        if start >= 0:
            clause = policy[start + len(_STILL) :]
            end = clause.find(". ")
            clause = (clause if end < 0 else clause[:end]).rstrip(". ")
            # policies speak to the model about "the user"; the reply speaks to the user
            clause = clause.replace("the user's", "your").replace("the user", "you")
            return f"Instead, I can {clause}."
        return f"I'm happy to help with {concern.offer} instead."


class RiskSFTStats(BaseModel):
    """Counts reported at the end of a risk-aware SFT build."""

    samples: int = 0
    written: int = 0
    declined: int = 0
    helped: int = 0
    no_record: int = 0
    """Samples the risk file has no record for (MRD failed on them, or they were not run)."""
    no_answer: int = 0
    """Benign samples skipped: the template writer has no reference answer to give."""
    writer_fallbacks: int = 0
    """Writer replies replaced by the template (empty, or complied with a harmful request)."""
    errors: int = 0
    skipped: list[tuple[str, str]] = Field(default_factory=list)
    """(sample id, why) of every sample left out."""


def training_dialogue(sample: Sample, reply: str) -> Dialogue:
    """The system and user messages of `sample`, then the reply as the one assistant turn.

    With the earlier assistant turns dropped, a multi-turn sample's user turns would follow
    one another; chat templates either reject that (strict alternation) or render a
    conversation no model ever sees. They are merged into one user message instead.
    """
    kept = [m for m in sample.dialogue.messages if m.role != "assistant"]
    return Dialogue(messages=[*merge_user_runs(kept), Message.assistant(reply)])


def merge_user_runs(messages: Sequence[Message]) -> list[Message]:
    """Consecutive user messages as one, parts in order; texts that meet join by a blank line."""
    out: list[Message] = []
    for message in messages:
        if not (out and message.role == "user" and out[-1].role == "user"):
            out.append(message)
            continue
        parts = list(out[-1].parts)
        for part in message.parts:
            if parts and isinstance(part, TextPart) and isinstance(parts[-1], TextPart):
                parts[-1] = TextPart(text=f"{parts[-1].text}\n\n{part.text}")
            else:
                parts.append(part)
        out[-1] = Message(role="user", parts=parts)
    return out


def writer_request(sample: Sample, kept: Sequence[Risk], mode: ReplyMode) -> Dialogue:
    """What a writer model sees: our prompt, the request with its images, and the risk list."""
    if kept:
        lines = [
            f"- {risk.content} (where: {SOURCE_PHRASES[risk.source]}; "
            f"category: {risk.category.value})"
            for risk in kept
        ]
        risks = "Observed risks:\n" + "\n".join(lines)
    else:
        risks = "Observed risks: none."
    text = f"{request_context(sample)}\n\n{risks}"
    if mode == "help" and sample.reference_answer:
        text += f"\n\nA reference answer you may draw on:\n{sample.reference_answer.strip()}"
    return Dialogue(
        messages=[
            Message.system(writer_system(mode == "decline")),
            Message.user(text, images=sample.dialogue.images),
        ]
    )


class RiskSFTBuilder:
    """Builds risk-aware SFT samples with the template or a writer model.

    Args:
        writer: A ChatModel that writes the replies, or None for `TemplateWriter`.
        store: The run database (required with a writer model).
        run_id: The run its calls belong to (resume reuses it).
        template: The template writer; also the fallback for a writer model's bad replies.
        params: Sampling options of writer calls.
        concurrency: Samples written at once.
    """

    def __init__(
        self,
        writer: ChatModel | None = None,
        *,
        store: RunStore | None = None,
        run_id: str | None = None,
        template: TemplateWriter | None = None,
        params: GenerateParams | None = None,
        concurrency: int = 8,
    ) -> None:
        if writer is not None and (store is None or run_id is None):
            raise ValueError("a writer model needs a run database and run id to record calls")
        self.writer = writer
        self.store = store
        self.run_id = run_id
        self.template = template or TemplateWriter()
        self.params = params or GenerateParams(max_tokens=256, temperature=0.0)
        self.stats = RiskSFTStats()
        self._gate = asyncio.Semaphore(max(1, concurrency))

    @property
    def writer_name(self) -> str:
        """`template` or the writer model's name, stored in each sample's metadata."""
        return self.template.name if self.writer is None else self.writer.name

    async def run(
        self,
        samples: Sequence[Sample],
        records: Mapping[str, RiskRecord],
        on_item: ItemCallback | None = None,
    ) -> list[Sample]:
        """One training sample per input sample that has a record, in input order."""
        self.stats = RiskSFTStats(samples=len(samples))
        jobs: list[asyncio.Task[Sample | None]] = []
        async with asyncio.TaskGroup() as group:
            for sample in samples:
                job = self._guarded(sample.id, self._sample(sample, records.get(sample.id)))
                jobs.append(group.create_task(self._notify(job, sample.id, on_item)))
        out = [done for job in jobs if (done := job.result()) is not None]
        self.stats.written = len(out)
        return out

    async def _notify(
        self, job: Coroutine[Any, Any, Sample | None], item: str, on_item: ItemCallback | None
    ) -> Sample | None:
        try:
            return await job
        finally:
            if on_item is not None:
                on_item(item)

    async def _guarded(
        self, sample_id: str, job: Coroutine[Any, Any, Sample | None]
    ) -> Sample | None:
        try:
            return await job
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            logger.warning("risk-sft sample %s failed: %s", sample_id, message)
            self.stats.errors += 1
            self.stats.skipped.append((sample_id, message))
            return None

    def _skip(self, sample_id: str, why: str) -> None:
        self.stats.skipped.append((sample_id, why))

    async def _sample(self, sample: Sample, record: RiskRecord | None) -> Sample | None:
        if record is None:
            self.stats.no_record += 1
            self._skip(sample.id, "no risk record (MRD failed on it or did not run)")
            return None
        kept = record.kept()
        mode = reply_mode(sample, kept)
        reply = await self._reply(sample, kept, mode)
        if reply is None:
            self.stats.no_answer += 1
            self._skip(sample.id, "benign sample without a reference answer (use --writer MODEL)")
            return None
        if mode == "decline":
            self.stats.declined += 1
        else:
            self.stats.helped += 1
        metadata = {
            **sample.metadata,
            "synth": "dream-risk-sft",
            "reply_mode": mode,
            "writer": self.writer_name,
            "risk_teacher": record.teacher,
            "risks": [risk.model_dump(mode="json") for risk in kept],
        }
        if sample.dialogue.n_turns > 1:  # merged into one user message by `training_dialogue`
            metadata["source_turns"] = sample.dialogue.n_turns
        return Sample(
            id=sample.id,
            source=sample.source,
            category=sample.category,
            strategy=sample.strategy,
            harmful=sample.harmful,
            seed_question=sample.seed_question,
            reference_answer=reply,
            dialogue=training_dialogue(sample, reply),
            metadata=metadata,
        )

    async def _reply(self, sample: Sample, kept: list[Risk], mode: ReplyMode) -> str | None:
        if self.writer is None:
            return self.template.write(sample, kept, mode)
        assert self.store is not None and self.run_id is not None
        async with self._gate:
            reply = await cached_generate(
                self.store,
                self.run_id,
                self.writer,
                writer_request(sample, kept, mode),
                self.params,
                sample_id=sample.id,
                turn=1,
                role="expert",
            )
        text = reply.text.strip()
        # only a decline is checked: a helpful reply that names a risk ("… would be dangerous")
        # reads like a refusal to the phrase detector, so checking it would reject good replies
        if text and (mode == "help" or detect_refusal(text)[0]):
            return text
        # a writer that complied with a harmful request would teach exactly what DREAM removes
        self.stats.writer_fallbacks += 1
        logger.info("risk-sft %s: writer reply did not %s; using the template", sample.id, mode)
        return self.template.write(sample, kept, mode)
