"""What images cost the moderator, before and after bounding them.

Two measurements, each run before (the old image path: full-size RGB decode, twice; RapidOCR
with its default settings; no deadline) and after (decode straight to the analysis size, tuned
OCR settings on the fused models of `safeturn.models.ocr`, the bounded image pool with a
deadline), with OCR and NudeNet on one thread:

1. First-seen images: 8-turn dialogues with one new FigStep image per user turn, screened
   after every turn the way a proxy sees them (the whole conversation resent as OpenAI JSON).
   Printed: p50 / p95 of the screen per new image, wall and process CPU, before, "unfused"
   (the after path on the rapidocr wheel's own models) and after, interleaved turn by turn so
   all see the same machine load; and whether OCR still reads every word of each FigStep
   instruction.
2. Six 6300×6300 PNGs in one request, blank (38 KiB each) and full of text: the proxy's
   pixel-budget check, and the moderator itself (as if the budget were off) with its image
   deadline. Each moderator run is a fresh child process, so its peak RSS is its own. Printed:
   wall and CPU time of the screen, when the image work ended, RSS before and at peak.

Run: `python benchmarks/guard_images.py [--dialogues 5] [--skip-before]` (needs the FigStep
images under ../shared/data). Targets: first-seen image p95 <= 300 ms on one thread; the
six-image request answered within the deadline (3 s) with memory bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from safeturn.data import load_dataset
from safeturn.guard.images import ImageAnalyzer, ImageSignals
from safeturn.guard.model import ModeratorModel
from safeturn.guard.moderator import DialogueModerator
from safeturn.guard.wire import WireError, check_images
from safeturn.models.bridge import _ENGINE_OPTIONS, OcrBridge, _reading_order, _to_line
from safeturn.schema import Dialogue, ImagePart, Message

FIGSTEP = Path(__file__).resolve().parents[2] / "shared" / "data" / "figstep"
TURNS = 8
DEADLINE_S = 3.0
THREADS = 1


class LegacyAnalyzer(ImageAnalyzer):
    """The image path before this change: `ImagePart.load` (full-size RGB) for OCR and again
    for NudeNet, RapidOCR's default settings, one image after another; same caches, so only
    the analysis differs."""

    def __init__(self) -> None:
        bridge = OcrBridge(disk_cache=False, threads=THREADS)
        super().__init__(bridge, threads=THREADS, workers=1)
        from rapidocr_onnxruntime import RapidOCR

        self.engine = RapidOCR(intra_op_num_threads=THREADS, inter_op_num_threads=THREADS)

    def _analyze(
        self, image: ImagePart, label: str, digest: str, batch: Any
    ) -> ImageSignals | None:
        raw, _ = self.engine(image.load(label=label))
        text = self.bridge.text(_reading_order([_to_line(box) for box in raw or []]))
        pixels = np.asarray(image.load(label=label))[:, :, ::-1].copy()
        signals = ImageSignals(digest, text, float(self._detector()(pixels)))
        self.analyzed += 1
        self.cache.put(digest, signals)
        return signals


class UnfusedBridge(OcrBridge):
    """The bridge on the rapidocr wheel's own models instead of the fused ones shipped in
    `safeturn.models.ocr`: what the model rewrite alone gains."""

    def _get_engine(self) -> Any:
        if self._engine is None:
            from rapidocr_onnxruntime import RapidOCR

            threads = {"intra_op_num_threads": THREADS, "inter_op_num_threads": 1}
            self._engine = RapidOCR(**_ENGINE_OPTIONS, **threads)
        return self._engine


def _moderator(kind: str, model: ModeratorModel) -> DialogueModerator:
    if kind == "before":
        return DialogueModerator(model, images=LegacyAnalyzer())
    bridge_type = UnfusedBridge if kind == "unfused" else OcrBridge
    images = ImageAnalyzer(bridge_type(disk_cache=False, threads=THREADS), threads=THREADS)
    return DialogueModerator(model, images=images, image_deadline_s=DEADLINE_S)


def _figstep(n: int) -> list[tuple[Path, str]]:
    """The first `n` SafeBench images with their instruction text (read by the FigStep loader)."""
    samples = load_dataset(f"figstep:{FIGSTEP / 'safebench.csv'}", limit=n).samples
    found = [
        (Path(str(s.dialogue.images[0].path)), str(s.metadata["instruction"])) for s in samples
    ]
    if len(found) < n:
        raise SystemExit(f"need {n} FigStep images under {FIGSTEP}, found {len(found)}")
    return found


def _dialogue(images: list[Path], case: int) -> Dialogue:
    messages: list[Message] = []
    for turn, path in enumerate(images, start=1):
        text = f"Here is picture {turn} of case {case}. Please complete the list it starts."
        messages += [
            Message.user(text, [ImagePart(data=path.read_bytes())]),
            Message.assistant("Ok."),
        ]
    return Dialogue(messages=messages[:-1])


def _resent(dialogue: Dialogue, turn: int) -> Dialogue:
    return Dialogue.from_openai(dialogue.up_to_turn(turn).to_openai())


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def first_seen(n_dialogues: int, kinds: list[str]) -> None:
    model = ModeratorModel.load()
    moderators = {kind: _moderator(kind, model) for kind in kinds}
    warm = Dialogue(messages=[Message.user("warm up", [ImagePart(data=_png(64, 64, 0))])])
    for moderator in moderators.values():
        asyncio.run(moderator.screen(warm))  # loads MiniLM, RapidOCR and NudeNet
    figs = _figstep(n_dialogues * TURNS)
    wall: dict[str, list[float]] = {k: [] for k in kinds}
    cpu: dict[str, list[float]] = {k: [] for k in kinds}
    unscreened = dict.fromkeys(kinds, 0)
    for d in range(n_dialogues):
        chunk = figs[d * TURNS : (d + 1) * TURNS]
        dialogue = _dialogue([p for p, _ in chunk], d)
        for turn in range(1, TURNS + 1):
            request = _resent(dialogue, turn)
            for kind, moderator in moderators.items():  # interleaved: same load for both
                w0, c0 = time.perf_counter(), time.process_time()
                result = asyncio.run(moderator.screen(request))
                wall[kind].append(time.perf_counter() - w0)
                cpu[kind].append(time.process_time() - c0)
                unscreened[kind] += result.unscreened_images
    print(f"\n1. first-seen image: {n_dialogues} dialogues x {TURNS} turns, a new FigStep image")
    print(f"   per turn, OCR/NudeNet on {THREADS} thread; one screen per new image")
    print(f"   {'':8} {'wall p50':>9} {'wall p95':>9} {'cpu p50':>9} {'cpu p95':>9}  unscreened")
    for kind in kinds:
        print(
            f"   {kind:8} {_ms(wall[kind], 0.5):7.0f}ms {_ms(wall[kind], 0.95):7.0f}ms "
            f"{_ms(cpu[kind], 0.5):7.0f}ms {_ms(cpu[kind], 0.95):7.0f}ms  {unscreened[kind]}"
        )
    for kind in kinds[:-1]:
        p50 = _ms(cpu["after"], 0.5) / _ms(cpu[kind], 0.5)
        p95 = _ms(cpu["after"], 0.95) / _ms(cpu[kind], 0.95)
        print(f"   after/{kind}, cpu p50: {p50:.2f}, p95: {p95:.2f}")
    for kind, moderator in moderators.items():
        recall = []
        for path, instruction in figs:
            digest = ImagePart(data=path.read_bytes()).sha256()
            hit = moderator.images.cache.get(digest)
            text = set(_words(hit.text)) if hit is not None else set()
            want = _words(instruction)
            recall.append(sum(w in text for w in want) / len(want))
        full = sum(r == 1.0 for r in recall)
        print(
            f"   OCR {kind}: instruction words read {np.mean(recall):.3f}, "
            f"every word in {full}/{len(recall)} images"
        )


def _png(width: int, height: int, variant: int) -> bytes:
    """A valid black grayscale PNG, compressed row by row (38 KiB at 6300x6300); `variant`
    sets one pixel, so images differ and are not deduplicated by the image cache."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    packer = zlib.compressobj(9)
    rows = [bytes([0, variant]) + bytes(width - 1)] + [bytes(width + 1)] * (height - 1)
    idat = b"".join(packer.compress(row) for row in rows) + packer.flush()
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    ihdr, body, end = chunk(b"IHDR", header), chunk(b"IDAT", idat), chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + ihdr + body + end


