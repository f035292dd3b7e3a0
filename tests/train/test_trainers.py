"""The trainer registry, the typed loop sections, and every shipped config under configs/."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safeturn.commands.train import train_app
from safeturn.errors import LoopError, TrainConfigError
from safeturn.registry import all_registries
from safeturn.train.config import OptimSettings, YamlConfig
from safeturn.train.loop import Loop
from safeturn.train.loop_config import LoopConfig
from safeturn.train.trainers import TRAINERS, get_trainer
from tests.conftest import REPO_ROOT

CONFIGS = REPO_ROOT / "configs"


def test_every_builtin_trainer_is_registered_from_its_own_module() -> None:
    assert sorted(TRAINERS.names()) == ["dpo", "dream", "grpo", "sft"]
    assert all_registries()["trainer"] is TRAINERS
    for entry in TRAINERS.entries():
        trainer = get_trainer(entry.name)
        assert trainer.train.__module__ == entry.origin
        assert issubclass(trainer.config, YamlConfig)
        first = next(iter(inspect.signature(trainer.train).parameters.values()))
        assert first.name == "config"


@pytest.mark.parametrize("name", ["sft", "grpo", "dpo"])
def test_the_optimiser_fields_come_from_one_base(name: str, tmp_path: Path) -> None:
    config_cls = get_trainer(name).config
    assert issubclass(config_cls, OptimSettings)
    config = config_cls.load(
        None, model="embedded", data=tmp_path / "d.jsonl", output_dir=tmp_path / "o",
        sets=["max_steps=3", "grad_accum=2", "warmup_steps=1", "lora.r=4"],
    )  # fmt: skip
    assert isinstance(config, OptimSettings)
    args = config.trainer_arguments(tmp_path / "round")
    assert args["max_steps"] == 3 and args["gradient_accumulation_steps"] == 2
    assert args["warmup_steps"] == 1 and args["output_dir"] == str(tmp_path / "round")
    assert config.peft_config().r == 4


def test_an_unknown_trainer_names_the_known_ones() -> None:
    with pytest.raises(TrainConfigError, match=r"unknown trainer 'ppo'; known: .*grpo"):
        get_trainer("ppo")


def test_train_list_is_generated_from_the_registry() -> None:
    result = CliRunner().invoke(train_app, ["list"])
    assert result.exit_code == 0, result.output
    for name in TRAINERS.names():
        assert name in result.output
    assert "turn-aware GRPO" in result.output and "SafeGRPOConfig" in result.output


def test_train_command_names_an_unknown_set_key(tmp_path: Path) -> None:
    args = ["sft", "--data", "d.jsonl", "--out", str(tmp_path), "--set", "learning_rat=1"]
    result = CliRunner().invoke(train_app, args)
    assert result.exit_code == 1
    assert "no field 'learning_rat'" in result.output and "learning_rate" in result.output


def test_every_shipped_config_loads() -> None:
    shipped = {str(p.relative_to(REPO_ROOT)) for p in (CONFIGS / "train").glob("*.yaml")}
    named = {str(e.metadata["config_file"]): e.name for e in TRAINERS.entries()}
    assert shipped <= set(named) | {"configs/train/qwen2.5-vl-7b_grpo_lora.yaml"}
    for path, name in {**named, "configs/train/qwen2.5-vl-7b_grpo_lora.yaml": "grpo"}.items():
        extra = {"data": Path("x.jsonl")} if name == "sft" else {}
        assert get_trainer(name).config.load(REPO_ROOT / path, **extra), path
    loops = sorted((CONFIGS / "loop").glob("*.yaml"))
    assert loops
    for path in loops:
        config = LoopConfig.load(path)
        built = Loop(config.model_copy(update={"out": Path("/nonexistent/out")})).trainer_config()
        assert built.model == "embedded", path


def test_a_typo_in_the_grpo_section_fails_when_the_loop_config_loads(tmp_path: Path) -> None:
    text = (CONFIGS / "loop" / "embedded_grpo.yaml").read_text()
    assert "  num_generations: 2\n" in text
    path = tmp_path / "loop.yaml"
    path.write_text(text.replace("  num_generations: 2\n", "  num_generatoins: 2\n"))
    with pytest.raises(LoopError, match=r"grpo\.num_generatoins\n  Extra inputs"):
        LoopConfig.load(path)
    path.write_text(text.replace("  max_steps: 2\n", "  max_steps: 0\n"))
    with pytest.raises(LoopError, match=r"grpo\n.*max_steps must be positive"):
        LoopConfig.load(path)
    path.write_text(text.replace("  judge: classifier\n", "  judge: classifier\n  data: x\n"))
    with pytest.raises(LoopError, match=r"grpo\n.*data is set by the loop"):
        LoopConfig.load(path)


def test_loop_json_from_before_typed_sections_still_matches() -> None:
    """An old loop.json stored the sections as the mappings given; the fingerprint still is."""
    config = LoopConfig.load(CONFIGS / "loop" / "embedded_grpo.yaml")
    fingerprint = config.fingerprint()
    assert fingerprint["sft"] == {"learning_rate": 5e-5, "epochs": 2.0, "max_length": 512}
    assert fingerprint["dream"] == {}
    assert fingerprint["grpo"]["num_generations"] == 2 and "data" not in fingerprint["grpo"]
    assert fingerprint["grpo"]["reward"] == {"lam": 1.0, "tau": 0.5, "beta": 0.25}
