"""TextRenderer with the defaults: pixel-exact against the numpy port of the reference on a
multilingual corpus, the documented layout facts by hand-computed cases, the output's
shape/dtype/strides/colours, and the shipped default font."""
import gzip

import numpy as np
import pytest
import torch

import clippo
from clippo.text import atlas as atlas_lib
from clippo.text.render import encode_texts
from render_corpus import CORPUS, LONG, as_hwc, check_against_ref, random_strings, ref_image

S = 224
BG = 127


@pytest.fixture(scope="module")
def r():
    return clippo.TextRenderer()


# -- pixel-exact against the reference port -------------------------------------------------

@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_matches_reference(r, name):
    check_against_ref(r, [CORPUS[name]])


def test_whole_corpus_as_one_batch(r):
    texts = list(CORPUS.values()) + [LONG]
    check_against_ref(r, texts)


def test_random_multilingual_strings_match_reference(r):
    texts = random_strings(300, seed=1234, max_len=400)
    assert sum(len(t) > 100 for t in texts) > 50   # the draw really has long strings
    check_against_ref(r, texts)


def test_random_long_strings_past_max_chars(r):
    texts = random_strings(12, seed=99, max_len=2500)
    texts = [t for t in texts if len(t) > 768] + ["x" * 769, "中" * 800]
    assert len(texts) >= 3
    check_against_ref(r, texts)


def test_more_than_768_chars_is_truncated(r):
    # '.' is 4 px (min_width): div = 220 and 14 rows hold 769 dots (cum 3076 < 14 * 220),
    # so the 768th dot is visible and only max_chars hides the 769th.
    got = r(["." * 800, "." * 768, "." * 767])
    assert torch.equal(got[0], got[1])            # characters past 768 are never drawn
    assert not torch.equal(got[1], got[2])        # ...but the 768th is
    unlimited = clippo.TextRenderer(max_chars=None)(["." * 800, "." * 768])
    assert not torch.equal(unlimited[0], unlimited[1])
    assert len(LONG) > 768
    check_against_ref(r, [LONG, "." * 800])


def test_batch_rendering_equals_one_at_a_time(r):
    texts = random_strings(40, seed=7, max_len=200)
    batch = r(texts)
    for i, t in enumerate(texts):
        assert torch.equal(batch[i], r([t])[0]), i


# -- hand-computed layout facts -------------------------------------------------------------
# Unifont 15.0.01 glyphs, copied from the .hex file (checked against the shipped file below).
HEX = {
    0x6C: "000000180808080808080808083E0000",   # l: ink in columns 2..6 -> keep [1, 7): 6 px
    0x2E: "00000000000000000000000018180000",   # .: ink in columns 3..4 -> keep [2, 6): min_width
    0x57: "00000000424242425A5A666642420000",   # W: ink in columns 1..6 -> keep [0, 7): 7 px
    0x4E2D: "01000100010001003FF8210821082108210821083FF821080100010001000100",  # 中: [1, 13)
}


def glyph(cp):
    """16x16 0/1 cell of a Unifont glyph, decoded by hand from its hex digits."""
    digits = HEX[cp]
    per_row = len(digits) // 16
    cell = np.zeros((16, 16), np.uint8)
    for y in range(16):
        bits = int(digits[y * per_row:(y + 1) * per_row], 16)
        nbits = per_row * 4
        for x in range(nbits):
            cell[y, x] = bits >> (nbits - 1 - x) & 1
    return cell


def shade(cell, text=0, bg=BG):
    return np.where(cell > 0, text, bg).astype(np.uint8)


def test_hand_glyphs_are_the_shipped_ones():
    with gzip.open(atlas_lib.DEFAULT_FONT, "rt") as f:
        lines = dict(line.strip().split(":") for line in f)
    for cp, digits in HEX.items():
        assert lines[f"{cp:04X}"] == digits


@pytest.mark.parametrize("cp,first,width", [(0x6C, 1, 6), (0x2E, 2, 4), (0x57, 0, 7),
                                            (0x4E2D, 1, 12), (0x20, 0, 4)])
