"""RapidOCR on the PaddleOCR models shipped here, rewritten to run faster on a CPU.

The models in the rapidocr wheel were exported op by op: after every convolution come an
affine and a hard-swish spelled out as four element-wise ops, which on one thread cost about as
much as the convolutions themselves. The copies in this folder compute the same function with
those folded into the convolutions (`scripts/build_ocr_models.py` rebuilds them from the wheel;
NOTICE says what changed, LICENSE is PaddleOCR's and RapidOCR's Apache-2.0). On the FigStep
images that makes detection and recognition about 1.6x cheaper with identical text. Detection
also gets ONNX Runtime's memory arena, which RapidOCR turns off: its large feature maps are
then not allocated afresh on every call (another ~20 % of detection).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MODEL_DIR = Path(__file__).resolve().parent
MODELS = {"det": "det.onnx", "cls": "cls.onnx", "rec": "rec.onnx"}
"""RapidOCR's stage name -> the shipped model file."""


def model_paths() -> dict[str, Path]:
    """The shipped model files by stage.

    Raises:
        FileNotFoundError: A model file is missing from the installed package.
    """
    paths = {stage: MODEL_DIR / name for stage, name in MODELS.items()}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"OCR model files missing from the safeturn package: {', '.join(missing)} "
            "(rebuild them with scripts/build_ocr_models.py)"
        )
    return paths


def load_engine(options: dict[str, Any], threads: int | None) -> Any:
    """A RapidOCR engine on the shipped models.

    Args:
        options: RapidOCR keyword options (sizes, batch); model paths and threads are set here.
        threads: ONNX Runtime intra-op threads (None: ONNX Runtime's default, all cores).
    """
    from rapidocr_onnxruntime import RapidOCR

    paths = model_paths()
    kwargs = dict(options) | {f"{stage}_model_path": str(path) for stage, path in paths.items()}
    if threads is not None:
        kwargs |= {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    engine = RapidOCR(**kwargs)
    # rapidocr 1.4.4 builds every session with the memory arena off; detection's feature maps
    # (up to 96x128x128 floats at 512x512) are then allocated on every call.
    engine.text_det.infer.session = _session(paths["det"], threads)
    return engine


def _session(path: Path, threads: int | None) -> Any:
    import onnxruntime as ort  # type: ignore[import-untyped]

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
