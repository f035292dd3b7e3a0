"""Multi-turn rollouts for GRPO: the dataset's user turns, the policy's assistant turns.

A multi-turn attack only works if the model's own earlier answers lead it on, so the policy
writes every assistant turn on its own history (`history="own"`, on-policy). With
`history="reference"` each turn is instead sampled on the dataset's history (the reference
assistant turns), which keeps a weak starting policy from derailing later turns; the loss is
still taken on the sequence of the policy's own turns, so for t > 1 the sampled context differs
from the trained one (off-policy; TRL applies no importance correction without vLLM logprobs).

Plugged into TRL's `GRPOTrainer(rollout_func=...)`: every dataset row's `prompt` is the whole
dialogue (the first message carries the sample id under `safeturn_id`); the rollout renders the
policy's dialogue with the model's own chat template, and returns the first user turn as
`prompt_ids`, the rest as `completion_ids`, and an `env_mask` that is 1 on assistant tokens
only (user turns, template headers and image tokens carry no loss; see `masks.build_example`).
The scored view of each rollout is kept in `records` under the key returned in the
`rollout_key` column, for the reward function.

Length. Every dialogue must fit `max_length` with every reply at `max_turn_tokens`; one that
does not is an error naming it when the rollout is built, before any training. So a rollout
cannot run out of room before its last (usually harmful) turn, which would otherwise be a way
to dodge it: replies count against `max_length` by the tokens they were sampled as. Should a
rollout still run out (settings changed after the check), it ends early, keeps the turns it
wrote, and the reward scores the turns it lacks as failures.
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

from safeturn.errors import RolloutError as RolloutError
from safeturn.schema import Dialogue, ImagePart, Message, Sample
from safeturn.train.masks import IGNORE_INDEX, ChatEncoder, MaskError, build_example

logger = logging.getLogger(__name__)

History = Literal["own", "reference"]
SAMPLE_KEY = "safeturn_id"
"""Key on a prompt's first message that names the sample it was built from."""
_RECORDS_KEPT = 4096


@dataclass(frozen=True)
class RolloutSettings:
    """How each assistant turn is sampled."""

    history: History = "own"
    max_turn_tokens: int = 64
    """New tokens per assistant turn."""
    max_length: int = 1024
    """Tokens of a whole rollout: every dialogue must fit with all replies at max_turn_tokens."""
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass
class RolloutRecord:
    """One rollout as the judge sees it: per turn, the context the policy saw and its reply."""

    sample: Sample
    contexts: list[Dialogue]
    """The dialogue up to (and including) the user message each reply answers."""
    replies: list[str]
    hit_limit: list[bool]
    """Turns cut by `max_turn_tokens` before the model ended them."""
    planned_turns: int
    sampled: list[list[int]] = field(default_factory=list)
    """The token ids each reply was sampled as (before its end token)."""
    retokenized: int = 0
    """Replies whose trained tokens differ from the sampled ones (set by `tokens`)."""

    @property
    def ended_early(self) -> bool:
        """The rollout stopped before answering every user turn (length budget)."""
        return len(self.replies) < self.planned_turns

    def dialogue(self) -> Dialogue:
        """The policy's conversation: every user message, its replies after their turns."""
        return _interleave(self.sample.dialogue, self.replies, keep_tail=False)


def answer_points(dialogue: Dialogue) -> list[int]:
    """Indices of the user messages that assistant turns answer.

    Each user message followed by an assistant message or ending the dialogue is one; a run of
    consecutive user messages is answered once, after its last.
    """
    messages = dialogue.messages
    return [
        k
        for k, m in enumerate(messages)
        if m.role == "user" and (k + 1 == len(messages) or messages[k + 1].role != "user")
    ]


def _policy_context(dialogue: Dialogue, replies: Sequence[str], point: int) -> Dialogue:
    """Non-assistant messages up to `point`, with the policy's replies where turns ended."""
    messages: list[Message] = []
    points = iter(answer_points(dialogue))
    replies_left = iter(replies)
    next_point = next(points, None)
    for k, message in enumerate(dialogue.messages[: point + 1]):
        if message.role == "assistant":
            continue
        messages.append(message)
        if k == next_point and k < point:
            messages.append(Message.assistant(next(replies_left)))
            next_point = next(points, None)
    return Dialogue(messages=messages)


