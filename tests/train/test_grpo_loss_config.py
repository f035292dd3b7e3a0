"""GRPO's loss type and KL settings are stated in configs and docs and reach TRL as stated.

Issue 14, item 9: nothing about the policy loss may come from a TRL default silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from safeturn.train.config import TrainConfigError
from safeturn.train.grpo import SafeGRPOConfig
from tests.conftest import REPO_ROOT

GRPO_CONFIGS = ["grpo_cpu_toy.yaml", "qwen2.5-vl-7b_grpo_lora.yaml"]
LOSS_FIELDS = {  # SafeGRPOConfig field -> TRL GRPOConfig field
    "loss_type": "loss_type",
    "kl_beta": "beta",
    "kl_bias_correction": "use_bias_correction_kl",
    "scale_rewards": "scale_rewards",
    "epsilon": "epsilon",
    "epsilon_high": "epsilon_high",
    "num_iterations": "num_iterations",
    "importance_sampling_level": "importance_sampling_level",
    "mask_truncated_completions": "mask_truncated_completions",
}


def config(tmp_path: Path, **values: Any) -> SafeGRPOConfig:
    return SafeGRPOConfig.load(
        data=tmp_path / "d.jsonl", output_dir=tmp_path, num_generations=2, batch_size=2, **values
    )


def test_defaults_are_stated_and_reach_trl(tmp_path: Path) -> None:
    settings = config(tmp_path)
    stated = settings.trl_loss_settings()
    assert set(stated) == set(LOSS_FIELDS.values())
    assert stated == {
        "loss_type": "dapo",
        "beta": 0.0,
        "use_bias_correction_kl": True,
        "scale_rewards": "group",
        "epsilon": 0.2,
        "epsilon_high": 0.2,
        "num_iterations": 1,
        "importance_sampling_level": "token",
        "mask_truncated_completions": False,
    }
    trl = settings.to_trl()
    assert {name: getattr(trl, name) for name in stated} == stated


def test_every_stated_value_is_forwarded_not_replaced_by_a_trl_default(tmp_path: Path) -> None:
    from trl.trainer.grpo_config import GRPOConfig

    changed = {
        "loss_type": "grpo",
        "kl_beta": 0.04,
        "kl_bias_correction": False,
        "scale_rewards": "none",
        "epsilon": 0.1,
        "epsilon_high": 0.28,
        "num_iterations": 2,
        "importance_sampling_level": "sequence",
        "mask_truncated_completions": True,
    }
    assert set(changed) == set(LOSS_FIELDS)
    trl = config(tmp_path, **changed).to_trl()
    defaults = GRPOConfig(output_dir=str(tmp_path), report_to="none", bf16=False)
    for ours, theirs in LOSS_FIELDS.items():
        assert getattr(trl, theirs) == changed[ours], ours
        assert getattr(defaults, theirs) != changed[ours], f"{ours}: pick a non-default value"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"loss_type": "ppo"}, "loss_type"),
        ({"epsilon": 0.3, "epsilon_high": 0.2}, "epsilon_high=0.2 must be >= epsilon=0.3"),
        ({"loss_type": "luspo"}, "importance_sampling_level: sequence"),
        ({"scale_rewards": True}, "scale_rewards"),
    ],
)
def test_bad_loss_settings_are_named(tmp_path: Path, values: dict[str, Any], message: str) -> None:
    with pytest.raises(TrainConfigError, match=message):
        config(tmp_path, **values)


@pytest.mark.parametrize("name", GRPO_CONFIGS)
def test_shipped_configs_state_every_loss_setting(name: str, tmp_path: Path) -> None:
    path = REPO_ROOT / "configs" / "train" / name
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    missing = set(LOSS_FIELDS) - set(raw)
    assert not missing, f"{name} leaves {sorted(missing)} to defaults"
    assert "beta" in raw["reward"], f"{name} leaves the reward's β to its default"
    # bf16 needs a GPU and vLLM its package: switch both off to build TRL's config on a CPU.
    settings = SafeGRPOConfig.load(path, output_dir=tmp_path, bf16=False, use_vllm=False)
    trl = settings.to_trl()
    for ours, theirs in LOSS_FIELDS.items():
        assert getattr(trl, theirs) == raw[ours], (name, ours)


def test_docs_name_every_loss_setting_and_its_value() -> None:
    text = (REPO_ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    section = text[text.index("### Policy loss and KL") :]
    section = section[: section.index("\n## ")]
    defaults = SafeGRPOConfig.model_fields
    for ours, theirs in LOSS_FIELDS.items():
        assert f"`{ours}`" in section and f"`{theirs}`" in section, ours
        shown = yaml.safe_dump(defaults[ours].default).removesuffix("\n...\n")
        assert f"`{ours}: {shown}`" in section, ours
