"""`--set KEY=VALUE`: every config field settable, checked against the config model."""

from __future__ import annotations

from pathlib import Path

import pytest

from safeturn.errors import LoopError, RlaifError, TrainConfigError
from safeturn.train.dream import DreamConfig
from safeturn.train.grpo import SafeGRPOConfig
from safeturn.train.loop_config import LoopConfig
from safeturn.train.sft import SafeSFTConfig
from tests.conftest import REPO_ROOT

CONFIGS = REPO_ROOT / "configs"


def test_values_are_yaml_and_nested_keys_reach_sections() -> None:
    config = SafeGRPOConfig.load(
        CONFIGS / "train" / "grpo_cpu_toy.yaml",
        sets=["learning_rate=2e-5", "reward.beta=0.1", "lora.r=4", "use_vllm=false"],
    )
    assert config.learning_rate == 2e-5 and not config.use_vllm
    assert config.reward.beta == 0.1 and config.reward.lam == 1.0  # the file's other values stay
    assert config.lora is not None and config.lora.r == 4 and config.lora.alpha == 16
    assert SafeGRPOConfig.load(None, data="d", output_dir="o", sets=["lora=null"]).lora is None


def test_sets_win_over_the_file_and_flags_later_items_over_earlier(tmp_path: Path) -> None:
    path = tmp_path / "sft.yaml"
    path.write_text("output_dir: out\ndata: d.jsonl\nmax_steps: 4\n")
    config = SafeSFTConfig.load(path, sets=["max_steps=2", "max_steps=3"], seed=9)
    assert config.max_steps == 3 and config.seed == 9


def test_an_unknown_key_is_named_with_the_closest_field() -> None:
    with pytest.raises(TrainConfigError, match=r"'num_generatoins'.*did you mean 'num_genera"):
        SafeGRPOConfig.load(CONFIGS / "train" / "grpo_cpu_toy.yaml", sets=["num_generatoins=4"])
    with pytest.raises(TrainConfigError, match=r"RewardSettings has no field 'gamma'"):
        SafeGRPOConfig.load(CONFIGS / "train" / "grpo_cpu_toy.yaml", sets=["reward.gamma=1"])
    with pytest.raises(TrainConfigError, match="judge is a single value, not a section"):
        SafeGRPOConfig.load(CONFIGS / "train" / "grpo_cpu_toy.yaml", sets=["judge.x=1"])
    with pytest.raises(TrainConfigError, match="expected KEY=VALUE"):
        SafeGRPOConfig.load(CONFIGS / "train" / "grpo_cpu_toy.yaml", sets=["max_steps"])


def test_a_bad_value_is_refused_by_the_model_naming_the_field() -> None:
    with pytest.raises(TrainConfigError, match=r"learning_rate\n.*greater than 0"):
        SafeSFTConfig.load(None, data="d", output_dir="o", sets=["learning_rate=0"])
    with pytest.raises(RlaifError, match=r"rlaif\.k\n"):  # each config keeps its own error
        DreamConfig.load(CONFIGS / "train" / "dream_cpu_toy.yaml", sets=["rlaif.k=1"])


def test_a_loop_section_set_keeps_the_loops_other_defaults() -> None:
    config = LoopConfig.load(None, sets=["sft.max_steps=3", "turns=1,2", "pairwise=none"])
    assert config.sft.max_steps == 3 and config.sft.learning_rate == 5e-5
    assert config.turns == [1, 2] and config.pairwise is None
    grpo = LoopConfig.load(None, sets=["trainer=grpo", "grpo.num_generations=4"])
    assert grpo.trainer_section is grpo.grpo and grpo.grpo.num_generations == 4
    with pytest.raises(LoopError, match="batch_size=4 must be a multiple of num_generations=3"):
        LoopConfig.load(None, sets=["grpo.num_generations=3", "grpo.batch_size=4"])
    with pytest.raises(LoopError, match="DreamSection has no field 'rounds'"):
        LoopConfig.load(None, sets=["dream.rounds=3"])  # it belongs under dream.rlaif
    assert LoopConfig.load(None, sets=["dream.rlaif.rounds=3"]).dream.rlaif.rounds == 3