def _interleave(dialogue: Dialogue, replies: Sequence[str], *, keep_tail: bool) -> Dialogue:
    """The dataset's non-assistant messages with the policy's replies after answered turns.

    With `keep_tail`, the user messages after the last reply stay (a VLM rollout that ended
    early keeps its later images, so the image count matches the dataset row's).
    """
    points = answer_points(dialogue)
    if not replies:
        raise RolloutError("a rollout needs at least one reply")
    last = points[len(replies) - 1]
    context = _policy_context(dialogue, replies, last)
    messages = [*context.messages, Message.assistant(replies[-1])]
    if keep_tail:
        messages += [m for m in dialogue.messages[last + 1 :] if m.role != "assistant"]
    return Dialogue(messages=messages)


def _reference_context(dialogue: Dialogue, point: int, label: str) -> Dialogue:
    """The dataset's messages up to `point`; every earlier turn must have its reference reply."""
    prefix = dialogue.messages[: point + 1]
    for k in answer_points(dialogue):
        if k >= point:
            break
        if dialogue.messages[k + 1].role != "assistant":
            raise RolloutError(
                f"{label}: history='reference' needs a reference assistant reply after every "
                f"user turn but the last; message {k} has none"
            )
    return Dialogue(messages=prefix)


def prompt_messages(sample: Sample, *, structured: bool) -> list[dict[str, Any]]:
    """TRL's conversational `prompt` for a sample: the whole dialogue, tagged with its id.

    Args:
        sample: The dialogue (images already bridged to text for a text-only model).
        structured: Part-list content with `{"type": "image"}` placeholders (VLMs, whose images
            TRL fills from the row's `images` column); plain strings otherwise.
    """
    out: list[dict[str, Any]] = []
    for message in sample.dialogue.messages:
        content: Any
        if structured:
            content = [
                {"type": "image", "text": None}
                if isinstance(p, ImagePart)
                else {"type": "text", "text": p.text}
                for p in message.parts
            ]
        else:
            content = message.text
        out.append({"role": message.role, "content": content, SAMPLE_KEY: None})
    out[0][SAMPLE_KEY] = sample.id
    return out


