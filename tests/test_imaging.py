"""Bounded decoding: sizes from headers, straight-to-small decoding, errors naming the image."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import pytest
from PIL import Image, JpegImagePlugin

from safeturn.errors import ImageError, ImageTooLargeError
from safeturn.imaging import (
    ANALYSIS_MAX_PIXELS,
    decode_fitted,
    fitted_size,
    read_header,
)
from safeturn.models.bridge import THREADS_ENV, ocr_threads
from safeturn.schema import ImagePart


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _bomb(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_fitted_size_only_shrinks_and_keeps_the_aspect() -> None:
    assert fitted_size(760, 760, max_pixels=512 * 512, max_side=1280) == (512, 512)
    assert fitted_size(300, 200, max_pixels=512 * 512, max_side=1280) == (300, 200)
    wide = fitted_size(20000, 100, max_pixels=512 * 512, max_side=1280)
    assert wide == (1280, 6)  # a thin strip is bounded by its side, not its area
    assert fitted_size(6300, 6300, max_pixels=None, max_side=None) == (6300, 6300)


def test_a_big_jpeg_is_decoded_at_a_fraction(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[Any] = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self: Any, mode: Any, size: Any) -> Any:
        asked.append(size)
        return draft(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    raw = _encoded(Image.new("RGB", (4000, 3000), "white"), "JPEG")
    fitted = decode_fitted(raw, label="photo")
    assert asked == [(591, 443)]  # libjpeg was asked for the target size, not the full one
    assert fitted.mode == "RGB" and fitted.size == (591, 443)
    assert fitted.width * fitted.height <= ANALYSIS_MAX_PIXELS


@pytest.mark.parametrize("mode", ["1", "P", "L", "RGBA", "I;16"])
def test_every_mode_comes_back_small_and_rgb(mode: str) -> None:
    raw = _encoded(Image.new(mode, (1600, 1200)), "PNG")
    fitted = decode_fitted(raw, label="x")
    assert fitted.mode == "RGB" and fitted.size == (591, 443)


def test_header_problems_are_image_errors_naming_the_image() -> None:
    with pytest.raises(ImageTooLargeError, match="upload 3: image is too large to decode"):
        read_header(_bomb(20000, 20000), label="upload 3")
    with pytest.raises(ImageTooLargeError, match="upload 3: image is 7000x7000 pixels"):
        read_header(_bomb(7000, 7000), label="upload 3", max_pixels=40_000_000)
    with pytest.raises(ImageError, match="upload 3: corrupt or unreadable image"):
        read_header(b"not an image", label="upload 3")
    tiff = _encoded(Image.new("RGB", (8, 8)), "TIFF")
    with pytest.raises(ImageError, match="format TIFF is not accepted"):
        read_header(tiff, label="upload 3", formats=frozenset({"PNG"}))
    with pytest.raises(ImageError, match="upload 3: corrupt or unreadable image"):
        decode_fitted(_bomb(64, 64), label="upload 3")  # a header and no pixels


def test_image_part_load_reports_a_bomb_as_too_large() -> None:
    with pytest.raises(ImageTooLargeError, match="too large to decode safely"):
        ImagePart(data=_bomb(20000, 20000)).load()


def test_ocr_threads_from_the_argument_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert ocr_threads() is None
    assert ocr_threads(3) == 3
    monkeypatch.setenv(THREADS_ENV, "2")
    assert ocr_threads() == 2
    assert ocr_threads(1) == 1  # an explicit value wins
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(ValueError, match=THREADS_ENV):
        ocr_threads()