def test_trimmed_width_of_one_letter(cp, first, width):
    # two copies side by side: the second starts exactly `width` columns after the first
    r = clippo.TextRenderer(lower=False)   # keep 'W' upper case
    img = r([chr(cp) * 2])[0, 0].numpy()
    cell = shade(glyph(cp)) if cp in HEX else np.full((16, 16), BG, np.uint8)
    want = np.full((S, S), BG, np.uint8)
    want[:16, :width] = cell[:, first:first + width]
    want[:16, width:2 * width] = cell[:, first:first + width]
    assert np.array_equal(img, want)
    assert int(r._cols[r.atlas.cmap[cp]]) == first | width << 16


def test_wrap_position_of_narrow_letters(r):
    # 'l' is 6 px; div = 224 - 6 = 218; row of letter i = floor(6 (i + 1) / 218):
    # letters 0..35 on row 0 (cum 216 < 218), letter 36 starts row 1 (cum 222).
    img = r(["l" * 40])[0, 0].numpy()
    cell = shade(glyph(0x6C))[:, 1:7]
    want = np.full((S, S), BG, np.uint8)
    for i in range(36):
        want[:16, 6 * i:6 * i + 6] = cell
    for i in range(4):
        want[16:32, 6 * i:6 * i + 6] = cell
    assert np.array_equal(img, want)


def test_wrap_depends_on_the_widest_letter_of_the_string(r):
    # with 中 (12 px) in the string, div = 224 - 12 = 212: 12 + 6 k < 212 -> 33 'l's fit
    img = r(["中" + "l" * 40])[0, 0].numpy()
    han, ell = shade(glyph(0x4E2D))[:, 1:13], shade(glyph(0x6C))[:, 1:7]
    want = np.full((S, S), BG, np.uint8)
    want[:16, :12] = han
    for k in range(33):
        want[:16, 12 + 6 * k:18 + 6 * k] = ell
    for k in range(7):
        want[16:32, 6 * k:6 * k + 6] = ell
    assert np.array_equal(img, want)


def test_row_index_is_floor_of_cumulative_width_over_div():
    # the general formula on a mixed string, against the positions of ink in the image
    rend = clippo.TextRenderer(image_size=100, lower=False)
    widths = {"l": 6, ".": 4, "W": 7}
    text = "lW.lWWl..W" * 12
    div = np.float32(100 - 7)
    cum = np.cumsum([widths[c] for c in text]).astype(np.float32)
    rows = np.floor(cum / div).astype(int)
    img = rend([text])[0, 0].numpy()
    x = 0
    for i, (c, row) in enumerate(zip(text, rows)):
        if i and row != rows[i - 1]:
            x = 0
        cp = ord(c)
        first = {0x6C: 1, 0x2E: 2, 0x57: 0}[cp]
        want = shade(glyph(cp))[:, first:first + widths[c]]
        y = 16 * row
        if y < 100:
            h = min(16, 100 - y)
            assert np.array_equal(img[y:y + h, x:x + widths[c]], want[:h]), (i, c, row)
        x += widths[c]
    assert rows.max() * 16 >= 100   # the string runs past the bottom


@pytest.mark.parametrize("size,text,lower", [(48, "WWW.....", False),
                                             (224, "l" * 35 + "..", True)])
def test_letter_ending_exactly_at_div_starts_the_next_row(size, text, lower):
    # 48: div = 48 - 7 = 41 and W W W . . . . . ends at cum 21 + 20 = 41 -> row 1, although
    # it would fit on row 0; 224: div = 218 = 35 * 6 + 2 * 4. (float32 cum / div must be an
    # exact division here: cum * (1 / div) gives 0.99999994 for 41 / 41.)
    r = clippo.TextRenderer(image_size=size, lower=lower)
    img = r([text])[0, 0].numpy()
    dot = shade(glyph(0x2E))[:, 2:6]
    want_row0_end = sum(7 if c == "W" else 6 if c == "l" else 4 for c in text[:-1])
    assert np.array_equal(img[16:32, 0:4], dot)                    # last dot: row 1, x = 0
    assert (img[16:32, 4:] == BG).all()
    assert (img[:16, want_row0_end:] == BG).all()
    assert (img[:16, want_row0_end - 4:want_row0_end] == dot).all()
    assert np.array_equal(as_hwc(r([text]))[0], ref_image(text, image_size=size, lower=lower))


