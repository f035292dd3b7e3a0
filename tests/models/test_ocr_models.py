"""The fused OCR models in safeturn.models.ocr: rebuildable, and reading as the originals."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from safeturn.data import load_dataset
from safeturn.models import ocr
from safeturn.models.bridge import _ENGINE_OPTIONS, OcrBridge
from safeturn.schema import ImagePart

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "figstep"


def _build_script() -> ModuleType:
    pytest.importorskip("onnx", reason="onnx (a dev dependency) rebuilds the models")
    spec = importlib.util.spec_from_file_location(
        "build_ocr_models", ROOT / "scripts" / "build_ocr_models.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _figstep(n: int) -> list[tuple[Path, str]]:
    """The first `n` SafeBench images with their instruction text (read by the FigStep loader)."""
    table = DATA / "safebench.csv"
    if not table.is_file():
        pytest.skip(f"FigStep data not found under {DATA}")
    samples = load_dataset(f"figstep:{table}", limit=n).samples
    return [(Path(str(s.dialogue.images[0].path)), str(s.metadata["instruction"])) for s in samples]


def test_shipped_models_are_what_the_script_builds(tmp_path: Path) -> None:
    script = _build_script()
    counts = script.build(tmp_path)
    assert counts["rec.onnx"]["hard-swish"] > 0  # the patterns were found, not silently missed
    for name in ocr.MODELS.values():
        assert (tmp_path / name).read_bytes() == (ocr.MODEL_DIR / name).read_bytes(), name


def test_license_and_notice_ship_beside_the_models() -> None:
    notice = (ocr.MODEL_DIR / "NOTICE").read_text(encoding="utf-8")
    for original in ("ch_PP-OCRv4_det_infer", "ch_PP-OCRv4_rec_infer", "ch_ppocr_mobile_v2.0_cls"):
        assert original in notice
    assert "Apache License" in (ocr.MODEL_DIR / "LICENSE").read_text(encoding="utf-8")


def test_a_missing_model_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(ocr, "MODEL_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"det\.onnx"):
        ocr.model_paths()


@pytest.mark.slow
def test_fused_models_read_figstep_exactly_as_the_originals() -> None:
    """Same boxes, same text and the same scores (to 3 decimals) as the wheel's own models."""
    from rapidocr_onnxruntime import RapidOCR

    original = RapidOCR(**_ENGINE_OPTIONS, intra_op_num_threads=1, inter_op_num_threads=1)
    bridge = OcrBridge(disk_cache=False, threads=1)
    fused = bridge._get_engine()
    for path, instruction in _figstep(4):
        pixels = bridge.load(ImagePart(path=str(path)))
        want, _ = original(pixels)
        got, _ = fused(pixels)
        assert [line[1] for line in got] == [line[1] for line in want], path.name
        for (box, _, score), (want_box, _, want_score) in zip(got, want, strict=True):
            assert score == pytest.approx(want_score, abs=1e-3)
            assert np.abs(np.subtract(box, want_box)).max() <= 1.0
        text = bridge.describe(ImagePart(path=str(path)))
        words = set(re.findall(r"[a-z0-9]+", text.lower()))
        assert set(re.findall(r"[a-z0-9]+", instruction.lower())) <= words, (instruction, text)
