"""Rebuild the fused OCR models shipped in `src/safeturn/models/ocr/` from the rapidocr wheel.

The PaddleOCR models in `rapidocr_onnxruntime` (PP-OCRv4 det and rec, mobile v2.0 cls) were
exported op by op: every convolution is followed by a learnable affine (`x * s + b`, two ops),
a hard-swish written out as four ops (`x * clip(x + 3, 0, 6) / 6`) and a second affine. On one
CPU thread these element-wise ops cost about as much as the convolutions. This script rewrites
each graph without changing what it computes (up to float rounding):

1. the affine after a convolution is folded into the convolution's weights and bias;
2. the four-op hard-swish becomes one `HardSwish` node (opset 12 -> 14 first, with ONNX's
   version converter), which ONNX Runtime fuses into the convolution;
3. the affine before a convolution is folded into it: the scale always, the shift too when
   the convolution has no padding (with zero padding the shift stays as one `Add`).

The output is deterministic: same wheel, same `onnx` and numpy versions, same bytes
(`tests/models/test_ocr_models.py` checks the shipped files against a fresh build).

Run: `python scripts/build_ocr_models.py [--out DIR]` (needs the dev dependency `onnx`).
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter

OUT = Path(__file__).resolve().parents[1] / "src" / "safeturn" / "models" / "ocr"
MODELS = {
    "det.onnx": "ch_PP-OCRv4_det_infer.onnx",
    "rec.onnx": "ch_PP-OCRv4_rec_infer.onnx",
    "cls.onnx": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
}
"""Shipped name -> the wheel's file it is built from."""
OPSET = 14
"""The first opset with `HardSwish`."""


def wheel_models() -> Path:
    """The folder of ONNX models inside the installed rapidocr_onnxruntime wheel."""
    import rapidocr_onnxruntime

    return Path(rapidocr_onnxruntime.__file__).resolve().parent / "models"


class Graph:
    """A model's nodes as a list and its constants as arrays, for pattern rewrites."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.nodes: list[onnx.NodeProto] = []
        self.consts: dict[str, np.ndarray[Any, Any]] = {
            t.name: numpy_helper.to_array(t) for t in model.graph.initializer
        }
        for node in model.graph.node:
            if node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]:
                self.consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            else:
                self.nodes.append(node)
        self.outputs = {o.name for o in model.graph.output}
        self.users: dict[str, list[onnx.NodeProto]] = {}
        self.refresh()

    def refresh(self) -> None:
        """Recompute who reads each value (after nodes were replaced)."""
        self.users = collections.defaultdict(list)
        for node in self.nodes:
            for name in node.input:
                self.users[name].append(node)

    def sole_user(self, name: str, op_type: str) -> onnx.NodeProto | None:
        """The only node reading `name`, if it is an `op_type` and `name` is internal."""
        users = self.users.get(name, [])
        if len(users) == 1 and users[0].op_type == op_type and name not in self.outputs:
            return users[0]
        return None

    def scalar(self, node: onnx.NodeProto, other_than: str) -> float | None:
        """The one-element constant that `node` combines with `other_than`, if any."""
        rest = [name for name in node.input if name != other_than]
        if len(rest) != 1 or rest[0] not in self.consts or self.consts[rest[0]].size != 1:
            return None
        return float(self.consts[rest[0]].ravel()[0])

    def variable_input(self, node: onnx.NodeProto) -> str | None:
        """The single non-constant input of a binary op, if it has exactly one."""
        found = [name for name in node.input if name not in self.consts]
        return found[0] if len(found) == 1 else None

    def replace(self, old: list[onnx.NodeProto], new: list[onnx.NodeProto]) -> None:
        """Drop `old`, putting `new` where the first of them stood (keeps topological order)."""
        drop = [i for i, node in enumerate(self.nodes) if any(node is o for o in old)]
        kept = [node for i, node in enumerate(self.nodes) if i not in drop]
        at = drop[0] - sum(1 for i in drop if i < drop[0])
        self.nodes = kept[:at] + new + kept[at:]
        self.refresh()

    def conv_weights(
        self, conv: onnx.NodeProto
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]] | None:
        """A Conv's constant weight and bias (zeros when it has none), or None."""
        if conv.input[1] not in self.consts:
            return None
        weight = self.consts[conv.input[1]]
        bias = self.consts[conv.input[2]] if len(conv.input) > 2 else np.zeros(weight.shape[0])
        return weight, bias

    def set_conv(
        self, conv: onnx.NodeProto, weight: np.ndarray[Any, Any], bias: np.ndarray[Any, Any]
    ) -> None:
        """Give `conv` new weight and bias constants, named after its output."""
        stem = conv.output[0]
        self.consts[f"{stem}.fused_w"] = weight.astype(np.float32)
        self.consts[f"{stem}.fused_b"] = bias.astype(np.float32)
        conv.input[1] = f"{stem}.fused_w"
        if len(conv.input) > 2:
            conv.input[2] = f"{stem}.fused_b"
        else:
            conv.input.append(f"{stem}.fused_b")

    def to_model(self) -> onnx.ModelProto:
        """The model with the rewritten nodes and only the constants they still use."""
        used = {name for node in self.nodes for name in node.input}
        model = self.model
        del model.graph.node[:]
        model.graph.node.extend(self.nodes)
        del model.graph.initializer[:]
        model.graph.initializer.extend(
            numpy_helper.from_array(np.ascontiguousarray(array), name)
            for name, array in self.consts.items()
            if name in used
        )
        onnx.checker.check_model(model)
        return model


