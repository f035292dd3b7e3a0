"""What the moderator reads in an image: its text (OCR) and whether it shows explicit nudity.

No offline package ships CLIP-style weights (DESIGN §7), so images reach the text classifier
the way they reach a text-only model: through the OCR bridge. That covers the visual attacks
built here (FigStep typography, image grounding on rendered text), which put the request *in*
the image. Pictures whose harm is not written in them are covered only for nudity, by the
NudeNet detector shipped in the `nudenet` wheel. Results are cached by image hash: OCR on disk
by the bridge, both in memory here, so a resent image costs nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from safeturn.errors import ImageError, PrerequisiteError
from safeturn.guard.cache import LruCache, image_digest
from safeturn.models.bridge import OcrBridge
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
    """What one image contributed; `readable` is False for remote URLs, never fetched."""

    digest: str
    text: str
    nudity: float
    readable: bool = True


def nudenet_detector() -> NudityDetector:
    """The NudeNet 320n ONNX detector, loaded once (≈0.2 s); ≈0.03 s per image on a CPU.

    Raises:
        PrerequisiteError: The `nudenet` wheel is not installed.
    """
    try:
        from nudenet import NudeDetector
    except ImportError as exc:
        raise PrerequisiteError(
            "the moderator's nudity signal needs nudenet: pip install --no-deps nudenet==3.4.2"
        ) from exc
    start = time.perf_counter()
    detector = NudeDetector()
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
    """

    def __init__(
        self,
        bridge: OcrBridge | None = None,
        *,
        nudity: NudityDetector | None = None,
        capacity: int | None = 4096,
    ) -> None:
        self.bridge = bridge or OcrBridge()
        self._nudity = nudity
        self._lock = threading.Lock()
        self.cache: LruCache[str, ImageSignals] = LruCache(capacity)
        self.analyzed = 0
        """Images actually analysed (cache misses)."""

    def analyze(self, image: ImagePart, label: str) -> ImageSignals:
        """The signals of one image (cached).

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
        else:
            text = self.bridge.describe(image, label)
            pixels = np.asarray(image.load(label=label))[:, :, ::-1].copy()  # RGB → BGR
            try:
                nudity = float(self._detector()(pixels))
            except PrerequisiteError:
                raise
            except Exception as exc:  # the detector is third-party code; name the image
                raise ImageError(f"{label}: nudity detector failed ({exc})") from exc
            signals = ImageSignals(digest, text, nudity)
        self.analyzed += 1
        self.cache.put(digest, signals)
        return signals

    def _detector(self) -> NudityDetector:
        with self._lock:
            if self._nudity is None:
                self._nudity = nudenet_detector()
            return self._nudity


def no_nudity(_pixels: np.ndarray[Any, Any]) -> float:
    """A detector that never fires (training: every training image is typographic)."""
    return 0.0
