"""The shipped training and accelerate configs load and mean what their comments say."""

from __future__ import annotations

from pathlib import Path

import pytest

from safeturn.train.dream import DreamConfig
from safeturn.train.grpo import SafeGRPOConfig
from safeturn.train.sft import SafeSFTConfig
from tests.conftest import REPO_ROOT

CONFIGS = REPO_ROOT / "configs"


def test_grpo_recipe_matches_the_am3safety_batch() -> None:
    config = SafeGRPOConfig.load(CONFIGS / "train" / "qwen2.5-vl-7b_grpo_lora.yaml")
    assert config.num_generations == 8
    gpus = 8
    assert gpus * config.batch_size * config.grad_accum == 128
    assert config.batch_size % config.num_generations == 0
    assert config.use_vllm and config.lora is not None and config.lora.r == 64
    assert config.model_dtype == "bfloat16" and config.bf16  # to_trl() needs a GPU for bf16
    assert config.judge.startswith("turn-scores:openai:")


def test_toy_configs_load(tmp_path: Path) -> None:
    grpo = SafeGRPOConfig.load(CONFIGS / "train" / "grpo_cpu_toy.yaml")
    trl_config = grpo.to_trl()
    assert trl_config.num_generations == 2 and trl_config.max_completion_length == 16
    sft = SafeSFTConfig.load(CONFIGS / "train" / "sft_cold_start.yaml", data=tmp_path / "x.jsonl")
    assert sft.lora is not None and sft.max_steps == 20
    dream = DreamConfig.load(CONFIGS / "train" / "dream_cpu_toy.yaml")
    assert dream.rlaif.k == 4 and dream.rlaif.rounds == 2 and dream.sft.max_steps == 10


@pytest.mark.parametrize(
    ("name", "kind", "stage"),
    [
        ("multi_gpu.yaml", "MULTI_GPU", None),
        ("deepspeed_zero2.yaml", "DEEPSPEED", 2),
        ("deepspeed_zero3.yaml", "DEEPSPEED", 3),
    ],
)
def test_accelerate_configs_parse(name: str, kind: str, stage: int | None) -> None:
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(CONFIGS / "accelerate" / name)
    assert str(config.distributed_type).endswith(kind)
    assert config.num_processes == 8 and config.mixed_precision == "bf16"
    if stage is not None:
        assert config.deepspeed_config["zero_stage"] == stage


@pytest.mark.slow
def test_save_trained_merges_a_lora_adapter_into_plain_weights(tmp_path: Path) -> None:
    from types import SimpleNamespace

    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safeturn.models.embedded import embedded_model_dir
    from safeturn.train.config import LoraSettings, save_trained
    from tests.models.tiny_vlm import build_tiny_llama

    base_dir = build_tiny_llama(tmp_path / "base", embedded_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True),
        LoraSettings(r=4, alpha=8).to_peft(),
    )
    with torch.no_grad():  # a non-zero adapter, as after training
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.fill_(0.01)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits

    def save_adapter(path: str) -> None:
        model.save_pretrained(path)

    trainer = SimpleNamespace(model=model, processing_class=tokenizer, save_model=save_adapter)
    save_trained(trainer, tmp_path / "adapter", merge_lora=False)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    save_trained(trainer, tmp_path / "merged", merge_lora=True)
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", local_files_only=True)
    with torch.no_grad():
        got = reloaded(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert (tmp_path / "merged" / "tokenizer_config.json").is_file()
