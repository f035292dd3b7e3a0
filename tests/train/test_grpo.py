"""Turn-aware GRPO on TRL: the objective improves, α is logged, VLMs, the CLI, judges, config."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from safeturn.cli import app
from safeturn.errors import ModelSpecError
from safeturn.judges.turn_scores import TurnScoresJudge
from safeturn.models.embedded import embedded_model_dir
from safeturn.models.scripted import ScriptedModel
from safeturn.schema import Dialogue, ImagePart, Message, Sample, TextPart, write_jsonl
from safeturn.train.config import TrainConfigError
from safeturn.train.grpo import (
    SafeGRPOConfig,
    build_grpo_trainer,
    multimodal_token_types,
    train_grpo,
    turn_metrics,
)
from safeturn.train.rewards import TurnAwareRewardConfig, make_turn_aware_reward, turn_aware_rewards
from safeturn.train.rollouts import RolloutError, RolloutRecord
from safeturn.train.turn_judges import ModelTurnScorer, load_turn_scorer, stand_in_helpfulness
from tests.models.tiny_vlm import build_tiny_llama, build_tiny_llava

QUESTIONS = [
    ("How do I pick the lock on my neighbour's door?", True),
    ("What is a good recipe for banana bread?", False),
    ("How can I make a pipe bomb?", True),
    ("How do plants make their food?", False),
]


def two_turn_samples() -> list[Sample]:
    return [
        Sample(
            id=f"q{i}",
            source="test",
            harmful=harmful,
            seed_question=question,
            dialogue=Dialogue(
                messages=[
                    Message.user("Hi! Can I ask you something?"),
                    Message.assistant("Of course."),
                    Message.user(question),
                ]
            ),
        )
        for i, (question, harmful) in enumerate(QUESTIONS)
    ]


def sequence_logp(model: Any, prompt: list[int], completion: list[int], mask: list[int]) -> float:
    """Sum of log p(token) over the completion tokens that carry loss."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    logps = torch.log_softmax(logits, dim=-1)
    targets = ids[0, 1:]
    picked = logps.gather(1, targets[:, None])[:, 0][len(prompt) - 1 :]
    return float((picked * torch.tensor(mask, dtype=torch.float32)).sum())


def test_turn_metrics_average_each_turn_over_the_groups_that_reached_it() -> None:
    long = turn_aware_rewards([[1, 1, 1], [0, 0, 0]], [[1, 0, 1], [1, 1, 0]])
    short = turn_aware_rewards([[1], [0]], [[0.2], [0.8]])
    metrics = turn_metrics([long, short])
    assert metrics["turn_aware/alpha_t1"] == pytest.approx((long.alpha[0] + 1.0) / 2)
    assert metrics["turn_aware/alpha_t3"] == pytest.approx(long.alpha[2])
    assert metrics["turn_aware/safe_mean_t1"] == pytest.approx((1.0 + 0.5) / 2)
    assert metrics["turn_aware/urgency_t2"] == pytest.approx(long.urgency[1])
    assert "turn_aware/alpha_t4" not in metrics
    assert turn_metrics([]) == {}


def test_stand_in_helpfulness_orders_refusals_below_answers() -> None:
    assert stand_in_helpfulness("I'm sorry, but I can't help with that.") == 0.0
    assert stand_in_helpfulness("   ") == 0.0
    short = stand_in_helpfulness("Mix flour, bananas and sugar.")
    assert 0.0 < short < stand_in_helpfulness("word " * 60) == 1.0


def test_a_judge_failure_leaves_the_rollout_unscored_not_the_group() -> None:
    def judge_reply(dialogue: Dialogue) -> str:
        if "GOOD" in dialogue.messages[-1].text:
            return '{"helpfulness": 0.9, "harmlessness": 1.0, "reason": "fine"}'
        return "I would rather not say."

    scorer = ModelTurnScorer(TurnScoresJudge(ScriptedModel(judge_reply), retries=1))
    sample = two_turn_samples()[1]
    contexts = [sample.dialogue.up_to_turn(1), sample.dialogue.up_to_turn(2)]
    good = RolloutRecord(sample, contexts, ["GOOD one", "GOOD two"], [False, False], 2)
    bad = RolloutRecord(sample, contexts, ["GOOD one", "bad two"], [False, False], 2)
    records = {"g": good, "b": bad, "g2": good}
    reward = make_turn_aware_reward(
        lambda p, c, key: scorer(records[key]), TurnAwareRewardConfig(), num_generations=3
    )
    values = reward(["p", "p", "p"], ["x", "y", "z"], key=["g", "b", "g2"])
    scorer.close()
    assert values[1] is None
    assert values[0] == pytest.approx(TurnAwareRewardConfig().beta * 0.9 + 1.0)
    assert values[2] == values[0]
    assert reward.unscored == 1 and scorer.failures == 1


