"""Bounded image decoding: sizes from headers, big images decoded straight to a small size.

A 38 KiB PNG can declare 6300×6300 pixels; decoding it to RGB costs 119 MB, and OCR on it
seconds. What must look at pixels on the request path (the proxy's checks, OCR, NudeNet) goes
through here, so an image costs what its *analysis size* costs, not what a client declares:
JPEGs are decoded at 1/2–1/8 scale by libjpeg (`Image.draft`), other formats are decoded once in
their own mode and shrunk by `Image.reduce` before any RGB copy is made. Every decoding problem
becomes an `ImageError` naming the image (`ImageTooLargeError` for size), never a bare Pillow
exception, so a server answers 413/422 and not 500.

Deliberately free of `safeturn.schema` imports: `ImagePart.load` uses it.
"""

from __future__ import annotations

import io
import math
from typing import NamedTuple

from PIL import Image

from safeturn.errors import ImageError, ImageTooLargeError

ANALYSIS_MAX_PIXELS = 512 * 512
"""Pixels an image is shrunk to before OCR and NudeNet. Measured on the 50 FigStep
SafeBench-Tiny images (760×760, `benchmarks/guard_images.py`): at this size OCR reads every
instruction word and costs about half of full size with one thread; NudeNet looks at 320×320
anyway. Text smaller than about 2 % of the image side is lost: raise it where that matters."""
ANALYSIS_MAX_SIDE = 1280
"""Longest side before analysis: keeps very elongated images from costing more than square ones."""


class ImageHeader(NamedTuple):
    """What an image's header declares; no pixel has been decoded."""

    width: int
    height: int
    format: str

    @property
    def pixels(self) -> int:
        """Declared width × height."""
        return self.width * self.height


def read_header(
    raw: bytes, *, label: str, max_pixels: int | None = None, formats: frozenset[str] | None = None
) -> ImageHeader:
    """Size and format of an encoded image, read from its header alone.

    Args:
        raw: The encoded bytes.
        label: Names the image in errors.
        max_pixels: Refuse images declaring more pixels (None: only Pillow's bomb limit).
        formats: Accepted Pillow format names (None: any Pillow can open).

    Raises:
        ImageTooLargeError: Over `max_pixels`, or over Pillow's decompression-bomb limit.
        ImageError: Not an image, a corrupt header, or a format outside `formats`.
    """
    try:
        with Image.open(io.BytesIO(raw)) as probe:
            width, height = probe.size
            header = ImageHeader(width, height, probe.format or "unknown")
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{label}: image is too large to decode safely ({exc})") from None
    except Exception as exc:  # Pillow's plugins raise many types on malformed headers
        raise ImageError(f"{label}: corrupt or unreadable image ({_reason(exc)})") from None
    if formats is not None and header.format not in formats:
        raise ImageError(f"{label}: image format {header.format} is not accepted")
    if max_pixels is not None and header.pixels > max_pixels:
        raise ImageTooLargeError(f"{label}: image is {width}x{height} pixels (> {max_pixels})")
    return header


def fitted_size(
    width: int, height: int, *, max_pixels: int | None, max_side: int | None
) -> tuple[int, int]:
    """The size an image is shrunk to (never enlarged) to fit both bounds, aspect kept."""
    scale = 1.0
    if max_pixels is not None and width * height > max_pixels:
        scale = math.sqrt(max_pixels / (width * height))
    if max_side is not None and max(width, height) * scale > max_side:
        scale = max_side / max(width, height)
    if scale >= 1.0:
        return width, height
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def decode_fitted(
    raw: bytes,
    *,
    label: str,
    max_pixels: int | None = ANALYSIS_MAX_PIXELS,
    max_side: int | None = ANALYSIS_MAX_SIDE,
    limit_pixels: int | None = None,
    formats: frozenset[str] | None = None,
) -> Image.Image:
    """Decode `raw` to RGB at most `max_pixels` / `max_side`, without a full-size RGB copy.

    Args:
        raw: The encoded bytes.
        label: Names the image in errors.
        max_pixels: Pixel bound of the result (None: no bound).
        max_side: Longest-side bound of the result (None: no bound).
        limit_pixels: Refuse images *declaring* more pixels than this (the per-image limit).
        formats: Accepted Pillow format names.

    Raises:
        ImageTooLargeError: The header declares too many pixels.
        ImageError: The image cannot be decoded.
    """
    header = read_header(raw, label=label, max_pixels=limit_pixels, formats=formats)
    target = fitted_size(header.width, header.height, max_pixels=max_pixels, max_side=max_side)
    try:
        with Image.open(io.BytesIO(raw)) as img:
            if target != img.size:
                img.draft(None, target)  # JPEG: libjpeg decodes at 1/2, 1/4 or 1/8 scale
            img.load()
            pixels: Image.Image = img
            if pixels.mode == "1":
                pixels = pixels.convert("L")  # same memory; resampling needs gray levels
            elif pixels.mode not in ("L", "LA", "RGB", "RGBA"):
                pixels = pixels.convert("RGB")
            if pixels.size != target:
                # reduce() by an integer factor first, then a cheap filter for the remainder.
                pixels = pixels.resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0)
            return pixels.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{label}: image is too large to decode safely ({exc})") from None
    except MemoryError:
        raise ImageTooLargeError(f"{label}: image is too large to decode") from None
    except Exception as exc:  # truncated data, bad chunks, plugin bugs: all the client's image
        raise ImageError(f"{label}: corrupt or unreadable image ({_reason(exc)})") from None


def check_intact(
    raw: bytes, *, label: str, limit_pixels: int | None, formats: frozenset[str] | None
) -> ImageHeader:
    """Prove an image decodes, at the cost of its analysis size, before it is passed on.

    What `ImagePart.load` checks (header limits, chunk checksums, every pixel decodable) but
    without its full-size RGB copy: the pixels are decoded straight to the analysis size. For
    images that are forwarded as bytes (to an `openai:` server), so a corrupt, truncated or
    oversized one fails here, naming itself, and not somewhere remote or not at all.

    Args:
        raw: The encoded bytes.
        label: Names the image in errors.
        limit_pixels: Refuse images declaring more pixels than this.
        formats: Accepted Pillow format names.

    Returns:
        The header the image declares.

    Raises:
        ImageTooLargeError: The header declares too many pixels.
        ImageError: The image is corrupt, truncated or of a refused format.
    """
    header = read_header(raw, label=label, max_pixels=limit_pixels, formats=formats)
    try:
        with Image.open(io.BytesIO(raw)) as probe:
            probe.verify()  # PNG chunk CRCs and structure, without decompressing
    except Exception as exc:
        raise ImageError(f"{label}: corrupt or unreadable image ({_reason(exc)})") from None
    decode_fitted(raw, label=label, limit_pixels=limit_pixels, formats=formats)
    return header


def _reason(exc: Exception) -> str:
    """A short reason: Pillow's messages name the problem, never the image's content."""
    text = " ".join(str(exc).split())[:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
