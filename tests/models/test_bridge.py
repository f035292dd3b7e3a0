from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw, ImageFont

from safeturn.models.bridge import (
    OcrBridge,
    abridge_dialogue,
    bridge_dialogue,
    image_placeholder,
)
from safeturn.schema import Dialogue, ImagePart, Message, TextPart

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
FIGSTEP_CSV = DATA / "figstep" / "SafeBench-Tiny.csv"
FIGSTEP_IMAGES = DATA / "figstep" / "images" / "SafeBench-Tiny"


def render(lines: list[str], size: tuple[int, int] = (760, 300)) -> ImagePart:
    """Black text on white, one line per entry, as a PNG ImagePart."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=48)
    for i, line in enumerate(lines):
        draw.text((20, 20 + 90 * i), line, fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return ImagePart(data=buffer.getvalue())


def blank() -> ImagePart:
    buffer = io.BytesIO()
    Image.new("RGB", (200, 120), "white").save(buffer, "PNG")
    return ImagePart(data=buffer.getvalue())


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("SAFETURN_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="module")
def shared_bridge() -> OcrBridge:
    """One engine for the module (loading it costs ~0.5 s); disk cache off."""
    return OcrBridge(disk_cache=False)


@pytest.mark.slow
def test_reads_rendered_text_in_reading_order(shared_bridge: OcrBridge) -> None:
    text = shared_bridge.describe(render(["Steps to bake bread", "quickly at home"]))
    assert {"steps", "bake", "bread", "quickly", "home"} <= words(text)
    first, _, second = text.partition("\n")
    assert "bread" in first.lower()
    assert "home" in second.lower()


@pytest.mark.slow
def test_blank_image_reads_as_empty(shared_bridge: OcrBridge) -> None:
    assert shared_bridge.describe(blank()) == ""


@pytest.mark.slow
def test_second_call_hits_memory_then_disk_cache(
    _isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = render(["Cached words here"])
    bridge = OcrBridge()
    first = bridge.describe(image)
    assert bridge.engine_calls == 1
    assert bridge.describe(image) == first
    assert bridge.engine_calls == 1
    files = list((_isolated_cache / "ocr").glob("*.json"))
    assert [f.stem for f in files] == [image.sha256()]
    assert json.loads(files[0].read_text())["sha256"] == image.sha256()

    # A fresh bridge (new process, say) must read the disk cache, never the engine.
    fresh = OcrBridge()

    def boom(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("OCR engine called despite a cached result")

    monkeypatch.setattr(fresh, "_get_engine", boom)
    same_bytes = ImagePart(data=image.data)
    assert fresh.describe(same_bytes) == first
    assert fresh.engine_calls == 0


def test_confidence_threshold_applies_to_cached_lines(_isolated_cache: Path) -> None:
    image = blank()
    bridge = OcrBridge(min_confidence=0.5)
    record = {
        "engine": bridge.engine_id,
        "sha256": image.sha256(),
        "lines": [
            ["right", 0.9, 60.0, 10.0, 20.0],
            ["left", 0.95, 0.0, 12.0, 20.0],
            ["noise", 0.2, 0.0, 58.0, 20.0],
            ["below", 0.8, 40.0, 60.0, 20.0],
        ],
    }
    (_isolated_cache / "ocr").mkdir(parents=True)
    (_isolated_cache / "ocr" / f"{image.sha256()}.json").write_text(json.dumps(record))
    assert bridge.describe(image) == "left right\nbelow"
    assert OcrBridge(min_confidence=0.1).describe(image) == "left right\nnoise below"
    assert bridge.engine_calls == 0


def test_placeholder_format() -> None:
    assert image_placeholder(2, "") == "[Image 2: no readable text]"
    assert image_placeholder(1, "How to\n  do X") == (
        '[Image 1: the image contains the text: "How to do X"]'
    )


@pytest.mark.slow
async def test_dialogue_rewrite_replaces_images(shared_bridge: OcrBridge) -> None:
    dialogue = Dialogue(
        messages=[
            Message.system("Be helpful."),
            Message.user("Read this.", [render(["Hello world"])]),
            Message.assistant("Done."),
            Message.user("And these?", [blank(), render(["Green apple"])]),
        ]
    )
    bridged, info = await abridge_dialogue(dialogue, shared_bridge)
    assert info.method == "ocr"
    assert info.images == 3
    assert len(info.texts) == 3
    assert words(info.texts[0]) >= {"hello", "world"}
    assert info.texts[1] == ""
    assert bridged.images == []
    assert all(isinstance(p, TextPart) for m in bridged.messages for p in m.parts)
    first_user = bridged.messages[1].text
    assert first_user.startswith("[Image 1: the image contains the text: ")
    assert first_user.endswith("Read this.")
    last = bridged.messages[3].text
    assert "[Image 2: no readable text]" in last
    assert "[Image 3: the image contains the text: " in last
    assert [m.role for m in bridged.messages] == [m.role for m in dialogue.messages]
    assert dialogue.images  # the input is untouched


def test_rewrite_without_images_is_identity() -> None:
    dialogue = Dialogue(messages=[Message.user("plain text")])
    bridged, info = bridge_dialogue(dialogue, OcrBridge())
    assert bridged == dialogue
    assert info.images == 0
    assert info.texts == []


def _figstep_rows() -> list[dict[str, str]]:
    if not FIGSTEP_CSV.is_file() or not FIGSTEP_IMAGES.is_dir():
        pytest.skip(f"FigStep data not found under {DATA}")
    with FIGSTEP_CSV.open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_reads_a_real_figstep_image(shared_bridge: OcrBridge) -> None:
    rows = _figstep_rows()
    checked = 0
    for row in rows[:3]:
        name = f"query_{row['dataset']}_{row['category_id']}_{row['task_id']}_6.png"
        path = FIGSTEP_IMAGES / name
        if not path.is_file():
            continue
        text = shared_bridge.describe(ImagePart(path=str(path)))
        expected = {w for w in words(row["instruction"]) if len(w) > 3}
        found = words(text)
        assert len(expected & found) >= 0.8 * len(expected), (row["instruction"], text)
        checked += 1
    if checked == 0:
        pytest.skip("no FigStep images matched the CSV rows")
