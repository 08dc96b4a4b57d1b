"""The shipped upper-planes Unifont is upstream's own file, and clippo draws it as upstream.

Expected bitmaps are decoded here from the .hex text itself (16 rows of 2 or 4 hex digits,
most significant bit leftmost, 8-px glyphs in the left half of the 16x16 cell), sharing no
code with clippo.text.atlas.
"""
import gzip
import hashlib
import os

import numpy as np
import pytest

import clippo
from clippo.text import atlas as atlas_lib

# GNU Unifont 15.0.01, font/precompiled/unifont_upper-15.0.01.hex: sha256 of the text
UPSTREAM_SHA256 = "5eeff43a0c26e3c60f1fe616542a8ec681380eea9150af0a32af692121f36b6d"
UPSTREAM_LINES = 13548
BACKGROUND, INK = 127, 0  # the renderer's default brightnesses

# upstream's lines for marks that a rasterisation of the OTF put 8 px left of these bitmaps,
# and U+1D165 (a combining stem drawn in an 8-px cell)
MARK_LINES = [
    "011000:0000000000000006000600000000000000000004000400030000000000000000",
    "011038:00000000000000F0000000000000000000000000000000000000000000000000",
    "011127:0010002000400000000000000000000000000000000000000000000000000000",
    "01133E:0000000000000000001F00120012001200120012001200120000000000000000",
    "0116AB:0000008000000000000000000000000000000000000000000000000000000000",
    "011720:0000000000000000000000010001000200000000000200010001000200000000",
    "01D165:00000000080808080808080000000000",
]


def hex_cells(digit_strings):
    """uint8 [n, 16, 16] 0/1 cells of .hex glyph digits (32 or 64 hex digits each)."""
    cells = np.zeros((len(digit_strings), 16, 16), np.uint8)
    for i, digits in enumerate(digit_strings):
        per_row = len(digits) // 16          # 2 digits = 8 px, 4 digits = 16 px
        width = 4 * per_row
        rows = np.array([int(digits[y * per_row:(y + 1) * per_row], 16) for y in range(16)])
        cells[i, :, :width] = (rows[:, None] >> np.arange(width - 1, -1, -1)) & 1
    return cells


@pytest.fixture(scope="module")
def upper_text():
    return gzip.decompress(atlas_lib.DEFAULT_UPPER_FONT.read_bytes()).decode("ascii")


@pytest.fixture(scope="module")
def upper_glyphs(upper_text):
    """{code point: cell [16, 16] 0/1} of every line of the shipped upper-planes file."""
    keys, digits = zip(*(line.split(":") for line in upper_text.splitlines()))
    return dict(zip((int(k, 16) for k in keys), hex_cells(digits)))


@pytest.fixture(scope="module")
def default():
    return clippo.TextRenderer()


@pytest.fixture(scope="module")
def default_mono():
    return clippo.TextRenderer(monospace=True)


def test_shipped_upper_font_is_upstreams_file(upper_text):
    assert atlas_lib.DEFAULT_UPPER_FONT.name == "unifont_upper-15.0.01.hex.gz"
    assert hashlib.sha256(upper_text.encode("ascii")).hexdigest() == UPSTREAM_SHA256
    lines = upper_text.splitlines()
    assert len(lines) == UPSTREAM_LINES
    keys = [line.split(":")[0] for line in lines]
    assert len(set(keys)) == len(keys)
    # the provenance note beside the font records the same file
    assert UPSTREAM_SHA256 in (atlas_lib.FONT_DIR / "README.md").read_text()


def test_licence_texts_ship_beside_the_fonts():
    fonts = atlas_lib.FONT_DIR
    assert "SIL OPEN FONT LICENSE" in (fonts / "OFL-1.1.txt").read_text().upper()
    assert "GNU GENERAL PUBLIC LICENSE" in (fonts / "GPL-2.txt").read_text()
    assert "Version 2, June 1991" in (fonts / "GPL-2.txt").read_text()
    assert "font embedding exception" in (fonts / "README.md").read_text()
    assert "Paul Hardy" in (fonts / "debian-copyright.txt").read_text()


def test_u11038_ink_lands_in_columns_8_to_11(default_mono):
    # the minimal case: upstream draws the mark's bar in the right half of its cell
    img = default_mono(["\U00011038"])[0, 0].numpy()
    assert np.flatnonzero((img == INK).any(axis=0)).tolist() == [8, 9, 10, 11]
    assert np.flatnonzero((img == INK).any(axis=1)).tolist() == [3]


