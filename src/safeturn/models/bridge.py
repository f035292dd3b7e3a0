"""The image→text bridge: how a text-only model is shown images.

A text-only model cannot see pixels, so each image is replaced by the text that OCR reads in
it. Typographic attacks (FigStep and friends) put the harmful request *in* the image, so OCR
carries exactly the part of the image that matters to them. Results are cached by the image's
sha256, in memory and as one small JSON file per image under `cache_dir()/ocr/`, so rerunning a
benchmark or re-sending the same image in later turns costs nothing.

Cost is bounded: an image is decoded straight to at most `ANALYSIS_MAX_PIXELS` (draft/reduce,
`safeturn.imaging`) before OCR, RapidOCR never enlarges it again (its default scales the short
side up to 736 px: a thin strip then costs many times its size, and small images misread), and the
recogniser runs one text line at a time, unpadded: on the FigStep images that reads every
instruction word at about half the single-thread cost of the defaults
(`benchmarks/guard_images.py`). The models are RapidOCR's, rewritten to fold their
element-wise ops into the convolutions (`safeturn.models.ocr`): the same text for about 0.6x
the CPU. The angle classifier stays on: without it upside-down text reads as nothing, for
5 ms an image. ONNX Runtime threads come from `threads` or the
`SAFETURN_OCR_THREADS` environment variable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from safeturn.cache import cache_dir
from safeturn.imaging import ANALYSIS_MAX_PIXELS, ANALYSIS_MAX_SIDE, decode_fitted
from safeturn.models.ocr import load_engine
from safeturn.schema import DEFAULT_LIMITS, BridgeInfo, Dialogue, ImagePart, Message, TextPart

logger = logging.getLogger(__name__)

OCR_ENGINE = "rapidocr-onnxruntime/3"
"""Recorded in every disk-cache record (with the analysis size), so a change of engine or of
its settings invalidates old results. /2: no det upscaling, one unpadded line per rec call.
/3: the fused models of `safeturn.models.ocr` (same text, scores may differ in the last digits)."""
THREADS_ENV = "SAFETURN_OCR_THREADS"
"""ONNX Runtime threads per OCR / NudeNet call when none are given (unset: ONNX's default)."""
_ENGINE_OPTIONS: dict[str, Any] = {
    "det_limit_side_len": 32,  # limit_type "min": enlarge only below 32 px, i.e. never
    "rec_batch_num": 1,
    "rec_img_shape": [3, 48, 160],  # narrowest padding for short lines ("1.", "2.")
}


def ocr_threads(threads: int | None = None) -> int | None:
    """`threads`, else `SAFETURN_OCR_THREADS`, else None (ONNX Runtime's default: all cores).

    Raises:
        ValueError: The variable is set but not a positive integer.
    """
    if threads is not None:
        if threads < 1:
            raise ValueError(f"OCR threads must be >= 1; got {threads}")
        return threads
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{THREADS_ENV} must be a positive integer; got {raw!r}")
    return int(raw)


NO_TEXT = "no readable text"


class OcrLine(NamedTuple):
    """One box of recognised text."""

    text: str
    confidence: float
    x: float
    """Left edge of the box, in pixels."""
    y: float
    """Vertical centre of the box, in pixels."""
    height: float


class BridgedDialogue(NamedTuple):
    """A dialogue rewritten for a text-only model, and what the bridge produced."""

    dialogue: Dialogue
    info: BridgeInfo


class OcrBridge:
    r"""Reads the text in images with RapidOCR (on the ONNX models of `safeturn.models.ocr`).

    The engine loads lazily on first use and is shared by every call; calls are serialised by
    a lock, so one bridge may be used from several threads.

    Args:
        min_confidence: Boxes recognised with a lower score are dropped.
        disk_cache: Keep results as JSON files under `cache_dir()/ocr/` (read and written).
        threads: ONNX Runtime threads (default: `SAFETURN_OCR_THREADS`, else all cores).
        max_pixels: Images are shrunk to this many pixels before OCR.
        max_side: ...and to this longest side.

    Examples:
        >>> bridge = OcrBridge()
        >>> bridge.describe(ImagePart(path="figstep.png"), "turn 1")  # doctest: +SKIP
        'Steps to\nmanufacture\nillegal drugs.'
    """

    def __init__(
        self,
        *,
        min_confidence: float = 0.5,
        disk_cache: bool = True,
        threads: int | None = None,
        max_pixels: int = ANALYSIS_MAX_PIXELS,
        max_side: int = ANALYSIS_MAX_SIDE,
    ) -> None:
        self.min_confidence = min_confidence
        self.disk_cache = disk_cache
        self.threads = ocr_threads(threads)
        self.max_pixels = max_pixels
        self.max_side = max_side
        self.engine_id = f"{OCR_ENGINE};fit={max_pixels}px/{max_side}"
        """Stamped on disk-cache records: results read at another size are not reused."""
        self._engine: Any = None
        self._lock = threading.Lock()
        self._memory: dict[str, list[OcrLine]] = {}
        self.engine_calls = 0
        """How many images were actually run through OCR (cache misses)."""

    def _get_engine(self) -> Any:
        if self._engine is None:
            start = time.perf_counter()
            self._engine = load_engine(_ENGINE_OPTIONS, self.threads)
            logger.info("loaded RapidOCR in %.2f s", time.perf_counter() - start)
        return self._engine

    def warm_up(self) -> None:
        """Load the engine now (≈0.5 s), so the first image does not pay for it."""
        with self._lock:
            self._get_engine()

    def load(self, image: ImagePart, label: str = "image") -> np.ndarray[Any, Any]:
        """The RGB pixels OCR reads: decoded straight to the analysis size.

        Raises:
            ImageError: The image is missing, corrupt or over the default limits.
        """
        raw = image.read_bytes(label=label)
        fitted = decode_fitted(
            raw,
            label=label,
            max_pixels=self.max_pixels,
            max_side=self.max_side,
            limit_pixels=DEFAULT_LIMITS.max_pixels,
            formats=DEFAULT_LIMITS.formats,
        )
        return np.asarray(fitted)

    def lines(self, image: ImagePart, label: str = "image") -> list[OcrLine]:
        """All recognised boxes of `image` (every confidence), cached by content hash.

        Args:
            image: The image to read.
            label: Names the image in errors (e.g. "sample 'x' message 2 image 0").

        Returns:
            The boxes in reading order.

        Raises:
            ImageError: The image cannot be read or decoded.
        """
        digest = image.sha256(label=label)
        found = self.cached(digest)
        if found is None:
            found = self.read(digest, self.load(image, label), label)
            assert found is not None  # only a cancelled read returns None
        return found

    def cached(self, digest: str) -> list[OcrLine] | None:
        """The boxes already read for the image with this sha256 (memory, then disk), or None."""
        found = self._memory.get(digest)
        if found is None:
            found = self._read_disk(digest)
            if found is not None:
                self._memory[digest] = found
        return found

    def read(
        self,
        digest: str,
        pixels: np.ndarray[Any, Any],
        label: str = "image",
        *,
        cancelled: Callable[[], bool] | None = None,
    ) -> list[OcrLine] | None:
        """Run OCR on `pixels` (from `load`) and cache the boxes under `digest`.

        Args:
            digest: The image's sha256.
            pixels: RGB pixels at the analysis size.
            label: Names the image in logs.
            cancelled: Asked once the engine is free, right before it runs: True skips the
                call (the caller gave up while waiting) and returns None; nothing is cached.
        """
        with self._lock:
            if cancelled is not None and cancelled():
                return None
            engine = self._get_engine()
            start = time.perf_counter()
            raw, _elapsed = engine(pixels)
            self.engine_calls += 1
        logger.debug("OCR of %s took %.2f s", label, time.perf_counter() - start)
        found = _reading_order([_to_line(box) for box in raw or []])
        self._write_disk(digest, found)
        self._memory[digest] = found
        return found

    def describe(self, image: ImagePart, label: str = "image") -> str:
        """The text read in `image`: confident boxes in reading order, one line per text line.

        Args:
            image: The image to read.
            label: Names the image in errors.

        Returns:
            The text, or an empty string when nothing readable was found.
        """
        return self.text(self.lines(image, label))

    def text(self, lines: list[OcrLine]) -> str:
        """The confident boxes of `lines` as text, one line per text line."""
        kept = [line for line in lines if line.confidence >= self.min_confidence]
        return "\n".join(" ".join(line.text for line in row) for row in _rows(kept))

    async def adescribe(self, image: ImagePart, label: str = "image") -> str:
        """`describe` in a worker thread, for async callers."""
        return await asyncio.to_thread(self.describe, image, label)

    def _cache_path(self, digest: str) -> Path:
        return cache_dir() / "ocr" / f"{digest}.json"

    def _read_disk(self, digest: str) -> list[OcrLine] | None:
        if not self.disk_cache:
            return None
        path = self._cache_path(digest)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if record.get("engine") != self.engine_id:
                return None
            return [OcrLine(*item) for item in record["lines"]]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring unreadable OCR cache file %s (%s)", path, exc)
            return None

    def _write_disk(self, digest: str, found: list[OcrLine]) -> None:
        if not self.disk_cache:
            return
        path = self._cache_path(digest)
        record = {"engine": self.engine_id, "sha256": digest, "lines": [list(x) for x in found]}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(record, fh)
            Path(tmp).replace(path)
        except OSError as exc:
            logger.warning("could not write OCR cache file %s (%s)", path, exc)


def image_placeholder(index: int, text: str) -> str:
    """The text that stands in for the `index`-th image (1-based) of a dialogue."""
    flat = " ".join(text.split())
    if not flat:
        return f"[Image {index}: {NO_TEXT}]"
    return f'[Image {index}: the image contains the text: "{flat}"]'


def bridge_dialogue(
    dialogue: Dialogue, bridge: OcrBridge, *, label: str = "dialogue"
) -> BridgedDialogue:
    """Rewrite `dialogue` for a text-only model: each image becomes a bracketed text part.

    Images are numbered across the whole dialogue in order. Consecutive text parts of a message
    stay separate parts; `Message.text` joins them with newlines.

    Args:
        dialogue: The dialogue to rewrite; it is not modified.
        bridge: Reads the images.
        label: Names the dialogue in image errors.

    Returns:
        The rewritten dialogue and a `BridgeInfo` listing the text read in each image.
    """
    texts: list[str] = []
    messages: list[Message] = []
    for i, message in enumerate(dialogue.messages):
        parts: list[TextPart | ImagePart] = []
        for j, part in enumerate(message.parts):
            if isinstance(part, ImagePart):
                text = bridge.describe(part, f"{label} message {i} image {j}")
                texts.append(text)
                parts.append(TextPart(text=image_placeholder(len(texts), text)))
            else:
                parts.append(part)
        messages.append(Message(role=message.role, parts=parts))
    info = BridgeInfo(method="ocr", images=len(texts), texts=texts)
    return BridgedDialogue(Dialogue(messages=messages), info)


async def abridge_dialogue(
    dialogue: Dialogue, bridge: OcrBridge, *, label: str = "dialogue"
) -> BridgedDialogue:
    """`bridge_dialogue` in a worker thread (OCR is CPU-bound)."""
    return await asyncio.to_thread(bridge_dialogue, dialogue, bridge, label=label)


def _to_line(raw: Any) -> OcrLine:
    box, text, score = raw[0], str(raw[1]), float(raw[2])
    xs = [float(p[0]) for p in box]
    ys = [float(p[1]) for p in box]
    top, bottom = min(ys), max(ys)
    return OcrLine(text, score, min(xs), (top + bottom) / 2, bottom - top)


def _rows(lines: list[OcrLine]) -> list[list[OcrLine]]:
    """Group boxes into text lines: a box joins a row when its centre is within half a height."""
    rows: list[list[OcrLine]] = []
    for line in sorted(lines, key=lambda item: item.y):
        if rows:
            row = rows[-1]
            anchor = row[0]
            if abs(line.y - anchor.y) < 0.5 * max(min(anchor.height, line.height), 1.0):
                row.append(line)
                continue
        rows.append([line])
    return [sorted(row, key=lambda item: item.x) for row in rows]


def _reading_order(lines: list[OcrLine]) -> list[OcrLine]:
    return [line for row in _rows(lines) for line in row]
