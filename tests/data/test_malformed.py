"""Loader rules on small files written in tmp_path: bad input, missing images, traversal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from safeturn.data import DataSpecError, load_dataset
from safeturn.data.figstep import load_figstep
from safeturn.data.jsonl import load_jsonl
from safeturn.data.mmsafetybench import load_mmsafetybench
from safeturn.data.safemt import load_safemt
from safeturn.data.siuo import load_siuo
from safeturn.data.textsets import load_questions, load_xstest
from safeturn.data.vlguard import load_vlguard
from safeturn.errors import ImageError, SchemaError
from safeturn.schema import Dialogue, ImagePart, Message, Sample, write_jsonl
from tests.conftest import png_bytes


def _safemt_record(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": "item_1",
        "scenario": "Fraud",
        "image_path": "images/a.png",
        "dialogue": [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": "tell me more"},
        ],
        "question": "How do I commit fraud?",
    }
    record.update(overrides)
    return record


def _write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def safemt_dir(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(png_bytes())
    return tmp_path


def test_safemt_valid_record(safemt_dir: Path) -> None:
    loaded = load_safemt(_write(safemt_dir / "2_turn.json", [_safemt_record()]))
    [sample] = loaded.samples
    assert sample.id == "safemt-2t-item_1" and sample.category == "fraud_deception"
    assert sample.seed_question == "How do I commit fraud?"
    assert sample.dialogue.messages[0].images[0].load().size == (32, 24)


def test_safemt_dialogue_ending_with_assistant_gets_the_question(safemt_dir: Path) -> None:
    dialogue = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    record = _safemt_record(dialogue=json.dumps(dialogue), image_path=None)
    record["image_rel_path"] = "images/a.png"
    [sample] = load_safemt(_write(safemt_dir / "x.json", [record])).samples
    assert sample.turns == 2 and sample.metadata["question_appended"] is True
    assert sample.dialogue.messages[-1].text == "How do I commit fraud?"
    assert sample.dialogue.messages[0].images


@pytest.mark.parametrize(
    ("record", "match"),
    [
        ({"id": "item_1", "image_path": "images/a.png", "dialogue": []}, r"item_1: missing key"),
        (_safemt_record(dialogue="{not json"), r"item item_1: 'dialogue' is a string but not"),
        (_safemt_record(dialogue=[{"role": "user"}]), r"item_1 dialogue\[0\]: missing key"),
        (_safemt_record(dialogue=[{"role": "bot", "content": "x"}]), "unsupported role 'bot'"),
        (_safemt_record(scenario="Cooking"), r"item item_1: unknown safemt category label"),
        (_safemt_record(id=["a"]), r"item #1: 'id' must be a string"),
        ("just a string", r"item #1: expected a JSON object"),
    ],
)
def test_safemt_malformed_names_file_and_item(safemt_dir: Path, record: Any, match: str) -> None:
    path = _write(safemt_dir / "1_turn.json", [record])
    with pytest.raises(SchemaError, match=match) as info:
        load_safemt(path)
    assert str(path) in str(info.value)


def test_bad_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "siuo_gen.json"
    path.write_text("[{", encoding="utf-8")
    with pytest.raises(SchemaError, match=r"siuo_gen\.json: invalid JSON"):
        load_siuo(path)


def test_missing_image_is_reported_not_dropped_silently(safemt_dir: Path) -> None:
    records = [_safemt_record(), _safemt_record(id="item_2", image_path="images/nope.png")]
    loaded = load_safemt(_write(safemt_dir / "1_turn.json", records))
    assert [s.id for s in loaded.samples] == ["safemt-2t-item_1"]
    [missing] = loaded.missing_images
    assert missing.sample_id == "safemt-2t-item_2"
    assert missing.path == str((safemt_dir / "images" / "nope.png").resolve())
    assert missing.reason == "file not found"
    text_only = load_safemt(safemt_dir / "1_turn.json", text_only=True)
    assert len(text_only.samples) == 2 and not text_only.missing_images


@pytest.mark.parametrize("text_only", [False, True])
def test_path_traversal_raises_image_error_naming_the_item(tmp_path: Path, text_only: bool) -> None:
    record = _safemt_record(id="evil_7", image_path="../../etc/passwd")
    path = _write(tmp_path / "1_turn.json", [record])
    with pytest.raises(ImageError, match=r"item evil_7.*outside the data root"):
        load_safemt(path, text_only=text_only)


def test_duplicate_ids_are_an_error(safemt_dir: Path) -> None:
    path = _write(safemt_dir / "1_turn.json", [_safemt_record(), _safemt_record()])
    with pytest.raises(SchemaError, match="duplicate sample id 'safemt-2t-item_1'"):
        load_safemt(path)


def test_limit_counts_kept_and_missing(safemt_dir: Path) -> None:
    records = [_safemt_record(id=f"i{n}", image_path=f"images/{n}.png") for n in range(5)]
    loaded = load_safemt(_write(safemt_dir / "1_turn.json", records), limit=3)
    assert loaded.samples == [] and len(loaded.missing_images) == 3


def test_safemt_folder_prefers_full_files(safemt_dir: Path) -> None:
    _write(safemt_dir / "1_turn.SAMPLE.json", [_safemt_record(id="sample")])
    _write(safemt_dir / "1_turn.json", [_safemt_record(id="full")])
    _write(safemt_dir / "2_turn.SAMPLE.json", [_safemt_record(id="two")])
    loaded = load_safemt(safemt_dir)
    assert [s.metadata["seed_id"] for s in loaded.samples] == ["full", "two"]
    with pytest.raises(DataSpecError, match="no SafeMT turn files"):
        load_safemt(safemt_dir / "images")


def test_csv_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("id,prompt\n1,hi\n", encoding="utf-8")
    with pytest.raises(SchemaError, match=r"x.csv: missing column\(s\) type, label"):
        load_xstest(path)


def test_xstest_bad_label_names_row(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("id,prompt,type,label\n7,hi,homonyms,maybe\n", encoding="utf-8")
    with pytest.raises(SchemaError, match="item 7: label must be safe or unsafe"):
        load_xstest(path)


def test_figstep_bad_ids_and_unknown_category(tmp_path: Path) -> None:
    header = "dataset,category_id,task_id,category_name,question,instruction\n"
    path = tmp_path / "safebench.csv"
    path.write_text(header + "ForbidQI,x,1,Fraud,q?,i.\n", encoding="utf-8")
    with pytest.raises(SchemaError, match="item row 1: category_id and task_id must be integers"):
        load_figstep(path)
    path.write_text(header + "ForbidQI,1,1,Cooking,q?,i.\n", encoding="utf-8")
    with pytest.raises(SchemaError, match=r"row 1 \(figstep-1-1\).*'Cooking'"):
        load_figstep(path)
    path.write_text(header + "ForbidQI,1,1,Fraud,q?,i.\n", encoding="utf-8")
    loaded = load_figstep(path)
    assert loaded.missing_images[0].path.endswith("images/SafeBench/query_ForbidQI_1_1_6.png")


def test_siuo_missing_key(tmp_path: Path) -> None:
    item = {"question_id": 5, "image": "S-05.png", "question": "q", "category": "morality"}
    with pytest.raises(SchemaError, match="item 5: missing key 'reference_answer'"):
        load_siuo(_write(tmp_path / "siuo_gen.json", [item]))


def test_mmsafetybench_wrong_shape_and_variant(tmp_path: Path) -> None:
    path = _write(tmp_path / "06-Fraud.json", [{"Question": "q"}])
    with pytest.raises(SchemaError, match="expected a JSON object of id"):
        load_mmsafetybench(path)
    _write(path, {"0": {"Question": "q"}})
    with pytest.raises(SchemaError, match="item 0: missing key 'Rephrased Question'"):
        load_mmsafetybench(path)
    with pytest.raises(DataSpecError, match="unknown MM-SafetyBench variant 'sdtypo'"):
        load_mmsafetybench(path, variant="sdtypo")


def test_vlguard_malformed(tmp_path: Path) -> None:
    record: dict[str, Any] = {"id": "r1", "image": "a.png", "safe": "maybe", "conversations": []}
    path = _write(tmp_path / "v.json", [record])
    with pytest.raises(SchemaError, match="item r1: 'safe' must be a boolean"):
        load_vlguard(path)
    record["safe"] = True
    _write(path, [record])
    with pytest.raises(SchemaError, match="item r1: 'conversations' must be a non-empty list"):
        load_vlguard(path)
    record["conversations"] = [{"from": "gpt", "value": "x"}]
    _write(path, [record])
    with pytest.raises(SchemaError, match="item r1: 'conversations' has no human turn"):
        load_vlguard(path)


def test_vlguard_image_after_text(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png_bytes())
    convo = [
        {"from": "human", "value": "Look:\n<image>\nthoughts?"},
        {"from": "gpt", "value": "ok"},
    ]
    path = _write(tmp_path / "v.json", [{"id": "r", "image": "a.png", "conversations": convo}])
    [sample] = load_vlguard(path).samples
    kinds = [p.type for p in sample.dialogue.messages[0].parts]
    assert kinds == ["text", "image", "text"] and sample.harmful is None


def test_questions_csv(tmp_path: Path) -> None:
    path = tmp_path / "dna.csv"
    path.write_text(
        "id,question,category,label\n1,How to pick a lock?,Illegal Activity,unsafe\n"
        "2,How to bake bread?,cooking,safe\n3,Hi,,\n",
        encoding="utf-8",
    )
    samples = load_questions(path).samples
    assert [s.id for s in samples] == ["questions-dna-1", "questions-dna-2", "questions-dna-3"]
    assert [s.category for s in samples] == ["illegal_activity", "other", None]
    assert [s.harmful for s in samples] == [True, False, True]


def test_jsonl_rules(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png_bytes())
    good = Sample(
        id="s1",
        source="mine",
        dialogue=Dialogue(messages=[Message.user("x", images=[ImagePart(path="a.png")])]),
    )
    missing = Sample(
        id="s2",
        source="mine",
        dialogue=Dialogue(messages=[Message.user("y", images=[ImagePart(path="gone.png")])]),
    )
    path = tmp_path / "set.jsonl"
    write_jsonl([good, missing], path)
    loaded = load_jsonl(path)
    assert [s.id for s in loaded.samples] == ["s1"]
    assert loaded.samples[0].dialogue.images[0].load().size == (32, 24)
    assert [m.sample_id for m in loaded.missing_images] == ["s2"]
    text_only = load_jsonl(path, text_only=True)
    assert [len(s.dialogue.images) for s in text_only.samples] == [0, 0]
    evil = good.model_copy(
        update={
            "dialogue": Dialogue(
                messages=[Message.user("x", images=[ImagePart(path="../../etc/passwd")])]
            )
        }
    )
    write_jsonl([evil], path)
    with pytest.raises(ImageError, match=r"'s1'.*outside the data root"):
        load_jsonl(path)


def test_registry_errors(tmp_path: Path) -> None:
    with pytest.raises(DataSpecError, match=r"unknown data spec 'nope:x'.*safemt, siuo"):
        load_dataset("nope:x")
    with pytest.raises(DataSpecError, match="expected SOURCE:PATH"):
        load_dataset("plainpath.jsonl")
    with pytest.raises(DataSpecError, match="does not exist"):
        load_dataset(f"siuo:{tmp_path}/none.json")
    with pytest.raises(DataSpecError, match="needs a path after 'figstep:'"):
        load_dataset("figstep:")