def _affine_after(graph: Graph, value: str) -> tuple[onnx.NodeProto, float, onnx.NodeProto, float]:
    """`value * s + b` as (Mul, s, Add, b), or raise LookupError."""
    mul = graph.sole_user(value, "Mul")
    scale = None if mul is None else graph.scalar(mul, value)
    add = None if mul is None else graph.sole_user(mul.output[0], "Add")
    shift = None if add is None or mul is None else graph.scalar(add, mul.output[0])
    if mul is None or add is None or scale is None or shift is None:
        raise LookupError(value)
    return mul, scale, add, shift


def fold_affine_after_conv(graph: Graph) -> int:
    """Conv -> Mul(s) -> Add(b) becomes one Conv with weights W*s and bias bias*s + b."""
    folded = 0
    for conv in [n for n in graph.nodes if n.op_type == "Conv"]:
        params = graph.conv_weights(conv)
        try:
            mul, scale, add, shift = _affine_after(graph, conv.output[0])
        except LookupError:
            continue
        if params is None:
            continue
        weight, bias = params
        conv.output[0] = add.output[0]
        graph.set_conv(conv, weight * scale, bias * scale + shift)
        graph.replace([mul, add], [])
        folded += 1
    return folded


def _clip_bounds(graph: Graph, clip: onnx.NodeProto) -> tuple[float, float] | None:
    bounds = [graph.consts.get(name) for name in clip.input[1:3]]
    if len(bounds) != 2 or any(b is None or b.size != 1 for b in bounds):
        return None
    return float(bounds[0].ravel()[0]), float(bounds[1].ravel()[0])  # type: ignore[union-attr]


def fuse_hardswish(graph: Graph) -> int:
    """Add(x, 3) -> Clip(0, 6) -> Mul(x, .) -> Div(., 6) becomes HardSwish(x)."""
    fused = 0
    for add in [n for n in graph.nodes if n.op_type == "Add"]:
        x = graph.variable_input(add)
        if x is None or graph.scalar(add, x) != 3.0:
            continue
        clip = graph.sole_user(add.output[0], "Clip")
        if clip is None or _clip_bounds(graph, clip) != (0.0, 6.0):
            continue
        mul = graph.sole_user(clip.output[0], "Mul")
        if mul is None or x not in mul.input:
            continue
        div = graph.sole_user(mul.output[0], "Div")
        if div is None or graph.scalar(div, mul.output[0]) != 6.0:
            continue
        out = div.output[0]
        graph.replace([add, clip, mul, div], [helper.make_node("HardSwish", [x], [out], out)])
        fused += 1
    return fused


def fold_affine_before_conv(graph: Graph) -> int:
    """Mul(x, s) -> Add(b) -> Conv: s goes into the Conv's weights.

    b goes into its bias when the Conv has no padding; with padding, the padded zeros would
    see b too, so it stays as Add(x, b / s).
    """
    folded = 0
    for mul in [n for n in graph.nodes if n.op_type == "Mul"]:
        x = graph.variable_input(mul)
        try:
            found, scale, add, shift = _affine_after(graph, x or "")
        except LookupError:
            continue
        conv = graph.sole_user(add.output[0], "Conv")
        params = None if conv is None else graph.conv_weights(conv)
        if found is not mul or x is None or conv is None or params is None or not scale:
            continue
        if conv.input[0] != add.output[0]:
            continue
        weight, bias = params
        padded = any(p for a in conv.attribute if a.name == "pads" for p in a.ints) or any(
            a.s not in (b"NOTSET", b"VALID") for a in conv.attribute if a.name == "auto_pad"
        )
        if padded:
            graph.set_conv(conv, weight * scale, bias)
            graph.consts[f"{add.output[0]}.shift"] = np.array(shift / scale, np.float32)
            add.input[:] = [x, f"{add.output[0]}.shift"]
            graph.replace([mul], [])
        else:
            # Summed in float64: the float32 result then does not hang on summation order.
            sums = weight.astype(np.float64).sum(axis=(1, 2, 3))
            graph.set_conv(conv, weight * scale, bias + shift * sums)
            conv.input[0] = x
            graph.replace([mul, add], [])
        folded += 1
    return folded


def fuse(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """The rewritten model and how many patterns of each kind were rewritten."""
    if model.opset_import[0].version < OPSET:
        model = version_converter.convert_version(model, OPSET)
    graph = Graph(model)
    counts = {
        "affine after conv": fold_affine_after_conv(graph),
        "hard-swish": fuse_hardswish(graph),
        "affine before conv": fold_affine_before_conv(graph),
    }
    out = graph.to_model()
    out.producer_name = "safeturn scripts/build_ocr_models.py"
    return out, counts


def build(out: Path = OUT, source: Path | None = None) -> dict[str, dict[str, int]]:
    """Write the fused models into `out`; returns the rewrite counts per model."""
    source = source or wheel_models()
    out.mkdir(parents=True, exist_ok=True)
    report = {}
    for name, original in MODELS.items():
        model, counts = fuse(onnx.load(str(source / original)))
        (out / name).write_bytes(model.SerializeToString(deterministic=True))
        report[name] = counts
    return report


def main() -> None:
    """Command line: rebuild into `--out` (default: the package's ocr folder)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    for name, counts in build(args.out).items():
        print(name, counts)


if __name__ == "__main__":
    main()
