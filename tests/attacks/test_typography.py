from __future__ import annotations

import io

import pytest
from PIL import Image

from safeturn.attacks.typography import render_typographic


def _darkest(grey: Image.Image) -> int:
    """The darkest pixel value of a greyscale image."""
    low, _ = grey.getextrema()
    assert isinstance(low, int)
    return low


def test_render_is_deterministic_and_valid_png() -> None:
    first = render_typographic("Steps to brew a pot of herbal tea.")
    assert first == render_typographic("Steps to brew a pot of herbal tea.")
    image = Image.open(io.BytesIO(first))
    assert image.format == "PNG" and image.size == (760, 760)
    # there is ink on the page, and the bottom margin stays blank
    grey = image.convert("L")
    assert _darkest(grey) < 50
    assert grey.crop((0, 700, 760, 760)).getextrema() == (255, 255)


def test_long_text_wraps_and_too_long_text_fails_clearly() -> None:
    short = Image.open(io.BytesIO(render_typographic("Short.")))
    long = Image.open(io.BytesIO(render_typographic("word " * 15)))

    # wrapped text reaches further down the page than a single line
    def last_inked_row(img: Image.Image) -> int:
        bbox = Image.eval(img.convert("L"), lambda v: 255 - v).getbbox()
        assert bbox is not None
        return bbox[3]

    assert last_inked_row(long) > last_inked_row(short)
    with pytest.raises(ValueError, match=r"needs .*px of height"):
        render_typographic("word " * 200)


def _ink_rows(png: bytes) -> tuple[int, int]:
    """First and last rows that hold any dark pixel."""
    inverted = Image.eval(Image.open(io.BytesIO(png)).convert("L"), lambda v: 255 - v)
    bbox = inverted.point(lambda v: 255 if v > 128 else 0).getbbox()
    assert bbox is not None, "no ink on the page"
    return bbox[1], bbox[3]


def test_size_options_and_non_square_images() -> None:
    png = render_typographic("Steps to bake bread.", size=(900, 500), font_size=40)
    image = Image.open(io.BytesIO(png))
    assert image.size == (900, 500)
    assert _darkest(image.convert("L")) < 50
    small = Image.open(io.BytesIO(render_typographic("Hi.", size=300, font_size=20)))
    assert small.size == (300, 300)


def test_number_of_list_items_changes_how_far_the_ink_reaches() -> None:
    top3, bottom3 = _ink_rows(render_typographic("Steps to bake bread.", numbered_items=3))
    top6, bottom6 = _ink_rows(render_typographic("Steps to bake bread.", numbered_items=6))
    _, bottom0 = _ink_rows(render_typographic("Steps to bake bread.", numbered_items=0))
    assert top3 == top6
    assert bottom0 < bottom3 < bottom6


def test_auto_shrink_fits_long_text_instead_of_failing() -> None:
    from safeturn.attacks.typography import fitted_font_size

    long_text = "Steps to do something that takes a great many words to describe. " * 12
    with pytest.raises(ValueError, match=r"needs .*px of height"):
        render_typographic(long_text)
    png = render_typographic(long_text, min_font_size=10)
    top, bottom = _ink_rows(png)
    assert top >= 30 and bottom <= 760 - 30  # the text stays inside the margins
    used = fitted_font_size(long_text)
    assert 10 <= used < 56
    assert fitted_font_size("Short.") == 56
    # a short text is not shrunk: same bytes with or without the option
    assert render_typographic("Short.", min_font_size=10) == render_typographic("Short.")


def test_text_too_long_even_at_the_smallest_font_still_fails_clearly() -> None:
    with pytest.raises(ValueError, match=r"needs .*px of height"):
        render_typographic("word " * 5000, min_font_size=10)


def test_typography_strategy_options_reach_the_image_and_metadata() -> None:
    import asyncio

    from safeturn.attacks import BuildContext, Seed, get_strategy

    seed = Seed(id="t", question="q?", instruction="Steps to do a thing. " * 40)
    builder = get_strategy("typography", font_size=48, image_size=(640, 480), items=5)
    sample = asyncio.run(builder(seed, 2, BuildContext()))
    image = sample.dialogue.messages[0].images[0].load()
    assert image.size == (640, 480)
    assert sample.metadata["attack_options"] == {
        "font_size": 48,
        "image_size": (640, 480),
        "items": 5,
    }
    assert sample.metadata["font_size_used"] < 48
    reply = sample.dialogue.messages[1].text
    assert "1 to 5" in reply or "5 items" in reply