@pytest.mark.parametrize("line", MARK_LINES, ids=lambda line: "U+" + line.split(":")[0])
def test_marks_land_where_the_hex_line_puts_them(default, default_mono, upper_text, line):
    assert line in upper_text.splitlines()
    key, digits = line.split(":")
    cp, cell = int(key, 16), hex_cells([digits])[0]
    assert cell.any()
    # monospace: the whole 16x16 cell at the top left, as in the file
    want = np.full((224, 224), BACKGROUND, np.uint8)
    want[:16, :16][cell == 1] = INK
    assert np.array_equal(default_mono([chr(cp)])[0, 0].numpy(), want)
    # proportional: the reference's trim, one column of spacing each side of the ink and
    # at least 4 columns, clamped to the cell
    inked = np.flatnonzero(cell.any(axis=0))
    first = max(inked[0] - 1, 0)
    last = min(max(inked[-1] + 1, first + 4), 16)
    want = np.full((224, 224), BACKGROUND, np.uint8)
    want[:16, :last - first][cell[:, first:last] == 1] = INK
    assert np.array_equal(default([chr(cp)])[0, 0].numpy(), want)


def test_default_atlas_holds_exactly_the_upstream_upper_glyphs(default, upper_glyphs):
    atlas = default.atlas
    cps = np.array(sorted(cp for cp in upper_glyphs if cp >= 0x10000))
    assert len(cps) == UPSTREAM_LINES - 1       # every line but the BMP space
    assert np.array_equal(np.flatnonzero(atlas.cmap[0x10000:]) + 0x10000, cps)
    want = np.stack([upper_glyphs[cp] for cp in cps]) * np.uint8(255)
    assert np.array_equal(atlas.cells[atlas.cmap[cps]], want)
    # the file's one BMP line, the space, is blank as in the BMP file
    assert not upper_glyphs[0x20].any() and not atlas.cells[atlas.cmap[0x20]].any()


@pytest.mark.parametrize("monospace", [False, True], ids=["proportional", "monospace"])
def test_default_renders_every_upper_glyph_as_the_upstream_file_given_explicitly(
        tmp_path, default, default_mono, upper_text, upper_glyphs, monospace):
    upstream = tmp_path / "unifont_upper-15.0.01.hex"     # a separate, uncompressed copy
    upstream.write_text(upper_text)
    explicit = clippo.TextRenderer(font=atlas_lib.DEFAULT_FONT, upper_font=upstream,
                                   monospace=monospace)
    implicit = default_mono if monospace else default
    assert explicit.atlas is not implicit.atlas
    cps = sorted(cp for cp in upper_glyphs if cp >= 0x10000)
    # 150 glyphs of at most 16 px fill at most 12 of the 14 rows of a 224-px image
    chunks = [cps[i:i + 150] for i in range(0, len(cps), 150)]
    texts = ["".join(map(chr, chunk)) for chunk in chunks]
    got, want = implicit(texts), explicit(texts)
    assert np.array_equal(got.numpy(), want.numpy())
    if monospace:  # cells don't overlap: every glyph's ink is in the image
        ink = (got[:, 0] == INK).sum(dim=(1, 2)).numpy()
        assert ink.tolist() == [sum(int(upper_glyphs[cp].sum()) for cp in c) for c in chunks]


def test_an_updated_font_file_is_read_again(tmp_path):
    bmp, upper = tmp_path / "bmp.hex", tmp_path / "upper.hex"
    bmp.write_text("0041:0000000018242442427E424242420000\n")
    box = "FFFF" + "8001" * 14 + "FFFF"
    upper.write_text(f"1F600:{box}\n")
    first = clippo.TextRenderer(font=bmp, upper_font=upper, monospace=True)
    assert clippo.TextRenderer(font=bmp, upper_font=upper, monospace=True).atlas is first.atlas
    img = first(["\U0001F600"])[0, 0].numpy()
    assert (img[:16, :16] == INK).sum() == 60

    # replaced by a new file (a new inode), as an upgrade does
    tmp = tmp_path / "upper.new"
    tmp.write_text(f"1F600:{'0180' * 16}\n")
    os.replace(tmp, upper)
    img = clippo.TextRenderer(font=bmp, upper_font=upper, monospace=True)(["\U0001F600"])[0, 0]
    assert np.flatnonzero((img.numpy() == INK).any(axis=0)).tolist() == [7, 8]

    # rewritten in place, same size: the modification time tells
    st = upper.stat()
    with open(upper, "r+") as f:
        f.write(f"1F600:{'8000' * 16}\n")
    os.utime(upper, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    img = clippo.TextRenderer(font=bmp, upper_font=upper, monospace=True)(["\U0001F600"])[0, 0]
    assert np.flatnonzero((img.numpy() == INK).any(axis=0)).tolist() == [0]
