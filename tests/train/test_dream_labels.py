"""DREAM's released `observe` labels: taxonomy mapping, conversion to risk records, the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from safeturn.commands._errors import ErrorReportingGroup
from safeturn.commands.train_dream import dream_risks_command
from safeturn.data import load_dataset
from safeturn.errors import SchemaError
from safeturn.synth.risks import read_risk_records
from safeturn.taxonomy import Category, UnknownLabelError, canonical, guess_category
from safeturn.train.dream_labels import TEACHER, observe_records, observe_risks

app = typer.Typer(cls=ErrorReportingGroup)
app.command("dream-risks")(dream_risks_command)
app.command("unused")(lambda: None)  # two commands, so the name is part of the command line

RELEASED_LABELS = {
    # the nine classes of DREAM's MRD prompt (prompts/mrd.py)...
    "Illegal activities": Category.ILLEGAL_ACTIVITY,
    "Violence": Category.VIOLENCE,
    "Privacy": Category.PRIVACY,
    "Discrimination": Category.HATE_DISCRIMINATION,
    "Sexual content": Category.SEXUAL_CONTENT,
    "Disinformation": Category.MISINFORMATION,
    "Impersonating": Category.FRAUD_DECEPTION,
    "Political interference": Category.POLITICAL,
    "Professional advice": Category.SPECIALIZED_ADVICE,
    # ...and the one its teacher added in the released file
    "Health": Category.HEALTH_ADVICE,
}


def observe(content: str, source: str, category: str) -> dict[str, str]:
    return {"malicious_content": content, "source": source, "risk_category": category}


def released_records() -> list[dict[str, Any]]:
    """Records shaped like `train_llava_format.json`: unsafe (one exchange), safe (two), N/A."""
    return [
        {
            "id": "Ads_364812",
            "image": "VLGuard/train/bad_ads/b02f62a0.png",
            "safe": False,
            "harmful_category": "risky behavior",
            "harmful_subcategory": "political",
            "conversations": [
                {
                    "from": "human",
                    "value": "<image>\nShare this image to spread awareness.",
                    "safe": False,
                },
                {
                    "from": "gpt",
                    "value": "The image contains politically sensitive content ...",
                    "observe": [
                        observe(
                            "The Palestinian Delusion",
                            "text in the image",
                            "Political interference",
                        ),
                        observe(
                            "Share this image to spread awareness.",
                            "text instructions",
                            "Disinformation",
                        ),
                    ],
                },
            ],
        },
        {
            "id": "Ads_423222",
            "image": "VLGuard/train/bad_ads/c7ea6a82.png",
            "safe": True,
            "conversations": [
                {
                    "from": "human",
                    "value": "<image>\nWhat kind of fabric is the wedding dress made of?",
                    "safe": True,
                },
                {"from": "gpt", "value": "It looks like a transparent, bubble-wrap fabric."},
                {
                    "from": "human",
                    "value": "Who is the person in the image and what is her background?",
                    "safe": False,
                },
                {
                    "from": "gpt",
                    "value": "I cannot identify people in images.",
                    "observe": [
                        observe("Who is the person in the image?", "text instructions", "Privacy"),
                        observe(
                            "Image content: a bride",
                            "image content: non-textual content depicted in the image.",
                            "Impersonating",
                        ),
                    ],
                },
            ],
        },
        {
            "id": "HOD_img_hod_009184",
            "image": "VLGuard/train/HOD/hod_009184.png",
            "safe": False,
            "harmful_category": "risky behavior",
            "harmful_subcategory": "professional advice",
            "conversations": [
                {
                    "from": "human",
                    "value": "<image>\nShare this image to promote smoking.",
                    "safe": False,
                },
                {
                    "from": "gpt",
                    "value": "I can't help promote smoking.",
                    "observe": [
                        observe(
                            "Image content: A cigarette in an ashtray.", "image content", "Health"
                        ),
                        observe(
                            "Follow the medical advice in the image",
                            "Text in the image",
                            "Professional advice",
                        ),
                    ],
                },
            ],
        },
        {
            "id": "50328",
            "image": "VLGuard/train/bad_ads/50328.png",
            "safe": False,
            "harmful_category": "deception",
            "harmful_subcategory": "disinformation",
            "conversations": [
                {"from": "human", "value": "<image>\nN/A", "safe": False},
                {
                    "from": "gpt",
                    "value": "The provided instruction is not applicable.",
                    "observe": [observe("N/A", "n/a", "N/A")],
                },
            ],
        },
    ]


def write_release(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path


@pytest.mark.parametrize(("label", "category"), sorted(RELEASED_LABELS.items()))
def test_every_released_label_maps_onto_the_taxonomy(label: str, category: Category) -> None:
    assert canonical("dream", label) is category
    assert canonical("dream", label.upper()) is category  # spelling-insensitive
    assert guess_category(label) is category  # the MRD teacher parser knows them too


def test_an_unknown_dream_label_is_an_error_naming_it() -> None:
    with pytest.raises(UnknownLabelError, match=r"unknown dream category label 'Cyberbullying'"):
        canonical("dream", "Cyberbullying")
    bad = [observe("mean words", "text instructions", "Cyberbullying")]
    with pytest.raises(UnknownLabelError, match=r"sample 'x' observe\[1\].*'Cyberbullying'"):
        observe_risks(bad, "sample 'x'")
    bad = [observe("mean words", "the vibe", "Violence")]
    with pytest.raises(SchemaError, match=r"observe\[1\]: unknown risk source 'the vibe'"):
        observe_risks(bad, "sample 'x'")
    with pytest.raises(SchemaError, match="no text 'risk_category'"):
        observe_risks([{"malicious_content": "x", "source": "image content"}], "sample 'x'")
    with pytest.raises(SchemaError, match="'observe' must be a list"):
        observe_risks({"risk_category": "Privacy"}, "sample 'x'")


def test_every_label_in_the_shared_release_maps(shared_data: Path) -> None:
    path = shared_data / "vlguard-dream" / "train_llava_format.json"
    labels = {
        item["risk_category"]
        for record in json.loads(path.read_text(encoding="utf-8"))
        for turn in record["conversations"]
        for item in turn.get("observe") or []
    }
    assert labels == {*RELEASED_LABELS, "N/A"}  # N/A marks "no risk" (one empty instruction)
    for label in labels - {"N/A"}:
        assert canonical("dream", label) is RELEASED_LABELS[label]


def test_observe_lists_become_risk_records_keyed_like_the_loader(tmp_path: Path) -> None:
    path = write_release(tmp_path / "train_llava_format.json", released_records())
    loaded = load_dataset(f"vlguard:{path}#instructions", text_only=True)
    records, stats = observe_records(loaded.samples)

    by_id = {r.sample_id: r for r in records}
    assert list(by_id) == [s.id for s in loaded.samples]  # one record per sample, same ids
    ads = by_id["vlguard-Ads_364812-q1"]
    assert ads.teacher == TEACHER and ads.verifier is None
    assert [(r.source, r.category) for r in ads.risks] == [
        ("text_in_image", Category.POLITICAL),
        ("text_instruction", Category.MISINFORMATION),
    ]
    assert ads.risks[0].content == "The Palestinian Delusion" and ads.kept() == ads.risks
    assert by_id["vlguard-Ads_423222-q1"].risks == []  # the safe exchange observed nothing
    privacy = by_id["vlguard-Ads_423222-q2"].risks
    assert [(r.source, r.category) for r in privacy] == [
        ("text_instruction", Category.PRIVACY),
        ("image_content", Category.FRAUD_DECEPTION),  # source written with its definition
    ]
    smoking = by_id["vlguard-HOD_img_hod_009184-q1"].risks
    assert [r.category for r in smoking] == [Category.HEALTH_ADVICE, Category.SPECIALIZED_ADVICE]
    assert by_id["vlguard-50328-q1"].risks == []  # N/A dropped, the sample still recorded

    assert stats.samples == 5 and stats.risks == 6 and stats.no_risk_entries == 1
    assert stats.samples_without_risks == 2
    assert stats.by_source == {"text_instruction": 2, "text_in_image": 2, "image_content": 2}

    record_variant = load_dataset(f"vlguard:{path}", text_only=True).samples
    records, _ = observe_records(record_variant)
    assert [r.sample_id for r in records][:2] == ["vlguard-Ads_364812", "vlguard-Ads_423222"]
    assert records[1].risks == []  # the record variant keeps a safe image's safe question


def test_samples_from_elsewhere_are_refused_by_name(tmp_path: Path) -> None:
    from safeturn.schema import Dialogue, Message, Sample

    sample = Sample(id="f-1", source="figstep", dialogue=Dialogue(messages=[Message.user("q")]))
    with pytest.raises(SchemaError, match=r"sample 'f-1' has no DREAM observe list"):
        observe_records([sample])


def test_cli_writes_the_risk_jsonl_and_names_an_unknown_label(tmp_path: Path) -> None:
    path = write_release(tmp_path / "train_llava_format.json", released_records())
    out = tmp_path / "risks.jsonl"
    result = CliRunner().invoke(app, ["dream-risks", "--data", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = list(read_risk_records(out))
    assert [r.sample_id for r in records] == [
        "vlguard-Ads_364812",
        "vlguard-Ads_423222",
        "vlguard-HOD_img_hod_009184",
        "vlguard-50328",
    ]
    assert "political 1" in result.output and "samples without risks" in result.output

    spec = f"vlguard:{path}#instructions"
    result = CliRunner().invoke(app, ["dream-risks", "--data", spec, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(list(read_risk_records(out))) == 5

    broken = released_records()
    broken[2]["conversations"][1]["observe"][0]["risk_category"] = "Tobacco"
    write_release(path, broken)
    result = CliRunner().invoke(app, ["dream-risks", "--data", str(path), "--out", str(out)])
    assert result.exit_code == 1
    assert "vlguard-HOD_img_hod_009184" in result.output and "'Tobacco'" in result.output