def sample_id_of(prompt: Any) -> str:
    """The sample id a prompt built by `prompt_messages` carries."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], Mapping):
        value = prompt[0].get(SAMPLE_KEY)
        if isinstance(value, str):
            return value
    raise RolloutError(
        "a GRPO prompt does not carry a safeturn sample id; build the dataset with "
        "safeturn.train.grpo (prompt_messages), not by hand"
    )


class MultiTurnRollout:
    """TRL's `rollout_func`: roll each prompt's dialogue out turn by turn with the policy.

    Args:
        samples: The training samples by id (what the prompts name).
        tokenizer_or_processor: The policy's tokenizer (text) or processor (VLM).
        settings: Sampling and length settings.
    """

    def __init__(
        self,
        samples: Mapping[str, Sample],
        tokenizer_or_processor: Any,
        settings: RolloutSettings | None = None,
    ) -> None:
        self.samples = dict(samples)
        self.processing = tokenizer_or_processor
        self.settings = settings or RolloutSettings()
        self.encoder = ChatEncoder(tokenizer_or_processor, "rollout")
        self.tokenizer = self.encoder.tokenizer
        self.records: OrderedDict[str, RolloutRecord] = OrderedDict()
        self.stats = RolloutStats()
        """Counts since the trainer last logged them (`drain_stats`)."""
        self.end_tokens: list[str] | None = None
        """End-of-turn tokens for the loss spans; set from the model's eos ids on first use."""
        self._keys: Iterator[int] = itertools.count()
        self._base_lengths: dict[tuple[str, int], int] = {}
        """Tokens of each (sample, turn) context with empty replies, as `_used` needs them."""
        for sample in self.samples.values():
            self._check(sample)

    def _check(self, sample: Sample) -> None:
        label = f"sample {sample.id!r}"
        points = answer_points(sample.dialogue)
        if not points:
            raise RolloutError(f"{label}: has no user message to answer")
        if sample.dialogue.images and not self.encoder.is_vlm:
            raise RolloutError(
                f"{label}: has images but the policy is text-only; bridge them to text first"
            )
        if self.settings.history == "reference":
            _reference_context(sample.dialogue, points[-1], label)
        needed = self.worst_case_length(sample)
        if needed > self.settings.max_length:
            turns = f"{len(points)} turn{'s' if len(points) > 1 else ''}"
            raise RolloutError(
                f"{label}: its {turns} need {needed} tokens with every reply at "
                f"max_turn_tokens={self.settings.max_turn_tokens}, more than "
                f"max_length={self.settings.max_length}; a rollout would stop before its last "
                "turn. Raise max_length, lower max_turn_tokens or max_turns, or drop the dialogue"
            )

    def worst_case_length(self, sample: Sample) -> int:
        """Tokens a rollout of `sample` can reach: its last context plus every reply in full.

        The last turn's context with empty replies (template and user turns, images included),
        plus `max_turn_tokens` for each of the T replies; with `history="reference"` also the
        last reference context plus one reply, the length `roll` checks before that turn.
        """
        dialogue = sample.dialogue
        points = answer_points(dialogue)
        turns = len(points)
        budget = self.settings.max_turn_tokens
        needed = self._base_length(sample, turns - 1) + turns * budget
        if self.settings.history == "reference":
            context = _reference_context(dialogue, points[-1], f"sample {sample.id!r}")
            needed = max(needed, self._length(context) + budget)
        return needed

    def _length(self, context: Dialogue) -> int:
        """Tokens of `context` with the generation prompt, as the policy is given it."""
        encoded = self.encoder.encode(context, len(context.messages), generation_prompt=True)
        return len(encoded["input_ids"])

    def _base_length(self, sample: Sample, turn: int) -> int:
        """Tokens of turn `turn`'s context with every earlier reply empty (cached)."""
        key = (sample.id, turn)
        if key not in self._base_lengths:
            point = answer_points(sample.dialogue)[turn]
            empty = _policy_context(sample.dialogue, [""] * turn, point)
            self._base_lengths[key] = self._length(empty)
        return self._base_lengths[key]

    def _used(self, record: RolloutRecord, turn: int, encoded: Mapping[str, Any]) -> int:
        """Tokens counted against `max_length` before turn `turn` is sampled.

        On its own history: the turn's context with empty replies plus the tokens each earlier
        reply was sampled as, the sum `worst_case_length` bounds, so a dialogue that passed the
        check never ends early however its replies re-tokenize (the trained sequence may then
        exceed max_length by those few tokens). On reference history: the context as encoded.
        """
        if self.settings.history == "reference":
            return len(encoded["input_ids"])
        return self._base_length(record.sample, turn) + sum(len(ids) for ids in record.sampled)

    # --- TRL entry point -------------------------------------------------------------------

    def __call__(self, prompts: Sequence[Any], trainer: Any) -> dict[str, Any]:
        """Roll out one completion per prompt (TRL repeats each prompt `num_generations`)."""
        from trl.models.utils import unwrap_model_for_generation

        samples = [self._sample(sample_id_of(p)) for p in prompts]
        context: AbstractContextManager[Any]
        if getattr(trainer, "use_vllm", False):
            context = nullcontext(None)
        else:
            context = unwrap_model_for_generation(
                trainer.model_wrapped,
                trainer.accelerator,
                gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
            )
        with context as model:
            if model is not None:
                records = self.roll(model, samples)
            else:
                records = self.roll(
                    None,
                    samples,
                    vllm=trainer.vllm_generation,
                    global_count=_process_sum(trainer.accelerator),
                )
        return self.to_trl(records)

    def _sample(self, sample_id: str) -> Sample:
        try:
            return self.samples[sample_id]
        except KeyError:
            raise RolloutError(
                f"prompt names sample {sample_id!r}, unknown to this rollout"
            ) from None

    # --- rolling out -----------------------------------------------------------------------

    def roll(
        self,
        model: Any,
        samples: Sequence[Sample],
        *,
        vllm: Any = None,
        global_count: Callable[[int], int] | None = None,
    ) -> list[RolloutRecord]:
        """Write every assistant turn of each sample with `model` (or TRL's vLLM generator).

        Turn t of all rollouts is generated in one batch, so a batch of 8 rollouts of 4 turns
        costs 4 generate calls (VLMs: one call per rollout and turn, as image inputs differ).

        Args:
            model: The policy (None with `vllm`).
            samples: One per rollout.
            vllm: TRL's vLLM generator. Its `generate` is a collective call across processes,
                so every process must make the same number of calls: `global_count` sums a
                number over all processes, and the loop runs while any process has a turn
                left (a process with none sends an empty batch).
            global_count: See `vllm`; None on a single process.
        """
        records = [RolloutRecord(s, [], [], [], len(answer_points(s.dialogue))) for s in samples]
        local_turns = max(r.planned_turns for r in records)
        total = global_count or (lambda n: n)
        for turn in range(10**6 if vllm is not None else local_turns):
            active: list[RolloutRecord] = []
            inputs: list[dict[str, Any]] = []
            for record in records:
                if len(record.replies) != turn or turn >= record.planned_turns:
                    continue  # finished, or ended early on an earlier turn
                context = self._context(record, turn)
                encoded = self.encoder.encode(
                    context, len(context.messages), generation_prompt=True
                )
                used = self._used(record, turn, encoded)
                if used + self.settings.max_turn_tokens > self.settings.max_length:
                    continue  # ends early (see the module docstring): missing turns score 0
                if vllm is not None and context.images:
                    encoded["images"] = [
                        image.load(label=f"sample {record.sample.id!r} image {j}")
                        for j, image in enumerate(context.images)
                    ]
                record.contexts.append(context)
                active.append(record)
                inputs.append(encoded)
            if total(len(active)) == 0:
                break
            outputs = self._generate(model, inputs, vllm) if inputs or vllm else []
            for record, (ids, hit_limit) in zip(active, outputs, strict=True):
                record.replies.append(self.tokenizer.decode(ids, skip_special_tokens=True).strip())
                record.sampled.append(list(ids))
                record.hit_limit.append(hit_limit)
        return records

    def _context(self, record: RolloutRecord, turn: int) -> Dialogue:
        point = answer_points(record.sample.dialogue)[turn]
        if self.settings.history == "reference":
            return _reference_context(record.sample.dialogue, point, f"sample {record.sample.id!r}")
        return _policy_context(record.sample.dialogue, record.replies, point)

    def _eos_ids(self, model: Any) -> list[int]:
        """Ids that end a turn: the tokenizer's eos and the model's generation eos ids.

        Also remembers their tokens as `end_tokens`, so the loss masks end each reply's span
        at the token generation stops on (`<|eot_id|>`, `<end_of_turn>`, not only eos).
        """
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if isinstance(configured, int):
            ids.add(configured)
        elif isinstance(configured, list):
            ids.update(configured)
        eos = sorted(int(i) for i in ids if i is not None)
        self.end_tokens = [str(t) for t in self.tokenizer.convert_ids_to_tokens(eos)]
        return eos

    def _generate(
        self, model: Any, inputs: list[dict[str, Any]], vllm: Any
    ) -> list[tuple[list[int], bool]]:
        """New token ids of each input up to its first end token, and whether it hit the limit."""
        if vllm is not None:
            return self._generate_vllm(vllm, inputs)
        import torch
        from transformers import GenerationConfig

        eos = self._eos_ids(model)
        pad = self.tokenizer.pad_token_id
        sampling = self.settings.temperature > 0
        config = GenerationConfig(  # type: ignore[no-untyped-call]
            max_new_tokens=self.settings.max_turn_tokens,
            do_sample=sampling,
            temperature=self.settings.temperature if sampling else None,
            top_p=self.settings.top_p if sampling else None,
            top_k=0,  # plain temperature/top-p sampling: the model's defaults do not leak in
            repetition_penalty=1.0,
            eos_token_id=eos,
            pad_token_id=pad if pad is not None else eos[0],
        )
        device = next(model.parameters()).device
        batches = (
            [[i] for i in range(len(inputs))] if self.encoder.is_vlm else [list(range(len(inputs)))]
        )
        new_ids: list[list[int]] = [[] for _ in inputs]
        with torch.no_grad():
            for batch in batches:
                tensors = self._batch([inputs[i] for i in batch], device)
                out = model.generate(**tensors, generation_config=config)
                width = tensors["input_ids"].shape[1]
                for row, i in zip(out[:, width:].tolist(), batch, strict=True):
                    new_ids[i] = row
        return [_cut(row, eos) for row in new_ids]

    def _batch(self, inputs: list[dict[str, Any]], device: Any) -> dict[str, Any]:
        """Left-padded token tensors (and a single VLM input's extras) on `device`."""
        import torch

        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else self.tokenizer.eos_token_id
        width = max(len(x["input_ids"]) for x in inputs)
        ids = [[pad] * (width - len(x["input_ids"])) + list(x["input_ids"]) for x in inputs]
        mask = [[0] * (width - len(x["input_ids"])) + [1] * len(x["input_ids"]) for x in inputs]
        batch: dict[str, Any] = {
            "input_ids": torch.tensor(ids, device=device),
            "attention_mask": torch.tensor(mask, device=device),
        }
        if len(inputs) == 1:
            length = len(inputs[0]["input_ids"])
            for key, value in inputs[0]["extras"].items():
                tensor = torch.as_tensor(value)
                if tensor.ndim == 1 and tensor.shape[0] == length:
                    tensor = tensor.unsqueeze(0)
                batch[key] = tensor.to(device)
        return batch

    def _generate_vllm(
        self, vllm: Any, inputs: list[dict[str, Any]]
    ) -> list[tuple[list[int], bool]]:
        """One turn through TRL's vLLM generator (colocated or server), one sample each.

        Like TRL's own vLLM path, prompts go as processor token ids (image tokens expanded)
        with each context's images beside them.
        """
        images = [x.get("images") or None for x in inputs]
        _, completions, _, _ = vllm.generate(
            prompts=[list(x["input_ids"]) for x in inputs],
            images=images if any(images) else None,
            num_generations=1,
        )
        eos = self._eos_ids(None)
        return [_cut(list(row), eos) for row in completions]

    # --- TRL's view ------------------------------------------------------------------------

    def to_trl(self, records: Sequence[RolloutRecord]) -> dict[str, Any]:
        """`prompt_ids`, `completion_ids`, `env_mask` per rollout, plus the records' keys."""
        prompt_ids: list[list[int]] = []
        completion_ids: list[list[int]] = []
        env_mask: list[list[int]] = []
        keys: list[str] = []
        for record in records:
            prompt, completion, mask = self.tokens(record)
            self.stats.add(record)
            prompt_ids.append(prompt)
            completion_ids.append(completion)
            env_mask.append(mask)
            key = f"rollout-{next(self._keys)}"
            self.records[key] = record
            keys.append(key)
        while len(self.records) > _RECORDS_KEPT:
            self.records.popitem(last=False)
        return {
            "prompt_ids": prompt_ids,
            "completion_ids": completion_ids,
            "logprobs": None,
            "env_mask": env_mask,
            "rollout_key": keys,
        }

    def tokens(self, record: RolloutRecord) -> tuple[list[int], list[int], list[int]]:
        """Prompt ids (the first turn), completion ids and the completion's loss mask.

        The completion ends after the last reply's end token; a last reply cut by the token
        limit ends without one, so TRL counts it as truncated. The end token the template adds
        after a cut middle reply carries no loss (the model did not choose to stop there).
        """
        label = f"sample {record.sample.id!r}"
        if not record.replies:
            raise RolloutError(f"{label}: the rollout wrote no turn")
        tail = self.encoder.is_vlm and record.ended_early
        dialogue = _interleave(record.sample.dialogue, record.replies, keep_tail=tail)
        try:
            example = build_example(
                dialogue, self.processing, label=label, end_tokens=self.end_tokens
            )
        except MaskError as exc:
            raise RolloutError(str(exc)) from exc
        spans = example.assistant_spans
        start = spans[0][0]
        stop = len(example.input_ids) if tail else spans[-1][1]
        labels = list(example.labels)
        for (_, end), cut in zip(spans, record.hit_limit, strict=True):
            if cut:
                labels[end - 1] = IGNORE_INDEX
        if record.hit_limit[-1] and not tail:
            stop -= 1
        completion = example.input_ids[start:stop]
        mask = [0 if x == IGNORE_INDEX else 1 for x in labels[start:stop]]
        record.retokenized = sum(
            1
            for (first, end), ids in zip(spans, record.sampled, strict=False)
            if example.input_ids[first : end - 1] != ids
        )
        return example.input_ids[:start], completion, mask

    def drain_stats(self) -> dict[str, float]:
        """Rollout counts since the last drain as log metrics, and reset them."""
        stats, self.stats = self.stats, RolloutStats()
        return stats.metrics()


