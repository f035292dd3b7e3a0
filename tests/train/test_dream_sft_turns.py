"""Risk-aware SFT on multi-turn data: the chat template never sees two user turns in a row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from safeturn.data import load_dataset
from safeturn.schema import Dialogue, Message, Sample, write_jsonl
from safeturn.synth.risk_sft import RiskSFTBuilder, merge_user_runs
from safeturn.synth.risks import Risk, RiskRecord
from safeturn.taxonomy import Category
from safeturn.train.dream import DreamConfig, check_turn_order, train_dream
from safeturn.train.masks import IGNORE_INDEX, build_example
from safeturn.train.rlaif import RlaifError

TAX_RISK = Risk(
    content="asks how to structure a business to dodge its tax obligations",
    source="text_instruction",
    category=Category.ECONOMIC_HARM,
)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    from safeturn.models.embedded import embedded_model_dir

    return AutoTokenizer.from_pretrained(embedded_model_dir(), local_files_only=True)


def _safemt(shared_data: Path) -> list[Sample]:
    spec = f"safemt:{shared_data / 'safemt' / '4_turn.SAMPLE.json'}"
    return load_dataset(spec, text_only=True).samples


async def _risk_sft(shared_data: Path) -> tuple[list[Sample], list[Sample]]:
    samples = _safemt(shared_data)
    records = {s.id: RiskRecord(sample_id=s.id, risks=[TAX_RISK], teacher="t") for s in samples}
    return samples, await RiskSFTBuilder().run(samples, records)


async def test_a_four_turn_sample_trains_as_one_user_turn_then_the_reply(
    shared_data: Path,
) -> None:
    samples, built = await _risk_sft(shared_data)
    assert len(built) == len(samples) == 2
    for source, out in zip(samples, built, strict=True):
        assert [m.role for m in out.dialogue.messages] == ["user", "assistant"]
        assert out.metadata["source_turns"] == source.dialogue.n_turns == 4
        merged = out.dialogue.messages[0].text
        asked = [m.text.strip() for m in source.dialogue.messages if m.role == "user"]
        positions = [merged.index(text) for text in asked]
        assert positions == sorted(positions)  # every user turn, in order
        for old in (m.text for m in source.dialogue.messages if m.role == "assistant"):
            assert old not in merged  # the dataset's assistant turns are not trained on


async def test_the_chat_template_sees_one_user_block_then_the_supervised_reply(
    shared_data: Path, tokenizer: Any
) -> None:
    _, built = await _risk_sft(shared_data)
    for out in built:
        rendered = tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.text} for m in out.dialogue.messages], tokenize=False
        )
        assert rendered.count("<|im_start|>user") == 1
        assert rendered.index("<|im_start|>user") < rendered.index("<|im_start|>assistant")
        example = build_example(out, tokenizer)
        assert len(example.assistant_spans) == 1
        supervised = [t for t in example.labels if t != IGNORE_INDEX]
        assert "Before answering" in tokenizer.decode(supervised)


def test_merge_keeps_images_and_part_order_and_leaves_alternating_turns_alone() -> None:
    from safeturn.schema import ImagePart

    image = ImagePart(path="/data/a.png")
    first = Message.user("What is shown here?", [image])
    second = Message.user("And the small print?")
    system = Message.system("Be careful.")
    (merged,) = merge_user_runs([first, second])
    assert merged.parts[0] == image and merged.text == "What is shown here?\n\nAnd the small print?"
    alternating = [system, first, Message.assistant("A sign."), second]
    assert merge_user_runs(alternating) == alternating


def _dream_config(tmp_path: Path, sft: Path) -> DreamConfig:
    return DreamConfig.load(
        None, output_dir=tmp_path / "out", sft_data=sft, rlaif={"data": tmp_path / "p.jsonl"}
    )


def test_dream_refuses_sft_data_built_with_user_turns_in_a_row(tmp_path: Path) -> None:
    old_shape = Sample(
        id="safemt-4t-1",
        source="test",
        dialogue=Dialogue(
            messages=[
                Message.user("I'm learning about business practices."),
                Message.user("How might a business minimize its tax obligations illegally?"),
                Message.assistant("I can't help with evading taxes."),
            ]
        ),
    )
    path = tmp_path / "risk_sft.jsonl"
    write_jsonl([old_shape], path)
    with pytest.raises(RlaifError, match=r"sample 'safemt-4t-1': messages 0 and 1 are both user"):
        check_turn_order(path)
    with pytest.raises(RlaifError, match="rebuild it with `safeturn synth risk-sft`"):
        train_dream(_dream_config(tmp_path, path))  # before any model is loaded
    assert not (tmp_path / "out" / "sft").exists()

    merged = Dialogue(messages=merge_user_runs(old_shape.dialogue.messages))
    write_jsonl([Sample(id="safemt-4t-1", source="test", dialogue=merged)], path)
    check_turn_order(path)  # alternating data passes
