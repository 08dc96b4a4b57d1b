"""Every render_unifont parameter varied on its own (and a few combinations): the renderer
must agree pixel for pixel with the numpy port of the reference op."""
import numpy as np
import pytest
import torch

import clippo
from render_corpus import CORPUS, check_against_ref, random_strings

# The corpus strings that exercise the layout most, plus seeded random multilingual ones.
KEYS = ["ascii_pangram", "latin_accents", "greek", "cjk", "arabic", "devanagari", "thai",
        "emoji_astral", "controls", "empty", "one_letter", "whitespace_only", "narrow_only",
        "wide_only", "mixed_wide_narrow", "long_mixed", "long_ascii_2000", "specials"]


def texts_default():
    return [CORPUS[k] for k in KEYS] + random_strings(24, seed=2024, max_len=600)


def texts_short():
    """For font_size != 16, where the oracle's per-glyph area resize is slow."""
    return ([CORPUS[k][:14] for k in ("ascii_pangram", "latin_accents", "cjk", "emoji_astral",
                                      "controls", "mixed_wide_narrow")]
            + ["", "W", "l" * 40] + random_strings(3, seed=5, max_len=12))


SINGLE = [
    ("image_size", [17, 32, 64, 100, 223, 384]),
    ("max_chars", [0, None, 1, 10, 768, 2000]),
    ("lower", [False]),
    ("monospace", [True]),
    ("spacing", [0, 3, 9]),
    ("min_width", [0, 1, 8, 20]),
]
CASES = [{name: v} for name, values in SINGLE for v in values]
BRIGHTNESS = [dict(background_brightness=b, text_brightness=t)
              for b, t in [(255, 0), (0, 255), (50, 200), (100, 100), (0, 0), (255, 255),
                           (200, 30)]]
COMBOS = [
    dict(image_size=64, monospace=True, spacing=0),
    dict(spacing=0, min_width=0),                        # empty cells are 0 px wide
    dict(image_size=384, max_chars=None, spacing=3, min_width=8, lower=False),
    dict(image_size=100, monospace=True, max_chars=50, background_brightness=0,
         text_brightness=255),
    dict(image_size=33, spacing=9, min_width=20),
]


def ids(params):
    return ",".join(f"{k}={v}" for k, v in params.items())


@pytest.mark.parametrize("params", CASES + BRIGHTNESS + COMBOS, ids=ids)
def test_matches_reference(params):
    check_against_ref(clippo.TextRenderer(**params), texts_default(), **params)


FONT_SIZES = [dict(font_size=s) for s in (8, 12, 20, 32)] + [
    dict(font_size=12, image_size=100, monospace=True),
    dict(font_size=20, spacing=0, min_width=0, background_brightness=10, text_brightness=250),
]


@pytest.mark.parametrize("params", FONT_SIZES, ids=ids)
def test_font_size_matches_reference(params):
    # Unifont cells are area-resized (TensorFlow's ResizeArea) to font_size x font_size, so
    # coverage is fractional: pixels blend text and background, truncated to uint8.
    r = clippo.TextRenderer(**params)
    assert r.cell_height == params["font_size"]
    check_against_ref(r, texts_short(), **params)


def test_font_size_rows_are_font_size_tall():
    r = clippo.TextRenderer(font_size=8, image_size=64)
    img = r(["l" * 200])[0, 0]
    inked_rows = (img != 127).any(dim=1).nonzero().flatten()
    assert int(inked_rows.max()) >= 56          # 8 rows of 8 px: ink reaches the last row
    assert set(img.unique().tolist()) - {127}   # blended values, not just 0/127


def test_brightness_equal_is_a_flat_image():
    img = clippo.TextRenderer(background_brightness=90, text_brightness=90)(["ink? 中"])
    assert (img == 90).all()


def test_text_brighter_than_background_is_the_negative_mask():
    texts = ["negative 中文"]
    normal = clippo.TextRenderer()(texts)[0, 0]
    neg = clippo.TextRenderer(background_brightness=0, text_brightness=255)(texts)[0, 0]
    assert torch.equal(neg == 255, normal == 0) and torch.equal(neg == 0, normal == 127)


def test_monospace_cells_are_16_px():
    r = clippo.TextRenderer(monospace=True)
    img = r(["ll"])[0, 0].numpy()
    one = r(["l"])[0, 0].numpy()
    assert np.array_equal(img[:, 16:32], one[:, 0:16])      # second cell starts at x = 16
    # div = 224 - 16 = 208: 13 full cells fit on a row (13 * 16 = 208 -> row 1)
    row = r(["l" * 13])[0, 0].numpy()
    assert (row[16:32] != 127).any() and (row[:16, 192:] == 127).all()


@pytest.mark.parametrize("max_chars", [None, 0])
def test_no_max_chars_renders_everything_visible(max_chars):
    r = clippo.TextRenderer(max_chars=max_chars)
    dots = "." * 1000   # 769 dots fit in 14 rows at 4 px each
    a, b = r([dots[:769], dots[:768]])
    assert not torch.equal(a, b)
