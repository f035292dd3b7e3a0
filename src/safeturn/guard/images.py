"""What the moderator reads in an image: its text (OCR) and whether it shows explicit nudity.

No offline package ships CLIP-style weights (DESIGN §7), so images reach the text classifier
the way they reach a text-only model: through the OCR bridge. That covers the visual attacks
built here (FigStep typography, image grounding on rendered text), which put the request *in*
the image. Pictures whose harm is not written in them are covered only for nudity, by the
NudeNet detector shipped in the `nudenet` wheel. Results are cached by image hash: OCR on disk
by the bridge, both in memory here, so a resent image costs nothing.

Each image is decoded once, straight to the analysis size (`safeturn.imaging`), and that copy
feeds both OCR and NudeNet. Screening a request (`DialogueModerator.screen`) analyses its new
images in the bounded `ImagePool` under an `ImageBatch` with a deadline; while the batch is
active (`batch`), `analyze` only reads what the batch finished and reports the rest as unread
(`ImageSignals.readable` False) without caching them, so a later request analyses them again.
Without a batch (training, evaluation, `screen_sync`) `analyze` reads the image itself.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from safeturn.errors import ImageError, PrerequisiteError
from safeturn.guard.cache import LruCache, image_digest
from safeturn.guard.image_pool import ImageBatch, ImagePool
from safeturn.models.bridge import OcrBridge, ocr_threads
from safeturn.schema import ImagePart

logger = logging.getLogger(__name__)

EXPOSED_CLASSES = frozenset(
    {
        "FEMALE_BREAST_EXPOSED",
        "FEMALE_GENITALIA_EXPOSED",
        "MALE_GENITALIA_EXPOSED",
        "BUTTOCKS_EXPOSED",
        "ANUS_EXPOSED",
    }
)
"""NudeNet classes that count as explicit; covered parts, faces and feet do not."""

NudityDetector = Callable[[np.ndarray[Any, Any]], float]
"""BGR pixels → the highest confidence of an explicit-nudity detection (0 when none)."""


@dataclass(frozen=True)
class ImageSignals:
    """What one image contributed.

    `readable` is False for remote URLs (never fetched) and for images a screening gave up on
    (deadline passed, request ended, pool full).
    """

    digest: str
    text: str
    nudity: float
    readable: bool = True


_BATCH: ContextVar[ImageBatch[ImageSignals] | None] = ContextVar("image_batch", default=None)
"""The screening in progress in this context (asyncio task, and threads it hands work to)."""


def current_batch() -> ImageBatch[ImageSignals] | None:
    """The image batch of the screening running in this context, if any."""
    return _BATCH.get()


def nudenet_detector(threads: int | None = None) -> NudityDetector:
    """The NudeNet 320n ONNX detector, loaded once (≈0.2 s); ≈0.03 s per image on a CPU.

    Args:
        threads: ONNX Runtime intra-op threads (None: its default, every core).

    Raises:
        PrerequisiteError: The `nudenet` wheel is not installed.
    """
    try:
        import nudenet
        from nudenet import NudeDetector
    except ImportError as exc:
        raise PrerequisiteError(
            "the moderator's nudity signal needs nudenet: pip install --no-deps nudenet==3.4.2"
        ) from exc
    start = time.perf_counter()
    detector = NudeDetector()
    if threads is not None:
        # NudeDetector takes no session options; its session is one attribute, rebuilt here.
        import onnxruntime  # type: ignore[import-untyped]

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        model = Path(nudenet.__file__).with_name("320n.onnx")  # the wheel's default model
        detector.onnx_session = onnxruntime.InferenceSession(
            str(model), sess_options=options, providers=["CPUExecutionProvider"]
        )
    logger.info("loaded NudeNet in %.2f s", time.perf_counter() - start)

    def detect(bgr: np.ndarray[Any, Any]) -> float:
        found = detector.detect(bgr)
        scores = [float(d["score"]) for d in found if d.get("class") in EXPOSED_CLASSES]
        return max(scores, default=0.0)

    return detect


class ImageAnalyzer:
    """OCR text and nudity score per image, cached by content hash.

    Args:
        bridge: The OCR bridge (shared with text-only models, so its disk cache is shared).
        nudity: A detector, or None to load NudeNet on first use; pass `lambda _: 0.0` to
            switch the signal off.
        capacity: Images kept in memory.
        threads: ONNX Runtime threads for NudeNet, and for OCR when `bridge` is not given
            (default: `SAFETURN_OCR_THREADS`, else every core).
        workers: Images analysed at once while screening (OCR calls themselves take turns on
            one engine; decoding and NudeNet overlap them).
        max_pending: Image jobs queued or running at once; beyond it images go unscreened.
    """

    def __init__(
        self,
        bridge: OcrBridge | None = None,
        *,
        nudity: NudityDetector | None = None,
        capacity: int | None = 4096,
        threads: int | None = None,
        workers: int = 2,
        max_pending: int = 64,
    ) -> None:
        self.bridge = bridge or OcrBridge(threads=threads)
        self.threads = ocr_threads(threads) if threads is not None else self.bridge.threads
        self._nudity = nudity
        self._lock = threading.Lock()
        self.cache: LruCache[str, ImageSignals] = LruCache(capacity)
        self.pool = ImagePool(workers, max_pending)
        self.analyzed = 0
        """Images actually analysed (cache misses)."""

    def analyze(self, image: ImagePart, label: str) -> ImageSignals:
        """The signals of one image (cached); inside `batch`, only what the batch finished.

        Args:
            image: The image; remote http(s) URLs are not fetched and come back unreadable.
            label: Names the image in errors, e.g. "dialogue message 2 image 0".

        Raises:
            ImageError: The image is missing, corrupt or too large (the message names `label`).
        """
        digest = image_digest(image, label)
        hit = self.cache.get(digest)
        if hit is not None:
            return hit
        if image.is_remote:
            signals = ImageSignals(digest, "", 0.0, readable=False)
            with self._lock:
                self.analyzed += 1
            self.cache.put(digest, signals)
            return signals
        batch = _BATCH.get()
        if batch is None:
            read = self._analyze(image, label, digest, None)
            assert read is not None  # only a cancelled batch stops an analysis
            return read
        found = batch.result(digest)
        if found is None:  # not finished in time: unread now, and not cached
            batch.unscreened.add(digest)
            return ImageSignals(digest, "", 0.0, readable=False)
        return found

    @contextlib.contextmanager
    def batch(self, deadline_s: float | None) -> Iterator[ImageBatch[ImageSignals]]:
        """Make a new batch the current one for this context; cancel what is left on exit."""
        batch: ImageBatch[ImageSignals] = ImageBatch(deadline_s)
        token = _BATCH.set(batch)
        try:
            yield batch
        finally:
            _BATCH.reset(token)
            batch.cancel("cancelled")

    def submit(
        self, batch: ImageBatch[ImageSignals], images: Iterable[tuple[ImagePart, str]]
    ) -> None:
        """Queue the analysis of each uncached image in the pool (hashes them: run in a thread).

        Raises:
            ImageError: An image's bytes cannot be read (a bad data URL, a missing file).
        """
        for image, label in images:
            if batch.cancelled:
                return
            digest = image_digest(image, label)
            if digest in batch.jobs or digest in batch.found or digest in batch.refused:
                continue
            hit = self.cache.get(digest)
            if hit is not None:
                batch.found[digest] = hit
            elif not image.is_remote:
                job = self.pool.submit(
                    functools.partial(self._analyze, image, label, digest, batch)
                )
                if job is None:
                    batch.refused.add(digest)
                else:
                    batch.jobs[digest] = job

    def warm_up(self) -> None:
        """Load the OCR engine and the nudity detector now, not on a request's deadline."""
        self.bridge.warm_up()
        self._detector()

    def close(self) -> None:
        """Stop the worker pool (it starts again on next use)."""
        self.pool.close()

    def _analyze(
        self,
        image: ImagePart,
        label: str,
        digest: str,
        batch: ImageBatch[ImageSignals] | None,
    ) -> ImageSignals | None:
        """Decode once, read text, detect nudity; None when `batch` gave up in between."""

        def cancelled() -> bool:
            return batch is not None and batch.cancelled

        if cancelled():
            return None
        pixels = self.bridge.load(image, label)  # RGB at the analysis size
        lines = self.bridge.cached(digest)
        if lines is None:
            lines = self.bridge.read(digest, pixels, label, cancelled=cancelled)
            if lines is None:
                return None
        if cancelled():
            return None
        try:
            nudity = float(self._detector()(np.ascontiguousarray(pixels[:, :, ::-1])))  # BGR
        except PrerequisiteError:
            raise
        except Exception as exc:  # the detector is third-party code; name the image
            raise ImageError(f"{label}: nudity detector failed ({exc})") from exc
        signals = ImageSignals(digest, self.bridge.text(lines), nudity)
        with self._lock:
            self.analyzed += 1
        self.cache.put(digest, signals)
        return signals

    def _detector(self) -> NudityDetector:
        with self._lock:
            if self._nudity is None:
                self._nudity = nudenet_detector(self.threads)
            return self._nudity


def no_nudity(_pixels: np.ndarray[Any, Any]) -> float:
    """A detector that never fires (training: every training image is typographic)."""
    return 0.0