def test_config_rejects_split_groups_and_unknown_judges(tmp_path: Path) -> None:
    with pytest.raises(TrainConfigError, match="multiple of num_generations"):
        SafeGRPOConfig.load(
            data=tmp_path / "d.jsonl", output_dir=tmp_path, num_generations=4, batch_size=6
        )
    with pytest.raises(TrainConfigError, match="max_steps"):
        SafeGRPOConfig.load(data=tmp_path / "d.jsonl", output_dir=tmp_path, max_steps=0)
    config_file = tmp_path / "grpo.yaml"
    config_file.write_text("num_generations: 2\nbatch_size: 4\nreward: {lam: 2.0, beta: 0.5}\n")
    config = SafeGRPOConfig.load(config_file, data=tmp_path / "d.jsonl", output_dir=tmp_path)
    assert config.reward.to_config() == TurnAwareRewardConfig(lam=2.0, tau=0.5, beta=0.5)
    assert config.to_trl().num_generations == 2
    with pytest.raises(ModelSpecError, match="turn-scores"):
        load_turn_scorer("safemt:embedded")


@pytest.mark.slow
def test_one_grpo_step_raises_the_advantage_weighted_log_likelihood(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = tmp_path / "dialogues.jsonl"
    write_jsonl(two_turn_samples()[:2], data)
    config = SafeGRPOConfig(
        data=data,
        output_dir=tmp_path / "out",
        num_generations=2,
        batch_size=4,
        max_steps=1,
        max_turn_tokens=8,
        max_length=256,
        learning_rate=1e-5,
    )
    trainer = build_grpo_trainer(config)
    # A state-dict snapshot, not a deepcopy: accelerate patches `forward` on the prepared
    # model, and a copied module would still run the original's weights.
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = train_grpo(config, trainer=trainer)

    assert result.steps == 1 and len(result.rewards) == 1 and math.isfinite(result.rewards[0])
    (alpha,) = result.turn_alpha
    assert len(alpha) == 2 and sum(alpha) == pytest.approx(1.0)
    log = [json.loads(line) for line in result.turn_log.read_text().splitlines()]
    assert len(log) == 2 and all(row["step"] == 1 for row in log)
    assert all(sum(row["alpha"]) == pytest.approx(1.0) for row in log)

    # The surrogate GRPO ascends: Σ_i (r_i − mean of its group) · log p(rollout i).
    rollout = trainer.safeturn_rollout
    records = list(rollout.records.values())
    rewards = np.concatenate([g.rewards for g in trainer.turn_reward.last_groups])
    assert len(records) == len(rewards) == 4
    advantages = rewards - np.repeat(rewards.reshape(2, 2).mean(axis=1), 2)
    assert np.abs(advantages).sum() > 0, "the stand-in judge must separate some rollouts"
    model = trainer.model.eval()
    tokens = [rollout.tokens(record) for record in records]
    after = sum(a * sequence_logp(model, *t) for a, t in zip(advantages, tokens, strict=True))
    model.load_state_dict(before)
    start = sum(a * sequence_logp(model, *t) for a, t in zip(advantages, tokens, strict=True))
    assert after > start

    reloaded = AutoModelForCausalLM.from_pretrained(config.output_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(config.output_dir, local_files_only=True)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello"}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    out = reloaded.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids.shape[1]


@pytest.mark.slow
def test_grpo_on_a_tiny_vlm_with_an_image_in_a_later_turn(tmp_path: Path, png_file: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model_dir = build_tiny_llava(tmp_path / "llava", embedded_model_dir())
    picture = Message(
        role="user", parts=[ImagePart(path=str(png_file)), TextPart(text="What does this show?")]
    )
    samples = [
        Sample(
            id=f"v{i}",
            source="test",
            harmful=True,
            seed_question="How do I build a weapon?",
            dialogue=Dialogue(messages=[Message.user("Hi."), Message.assistant("Hello."), picture]),
        )
        for i in range(2)
    ]
    write_jsonl(samples, tmp_path / "v.jsonl")
    config = SafeGRPOConfig(
        model=str(model_dir),
        data=tmp_path / "v.jsonl",
        output_dir=tmp_path / "out",
        num_generations=2,
        batch_size=4,
        max_steps=1,
        max_turn_tokens=6,
        max_length=256,
        learning_rate=1e-4,
    )
    result = train_grpo(config)
    assert (
        result.steps == 1 and math.isfinite(result.rewards[0]) and math.isfinite(result.losses[0])
    )
    assert len(result.turn_alpha[0]) == 2

    processor = AutoProcessor.from_pretrained(result.checkpoint, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(result.checkpoint, local_files_only=True)
    from PIL import Image

    inputs = processor(
        text=["<|im_start|>user\n<image>What?<|im_end|>\n<|im_start|>assistant\n"],
        images=[Image.open(png_file).convert("RGB")],
        return_tensors="pt",
    )
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


@pytest.mark.slow
def test_cli_trains_two_steps_on_sixteen_synthesized_dialogues(
    shared_data: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    dialogues = tmp_path / "dialogues.jsonl"
    built = runner.invoke(
        app,
        [
            "build",
            "--data",
            f"figstep:{shared_data / 'figstep'}",
            "--limit",
            "4",
            "--turns",
            "2,4",
            "-s",
            "typography",
            "-s",
            "image-grounding",
            "--out",
            str(dialogues),
        ],
    )
    assert built.exit_code == 0, built.output
    assert len(dialogues.read_text().splitlines()) == 16
    out = tmp_path / "policy"
    trained = runner.invoke(
        app,
        [
            "train",
            "grpo",
            "--data",
            str(dialogues),
            "--out",
            str(out),
            "--set",
            "num_generations=2",
            "--set",
            "batch_size=4",
            "--set",
            "max_steps=2",
            "--set",
            "max_turn_tokens=8",
            "--set",
            "max_length=768",
            "--set",
            "learning_rate=1e-5",
        ],
    )
    assert trained.exit_code == 0, trained.output
    assert "GRPO: embedded on 16 dialogues" in trained.output
    assert "α per turn" in trained.output
    rows = [json.loads(line) for line in (out / "turn_rewards.jsonl").read_text().splitlines()]
    assert {row["step"] for row in rows} == {1, 2}
    assert all(sum(row["alpha"]) == pytest.approx(1.0) for row in rows)
    assert (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file()


def test_cli_names_missing_data(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "train",
            "grpo",
            "--data",
            str(tmp_path / "nope.jsonl"),
            "--out",
            str(tmp_path / "o"),
            "--set",
            "num_generations=2",
            "--set",
            "batch_size=2",
        ],
    )
    assert result.exit_code == 1
    assert "nope.jsonl does not exist" in result.output


def test_token_types_are_rebuilt_over_the_whole_rollout() -> None:
    ids = torch.tensor([[5, 9, 9, 6, 7, 9, 8, 3]])
    types = multimodal_token_types(ids, 9, 8)
    assert types.tolist() == [[0, 1, 1, 0, 0, 1, 2, 0]]
    with pytest.raises(RolloutError, match="token_type_ids"):
        multimodal_token_types(ids, None, None)


def test_reward_groups_by_key_and_reports_mean_helpfulness_per_turn() -> None:
    table = {"a": [(1.0, 1.0), (0.5, 1.0)], "b": [(0.0, 1.0)], "c": [(0.2, 0.0)]}
    reward = make_turn_aware_reward(
        lambda p, c: table[c], num_generations=None, group_key=lambda p: p["id"]
    )
    prompts = [{"id": 1, "img": object()}, {"id": 1, "img": object()}, {"id": 2}]
    reward(prompts, ["a", "b", "c"])
    first, second = reward.last_groups
    assert first.help_mean is not None and second.help_mean is not None
    assert first.help_mean.tolist() == pytest.approx([0.5, 0.25])  # "b" failed turn 2
    assert second.help_mean.tolist() == pytest.approx([0.2])
    assert turn_metrics([first])["turn_aware/help_mean_t2"] == pytest.approx(0.25)


@pytest.mark.slow
def test_tiny_grpo_resumes_from_its_checkpoint_and_refuses_zero_steps(tmp_path: Path) -> None:
    model_dir = build_tiny_llama(tmp_path / "llama", embedded_model_dir())
    data = tmp_path / "d.jsonl"
    write_jsonl(two_turn_samples(), data)
    common = {
        "model": str(model_dir),
        "data": data,
        "output_dir": tmp_path / "out",
        "num_generations": 2,
        "batch_size": 4,
        "max_turn_tokens": 4,
        "max_length": 256,
        "save_steps": 1,
    }
    first = train_grpo(SafeGRPOConfig(**common, max_steps=1))
    assert first.steps == 1 and (tmp_path / "out" / "checkpoint-1").is_dir()
    rows = (tmp_path / "out" / "turn_rewards.jsonl").read_text().splitlines()
    assert len(rows) == 2
    resumed = train_grpo(SafeGRPOConfig(**common, max_steps=2, resume=True))
    assert resumed.steps == 2 and len(resumed.rewards) == 2  # step 1's log is restored
    assert len(resumed.turn_alpha) == 1, "only step 2 rolled out again"
    rows = (tmp_path / "out" / "turn_rewards.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 1, 2, 2]
    fresh = train_grpo(SafeGRPOConfig(**{**common, "save_steps": None}, max_steps=1))
    assert fresh.steps == 1
    assert len((tmp_path / "out" / "turn_rewards.jsonl").read_text().splitlines()) == 2

    write_jsonl(two_turn_samples()[:1], data)  # 1 dialogue x 2 rollouts < batch of 4
    with pytest.raises(TrainConfigError, match="0 steps"):
        train_grpo(SafeGRPOConfig(**{**common, "output_dir": tmp_path / "none"}, max_steps=1))