def test_rows_past_the_bottom_are_dropped():
    # image 64: 4 rows, div 58; row r holds the 'l's with 58 r <= 6 (i + 1) < 58 (r + 1),
    # so 38 letters fill rows 0..3 and letter 39 would start row 4.
    rend = clippo.TextRenderer(image_size=64)
    imgs = rend(["l" * 37, "l" * 38, "l" * 39, "l" * 500])
    assert not torch.equal(imgs[0], imgs[1])
    assert torch.equal(imgs[1], imgs[2]) and torch.equal(imgs[1], imgs[3])
    cell = shade(glyph(0x6C))[:, 1:7]
    assert np.array_equal(imgs[1, 0, 48:64, 6 * 9:6 * 10].numpy(), cell)  # row 3 holds 10


def test_partial_last_row_is_cut_at_the_bottom():
    # image 100: rows of 16 px, the 7th row (y = 96) shows only its top 4 pixel rows.
    # 'l' * 94: div = 94, letter 93 (cum 564) is the first on row 6, at x = 0.
    rend = clippo.TextRenderer(image_size=100)
    img = rend(["l" * 94])[0, 0].numpy()
    cell = shade(glyph(0x6C))[:, 1:7]
    assert np.array_equal(img[96:100, 0:6], cell[:4])
    assert (img[99, 0:6] == [BG, BG, 0, 0, BG, BG]).all()   # glyph row 3 = 0x18 -> cols 3, 4
    assert (img[96:100, 6:] == BG).all()


def test_controls_are_glyphs_not_line_breaks(r):
    img = r(["a\nb\tc\x00d"])[0, 0].numpy()
    assert (img[16:] == BG).all()              # nothing on row 2: no line break
    nl = r(["\n"])[0, 0].numpy()
    assert (nl[:16] == 0).any()                # Unifont draws a box for U+000A


def test_lowercasing_is_ascii_only(r):
    imgs = r(["A", "a", "É", "é", "HELLO World", "hello world", "Ω", "ω"])
    assert torch.equal(imgs[0], imgs[1])
    assert not torch.equal(imgs[2], imgs[3])   # É stays É
    assert torch.equal(imgs[4], imgs[5])
    assert not torch.equal(imgs[6], imgs[7])
    upper = clippo.TextRenderer(lower=False)(["A", "a"])
    assert not torch.equal(upper[0], upper[1])


# -- output layout ------------------------------------------------------------------------

def test_output_shape_dtype_and_strides(r):
    out = r(["a", "bb", "ccc"])
    assert out.shape == (3, 3, S, S) and out.dtype == torch.uint8 and out.device.type == "cpu"
    assert out.stride() == (S * S, 0, S, 1)          # channels share one grey plane
    assert out[:, 0].data_ptr() == out[:, 1].data_ptr() == out[:, 2].data_ptr()
    assert torch.equal(out[:, 0], out[:, 2])


def test_one_channel_output_equals_the_grey_plane(r):
    texts = ["one channel", "中文", ""]
    gray = clippo.TextRenderer(channels=1)(texts)
    assert gray.shape == (3, 1, S, S) and gray.dtype == torch.uint8
    assert torch.equal(gray[:, 0], r(texts)[:, 0])


def test_colours_are_exact(r):
    texts = ["colours: WWW 中文 😀"]
    base = r(texts)[0, 0]
    ink = base == 0
    assert 0 < int(ink.sum()) < S * S
    assert set(base.unique().tolist()) == {0, BG}
    other = clippo.TextRenderer(background_brightness=200, text_brightness=30)(texts)[0, 0]
    assert set(other.unique().tolist()) == {30, 200}
    assert torch.equal(other == 30, ink)


def test_empty_string_is_all_background(r):
    assert (r([""]) == BG).all()
    assert (r(["", "x"])[0] == BG).all()