@dataclass
class RolloutStats:
    """What the trainer logs about rollouts: early endings and re-tokenized replies.

    A reply is trained on its chat-template tokenization, not on the ids it was sampled as;
    the two differ when decoding and re-encoding is not exact (leading spaces, special
    tokens), which makes those tokens slightly off-policy. The fraction shows how often.
    """

    rollouts: int = 0
    ended_early: int = 0
    turns: int = 0
    retokenized: int = 0

    def add(self, record: RolloutRecord) -> None:
        """Count one rollout (after `tokens` has compared its replies)."""
        self.rollouts += 1
        self.ended_early += int(record.ended_early)
        self.turns += len(record.replies)
        self.retokenized += record.retokenized

    def metrics(self) -> dict[str, float]:
        """Fractions for the logs; empty when nothing was rolled out."""
        if not self.rollouts:
            return {}
        return {
            "rollouts/ended_early_frac": self.ended_early / self.rollouts,
            "rollouts/turns_mean": self.turns / self.rollouts,
            "rollouts/retokenized_turn_frac": self.retokenized / max(self.turns, 1),
        }


def _process_sum(accelerator: Any) -> Callable[[int], int]:
    """A function summing an int over all processes (a collective: every process calls it)."""
    import torch

    def total(value: int) -> int:
        tensor = torch.tensor([value], device=accelerator.device)
        return int(accelerator.gather(tensor).sum().item())

    return total


def _cut(row: Sequence[int], eos: Sequence[int]) -> tuple[list[int], bool]:
    for i, token in enumerate(row):
        if token in eos:
            return list(row[:i]), False
    return list(row), True