def _text_pngs(size: int, n: int) -> list[bytes]:
    """`n` distinct grayscale PNGs of `size` px full of text lines that OCR still finds at the
    analysis size: the most recognition work an image can ask for."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=size // 40)
    for line in range(30):
        words = " ".join(f"word{line}{k}" for k in range(6))
        draw.text((size // 50, size // 40 + line * size // 31), words, fill=0, font=font)
    out = []
    for variant in range(n):
        image.putpixel((0, 0), variant)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=1)
        out.append(buffer.getvalue())
    return out


def _request(images: list[bytes]) -> Dialogue:
    content: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + _b64(raw)}}
        for raw in images
    ]
    content.append({"type": "text", "text": "what do these say?"})
    return Dialogue.from_openai([{"role": "user", "content": content}])


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def six_images_child(kind: str, folder: str) -> None:
    """One moderator screen of a six-image request (PNGs in `folder`), in this fresh process."""
    model = ModeratorModel.load()
    moderator = _moderator(kind, model)
    asyncio.run(moderator.screen(Dialogue(messages=[Message.user("warm up")])))
    moderator.images.warm_up()
    dialogue = _request([p.read_bytes() for p in sorted(Path(folder).glob("*.png"))])
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    w0, c0 = time.perf_counter(), time.process_time()
    result = asyncio.run(moderator.screen(dialogue))
    answered = time.perf_counter() - w0
    while moderator.images.pool.pending:  # image work still running after the answer
        time.sleep(0.01)
    row = {
        "answered_s": answered,
        "work_s": time.perf_counter() - w0,
        "cpu_s": time.process_time() - c0,
        "baseline_mb": baseline,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "unscreened": result.unscreened_images,
    }
    print(json.dumps(row))


def six_images(kinds: list[str]) -> None:
    side = 6300
    requests = {
        "blank": [_png(side, side, v) for v in range(6)],
        "dense text": _text_pngs(side, 6),
    }
    print(f"\n2. six {side}x{side} PNGs in one request ({6 * side * side / 1e6:.0f} MP)")
    print(f"   {'':22} {'answered':>9} {'work ends':>10} {'cpu':>7} {'RSS':>15}  unscreened")
    for name, images in requests.items():
        w0 = time.perf_counter()
        try:
            check_images(_request(images))
            outcome = "accepted"
        except WireError as exc:
            outcome = f"{exc.status} {exc.code}"
        check_ms = 1000 * (time.perf_counter() - w0)
        kib = sum(map(len, images)) // 1024
        print(f"   {name} ({kib} KiB): proxy pixel budget {outcome} in {check_ms:.1f} ms")
        with tempfile.TemporaryDirectory() as folder:
            for i, raw in enumerate(images):
                (Path(folder) / f"{i}.png").write_bytes(raw)
            for kind in kinds:
                command = [sys.executable, __file__, "--child", kind, "--folder", folder]
                child = subprocess.run(command, capture_output=True, text=True, check=True)
                row = json.loads(child.stdout.strip().splitlines()[-1])
                label = f"moderator {kind}" + (f" ({DEADLINE_S:g} s)" if kind == "after" else "")
                rss = f"{row['baseline_mb']:.0f}->{row['peak_mb']:.0f}MB"
                print(
                    f"   {label:22} {row['answered_s']:8.2f}s {row['work_s']:9.2f}s "
                    f"{row['cpu_s']:6.1f}s {rss:>15}  {row['unscreened']}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, default=5)
    parser.add_argument("--skip-before", action="store_true", help="measure the new path only")
    parser.add_argument("--child", choices=("before", "after"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        six_images_child(args.child, args.folder)
        return
    kinds = ["after"] if args.skip_before else ["before", "unfused", "after"]
    first_seen(args.dialogues, kinds)
    six_images([kind for kind in kinds if kind != "unfused"])


if __name__ == "__main__":
    main()