def test_single_str_is_a_batch_of_one(r):
    assert torch.equal(r("a single str"), r(["a single str"]))
    assert r("x").shape == (1, 3, S, S)


def test_render_function_matches_renderer(r):
    texts = ["render() is TextRenderer()()", "ok"]
    assert torch.equal(clippo.render(texts), r(texts))
    assert torch.equal(clippo.render(texts, image_size=64),
                       clippo.TextRenderer(image_size=64)(texts))


def test_encode_texts_matches_python_utf8():
    texts = ["abc", "", "é中😀", b"\xff\xfe raw", "\ud800x"]
    data, offsets = encode_texts(texts)
    want = [b"abc", b"", "é中😀".encode(), b"\xff\xfe raw", "\ufffdx".encode()]
    assert offsets.dtype == torch.int64 and offsets.tolist() == list(
        np.cumsum([0] + [len(w) for w in want]))
    assert bytes(data.numpy()) == b"".join(want)
    # cut at 4 * max_chars bytes: every code point that survives truncation is kept intact
    data, offsets = encode_texts(["é" * 100, "x" * 5], max_chars=10)
    assert offsets.tolist() == [0, 40, 45]


# -- the default font ---------------------------------------------------------------------

def test_shipped_font_files_exist():
    fonts = atlas_lib.FONT_DIR
    for name in ("unifont-15.0.01.hex.gz", "unifont_upper-15.0.01.hex.gz", "OFL-1.1.txt"):
        assert (fonts / name).is_file() and (fonts / name).stat().st_size > 1000, name
    assert fonts / "unifont-15.0.01.hex.gz" == atlas_lib.DEFAULT_FONT
    assert "SIL OPEN FONT LICENSE" in (fonts / "OFL-1.1.txt").read_text().upper()


@pytest.mark.parametrize("cp", [0x41, 0x4E2D, 0xAC00, 0x0E01, 0x1F600, 0x1D400, 0x10348])
def test_default_font_covers_bmp_and_upper_planes(r, cp):
    g = r.atlas.cmap[cp]
    assert g > 0 and r.atlas.cells[g].any(), hex(cp)
    assert (as_hwc(r([chr(cp)]))[0] == 0).any()
    assert np.array_equal(as_hwc(r([chr(cp)]))[0], ref_image(chr(cp)))


def test_default_font_missing_code_points_are_empty(r):
    for cp in (0x10FFFF, 0xFFFF, 0xE0080, 0x50000):   # noncharacters / unassigned
        assert r.atlas.cmap[cp] == 0
    img = r(["\U0010FFFF"])[0, 0]
    assert (img == BG).all()                      # an empty cell, 4 px wide, no ink


def test_second_renderer_reuses_the_cached_atlas(r):
    again = clippo.TextRenderer()
    assert again.atlas is r.atlas
    assert again._shaded is r._shaded and again._cmap is r._cmap
    assert clippo.TextRenderer(image_size=64).atlas is r.atlas   # same font, other config
    assert atlas_lib.load_atlas() is r.atlas


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_float_output_is_the_reference_value_range(dtype):
    # big_vision feeds the model value_range(-1, 1) of the uint8 render: x / 255 * 2 - 1
    texts = ["Float output: 中文 😀", ""]
    u8 = clippo.TextRenderer()(texts).numpy()
    want = ((u8.astype(np.float32) / np.float32(255)) * np.float32(2) - np.float32(1))
    got = clippo.TextRenderer(dtype=dtype)(texts)
    assert got.dtype == dtype and got.shape == (2, 3, 224, 224)
    assert np.array_equal(got.float().numpy(), torch.from_numpy(want).to(dtype).float().numpy())
    assert got.min() == -1 and abs(float(got.max()) - (127 / 255 * 2 - 1)) < 1e-2
    with pytest.raises(ValueError, match="dtype"):
        clippo.TextRenderer(dtype=torch.int32)
    with pytest.raises(ValueError, match="dtype"):
        clippo.TextRenderer(dtype=torch.float32)(texts, out=torch.empty(2, 224, 224, dtype=torch.uint8))
