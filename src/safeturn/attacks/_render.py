"""Typographic rendering: text plus an optional empty numbered list, as a greyscale PNG.

Rendered with Pillow's bundled FreeType font, so no font file or download is needed and the
same text always gives the same bytes (images are content-hashed by every cache).
"""

from __future__ import annotations

import io
import textwrap
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
LINE_SPACING = 1.35
"""Line height as a multiple of the font size."""


def render_typographic(
    text: str,
    *,
    size: int | tuple[int, int] = 760,
    font_size: int = 56,
    numbered_items: int = 3,
    margin: int = 36,
    min_font_size: int | None = None,
) -> bytes:
    """Render `text` and `numbered_items` empty list items as a PNG; return its bytes.

    Args:
        text: The text to render; wrapped by measured pixel width, newlines kept.
        size: Image side in pixels (square), or `(width, height)`.
        font_size: Preferred font size in pixels.
        numbered_items: How many empty items (`1.`, `2.`, ...) follow the text; 0 for none.
        margin: Blank border in pixels on every side.
        min_font_size: When given, a text too long for `font_size` is rendered with the
            largest font size down to this one that fits; when None, it raises instead.

    Returns:
        The encoded PNG (8-bit greyscale, black text on white).

    Raises:
        ValueError: If the text does not fit, even at `min_font_size` where one is given.
    """
    width, height = (size, size) if isinstance(size, int) else size
    return _render_cached(text, width, height, font_size, numbered_items, margin, min_font_size)


@lru_cache(maxsize=512)
def _render_cached(
    text: str,
    width: int,
    height: int,
    font_size: int,
    numbered_items: int,
    margin: int,
    min_font_size: int | None,
) -> bytes:
    usable_w, usable_h = width - 2 * margin, height - 2 * margin
    if usable_w <= 0 or usable_h <= 0:
        raise ValueError(f"margin {margin}px leaves no room in a {width}x{height} image")
    chosen = font_size
    if not _fits(text, chosen, numbered_items, usable_w, usable_h) and min_font_size is not None:
        chosen = _largest_fitting(text, numbered_items, usable_w, usable_h, min_font_size, chosen)
    capacity = _capacity(chosen, usable_h)
    lines = _layout(text, chosen, numbered_items, usable_w, max_lines=capacity)
    if len(lines) > capacity:
        raise ValueError(
            f"text needs more than {_needed(lines, chosen)}px of height but the image has "
            f"{usable_h}px; use a larger size or a smaller font"
        )
    image = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=chosen)
    y = margin
    for line in lines:
        draw.text((margin, y), line, fill=0, font=font)
        y += int(chosen * LINE_SPACING)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@lru_cache(maxsize=1024)
def fitted_font_size(
    text: str,
    *,
    size: int | tuple[int, int] = 760,
    font_size: int = 56,
    numbered_items: int = 3,
    margin: int = 36,
    min_font_size: int = 8,
) -> int:
    """The font size `render_typographic` would use with auto-shrink (for metadata and tests)."""
    width, height = (size, size) if isinstance(size, int) else size
    usable_w, usable_h = width - 2 * margin, height - 2 * margin
    if _fits(text, font_size, numbered_items, usable_w, usable_h):
        return font_size
    return _largest_fitting(text, numbered_items, usable_w, usable_h, min_font_size, font_size)


def _layout(
    text: str, font_size: int, numbered_items: int, width_px: int, *, max_lines: int | None = None
) -> list[str]:
    """The wrapped lines plus the list items; stops early once past `max_lines`."""
    font = ImageFont.load_default(size=font_size)
    lines = _wrap(text, font, width_px, max_lines=max_lines)
    return lines + [f"{i}." for i in range(1, numbered_items + 1)]


def _capacity(font_size: int, height_px: int) -> int:
    return height_px // int(font_size * LINE_SPACING)


def _needed(lines: list[str], font_size: int) -> int:
    return int(font_size * LINE_SPACING) * len(lines)


def _fits(text: str, font_size: int, numbered_items: int, width_px: int, height_px: int) -> bool:
    capacity = _capacity(font_size, height_px)
    return len(_layout(text, font_size, numbered_items, width_px, max_lines=capacity)) <= capacity


def _largest_fitting(
    text: str, numbered_items: int, width_px: int, height_px: int, low: int, high: int
) -> int:
    """Binary search for the largest font size in [low, high] whose layout fits (else low)."""
    best = low
    while low <= high:
        mid = (low + high) // 2
        if _fits(text, mid, numbered_items, width_px, height_px):
            best, low = mid, mid + 1
        else:
            high = mid - 1
    return best


def _wrap(text: str, font: _Font, width_px: int, *, max_lines: int | None = None) -> list[str]:
    """Greedy word wrap by measured pixel width (character counts misjudge proportional fonts).

    With `max_lines`, wrapping stops as soon as more lines than that are produced.
    """
    limit = max_lines if max_lines is not None else len(text) + 1
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        current = ""
        for word in paragraph.split():
            candidate = f"{current} {word}".strip()
            if font.getlength(candidate) <= width_px or not current:
                current = candidate
            else:
                lines.extend(_hard_split(current, font, width_px))
                current = word
                if len(lines) > limit:
                    return lines
        lines.extend(_hard_split(current, font, width_px))
        if len(lines) > limit:
            return lines
    return lines


def _hard_split(line: str, font: _Font, width_px: int) -> list[str]:
    if font.getlength(line) <= width_px:
        return [line]
    approx = max(1, int(len(line) * width_px / font.getlength(line)))
    return textwrap.wrap(line, approx, break_long_words=True) or [line]


CAPTION_HEIGHTS = (200, 400, 760)
"""Heights tried, in order, for the text strip under a picture (the first that fits wins)."""


def render_captioned(
    picture: Image.Image,
    text: str,
    *,
    width: int = 760,
    font_size: int = 40,
    readable_font_size: int = 24,
    min_font_size: int = 10,
) -> bytes:
    """The picture with `text` rendered in a white strip under it, as one RGB PNG.

    The layout of MM-SafetyBench's SD+TYPO images: the picture is scaled down (never up) to fit
    a `width` × `width` box and centred; the strip is as wide and the first height of
    `CAPTION_HEIGHTS` where the text fits at `readable_font_size` or more (the tallest
    shrinks down to `min_font_size`).

    Raises:
        ValueError: If the text does not fit even the tallest strip at `min_font_size`.
    """
    scale = min(1.0, width / picture.width, width / picture.height)
    shown = picture.convert("RGB")
    if scale < 1.0:
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        shown = shown.resize(size, Image.Resampling.LANCZOS)
    strip: bytes | None = None
    for i, height in enumerate(CAPTION_HEIGHTS):
        last = i == len(CAPTION_HEIGHTS) - 1
        try:  # a taller strip before a font too small to read; the tallest one shrinks fully
            strip = render_typographic(
                text,
                size=(width, height),
                font_size=font_size,
                numbered_items=0,
                min_font_size=min_font_size if last else max(min_font_size, readable_font_size),
            )
            break
        except ValueError:
            if last:
                raise
    assert strip is not None
    with Image.open(io.BytesIO(strip)) as caption:
        canvas = Image.new("RGB", (width, shown.height + caption.height), (255, 255, 255))
        canvas.paste(shown, ((width - shown.width) // 2, 0))
        canvas.paste(caption.convert("RGB"), (0, shown.height))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
