"""A checkpoint held for sampling and preference training (RLAIF's current policy).

Kept apart from the RLAIF loop because it is the one piece that touches transformers directly:
chat templates, the OCR bridge for text-only models, batched sampling with per-image inputs,
and TRL's conversational preference rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safeturn.schema import Dialogue


class Policy:
    """A checkpoint loaded for sampling and DPO: model, tokenizer or processor, chat template.

    Args:
        model: The transformers model (float32, eval mode).
        processing: The processor for a VLM, else the tokenizer; whichever TRL is given.
        vlm: Whether images reach the model through the processor.
    """

    def __init__(self, model: Any, processing: Any, *, vlm: bool) -> None:
        self.model = model
        self.processing = processing
        self.vlm = vlm
        self.tokenizer: Any = processing.tokenizer if vlm else processing
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        eos = model.generation_config.eos_token_id
        ids = {eos} if isinstance(eos, int) else set(eos or ())
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        self.eos_ids = frozenset(ids)
        self._bridge: Any = None

    @classmethod
    def load(cls, path: Path) -> Policy:
        """Load a checkpoint directory (VLMs through `AutoProcessor`), in eval mode."""
        from safeturn.train.config import is_vlm, load_policy

        vlm = is_vlm(path)
        model, processing = load_policy(path, vlm=vlm)
        device = policy_device()
        if device != "cpu":  # on a CPU-only machine the model stays exactly as loaded
            model.to(device)
        model.eval()
        return cls(model, processing, vlm=vlm)

    def prompt_length(self, prompt: Dialogue) -> int:
        """Tokens of `prompt` as the model sees it: chat template, generation prompt, images.

        RLAIF compares this with DPO's `max_length`: TRL truncates prompt + reply from the
        end, so a prompt that fills `max_length` leaves its pair no reply tokens to learn from.
        """
        messages, images = self.messages(prompt)
        text = self._template(messages)
        if self.vlm:
            encoded = self.processing(text=[text], images=images or None, add_special_tokens=False)
        else:
            encoded = self.tokenizer([text], add_special_tokens=False)
        return len(encoded["input_ids"][0])

    def _template(self, messages: list[dict[str, Any]]) -> str:
        """The chat template applied to `messages`, ending with the assistant's turn opening."""
        owner = self.processing if self.vlm else self.tokenizer
        return str(owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))

    def messages(self, dialogue: Dialogue) -> tuple[list[dict[str, Any]], list[Any]]:
        """Chat-template messages and the images they reference (OCR text for text models)."""
        from safeturn.models.hf_local import _vlm_messages

        if self.vlm:
            images = [
                image.load(label=f"message {i} image {j}")
                for i, message in enumerate(dialogue.messages)
                for j, image in enumerate(message.images)
            ]
            return _vlm_messages(dialogue), images
        if dialogue.images:
            from safeturn.models.bridge import OcrBridge, bridge_dialogue

            if self._bridge is None:
                self._bridge = OcrBridge()
            dialogue = bridge_dialogue(dialogue, self._bridge).dialogue
        return [{"role": m.role, "content": m.text} for m in dialogue.messages], []

    def dpo_row(self, prompt: Dialogue, chosen: str, rejected: str) -> dict[str, Any]:
        """One row of TRL's conversational preference format (with `images` for a VLM)."""
        messages, images = self.messages(prompt)
        if not self.vlm:
            return {
                "prompt": messages,
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        return {
            "images": images,
            "prompt": messages,
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": chosen}]}],
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": rejected}]}],
        }

    def sample(
        self,
        prompts: Sequence[Dialogue],
        *,
        k: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        batch_size: int,
    ) -> list[list[str]]:
        """`k` replies per prompt (greedy when `temperature` is 0), generated in batches.

        Each prompt is repeated k times in the batch rather than using `num_return_sequences`,
        which cannot expand a VLM's per-image inputs when prompts hold different numbers of
        images.
        """
        import torch

        from safeturn.models.hf_local import _transformers

        rendered = [self.messages(p) for p in prompts]
        texts = [self._template(m) for m, _ in rendered]
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
            if temperature > 0
            else {"do_sample": False}
        )
        generation = _transformers().GenerationConfig(
            max_new_tokens=max_new_tokens,
            eos_token_id=sorted(self.eos_ids),
            pad_token_id=self.tokenizer.pad_token_id,
            **sampling,
        )
        jobs = [i for i in range(len(prompts)) for _ in range(k)]
        out: list[list[str]] = [[] for _ in prompts]
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start : start + batch_size]
            if self.vlm:
                images = [img for i in batch for img in rendered[i][1]]
                inputs = self.processing(
                    text=[texts[i] for i in batch],
                    images=images or None,
                    padding=True,
                    return_tensors="pt",
                    add_special_tokens=False,
                )
            else:
                inputs = self.tokenizer(
                    [texts[i] for i in batch],
                    padding=True,
                    return_tensors="pt",
                    add_special_tokens=False,
                )
            inputs = inputs.to(self.model.device)  # the model may sit on a GPU
            with torch.inference_mode():
                generated = self.model.generate(**inputs, generation_config=generation)
            width = inputs["input_ids"].shape[1]
            for i, row in zip(batch, generated, strict=True):
                out[i].append(self._decode(row[width:].tolist()))
        return out

    def _decode(self, tokens: list[int]) -> str:
        for index, token in enumerate(tokens):
            if token in self.eos_ids:
                tokens = tokens[:index]
                break
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True)).strip()


def policy_device() -> str:
    """`cuda` when a GPU is available, else `cpu`.

    Sampling k replies per prompt is the slowest part of a round on a CPU, and TRL moves the
    model to the GPU for DPO anyway.
    """
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
