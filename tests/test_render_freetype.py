"""Fonts other than the default: TTF/OTF through FreeType, compared with a direct freetype-py
rendering written here (cells and layout re-implemented from the documented rules), the
atlas disk cache, and custom Unifont .hex files with hand-drawn glyphs."""
import gzip
import os
import pickle

import numpy as np
import pytest
import torch

import clippo
from clippo.text import atlas as atlas_lib
from clippo.text.atlas import FontError
from render_corpus import CORPUS, DEJAVU, random_strings

freetype = pytest.importorskip("freetype")
needs_dejavu = pytest.mark.skipif(
    not os.path.exists(DEJAVU),
    reason=f"{DEJAVU} missing: apt-get install -y fonts-dejavu-core")


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    """Keep FreeType atlas caches of this module out of the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("clippo-cache")
        mp.setenv("CLIPPO_CACHE_DIR", str(path))
        yield path


# -- an independent FreeType rendering ------------------------------------------------------

class DirectFreeType:
    """Cells built straight from freetype-py as atlas.py documents: font_size tall,
    2 * font_size wide, baseline at round(font_size * ascender / (ascender - descender)),
    glyph at max(bitmap_left, 0), ink outside the cell clipped."""

    def __init__(self, path, size, antialias):
        self.face = freetype.Face(path)
        self.face.set_pixel_sizes(0, size)
        self.size, self.antialias = size, antialias
        asc, desc = self.face.ascender, self.face.descender
        self.baseline = round(size * asc / (asc - desc))
        self.cells = {}
        self.clipped = set()   # code points whose ink was cut by the cell

    def cell(self, cp):
        if cp in self.cells:
            return self.cells[cp]
        h, w = self.size, 2 * self.size
        cell = np.zeros((h, w), np.uint8)
        gi = self.face.get_char_index(cp)
        if gi:
            flags = freetype.FT_LOAD_RENDER | (0 if self.antialias else
                                               freetype.FT_LOAD_TARGET_MONO)
            self.face.load_glyph(gi, flags)
            g = self.face.glyph
            bm = g.bitmap
            buf, pitch = bytes(bm.buffer), abs(bm.pitch)
            top, left = self.baseline - g.bitmap_top, max(g.bitmap_left, 0)
            for r in range(bm.rows):
                for c in range(bm.width):
                    if self.antialias:
                        v = buf[r * pitch + c]
                    else:
                        v = 255 if buf[r * pitch + c // 8] >> (7 - c % 8) & 1 else 0
                    y, x = top + r, left + c
                    if 0 <= y < h and 0 <= x < w:
                        cell[y, x] = v
                    elif v:
                        self.clipped.add(cp)
        self.cells[cp] = cell
        return cell


def layout_reference(cells, image_size, font_size, background_brightness=127,
                     text_brightness=0, monospace=False, spacing=1, min_width=4):
    """The reference's trim + wrap on arbitrary coverage cells (uint8 [h, w] each)."""
    letters = []
    for cell in cells:
        cov = cell.astype(np.float32) / np.float32(255)
        if not monospace:
            ink = np.flatnonzero(cov.max(axis=0) > 0)
            first, last = (int(ink[0]), int(ink[-1])) if len(ink) else (0, 0)
            first = max(first - spacing, 0)
            last = max(last + spacing, first + min_width)
            cov = cov[:, first:last]
        letters.append(cov)
    canvas = np.zeros((image_size, image_size), np.float32)
    if letters:
        widths = np.array([c.shape[1] for c in letters])
        rows = np.floor(np.cumsum(widths).astype(np.float32) /
                        np.float32(image_size - widths.max())).astype(int)
        x = {}
        for cov, row in zip(letters, rows):
            y = row * font_size
            if y >= image_size:
                break
            x0 = x.get(row, 0)
            x[row] = x0 + cov.shape[1]
            h = min(font_size, image_size - y)
            canvas[y:y + h, x0:x0 + cov.shape[1]] = cov[:h]
    img = canvas * np.float32(text_brightness - background_brightness) + \
        np.float32(background_brightness)
    return img.astype(np.uint8)


def code_points(text, lower=True, max_chars=768):
    ids = [ord(c) + 32 if lower and "A" <= c <= "Z" else ord(c) for c in text]
    return ids[:max_chars] if max_chars else ids


TEXTS = [CORPUS[k] for k in ("ascii_pangram", "ascii_all_printable", "latin_accents", "greek",
                             "cyrillic", "arabic", "hebrew", "combining", "cjk", "emoji_astral",
                             "controls", "whitespace_only", "empty", "narrow_only")] + \
    ["ÀÉÎÕÜ ÇĘĶŅŢ gjpqy_| Ǻǻ", "A" * 300] + \
    random_strings(30, seed=17, max_len=250,
                   scripts=["ascii", "latin", "greek", "cyrillic", "arabic", "space", "cjk"])


def check_font(path, texts, font_size=16, antialias=False, **params):
    r = clippo.TextRenderer(font=path, font_size=font_size, antialias=antialias, **params)
    direct = DirectFreeType(path, font_size, antialias)
    got = r(texts)[:, 0].numpy()
    size = params.get("image_size", 224)
    layout_params = {k: v for k, v in params.items()
                     if k not in ("image_size", "lower", "max_chars")}
    for i, t in enumerate(texts):
        ids = code_points(t, params.get("lower", True), params.get("max_chars", 768))
        want = layout_reference([direct.cell(cp) for cp in ids], size, font_size,
                                **layout_params)
        if not np.array_equal(got[i], want):
            bad = np.argwhere(got[i] != want)
            pytest.fail(f"text {i} {t[:40]!r}: {len(bad)} pixels differ, first {tuple(bad[0])}")
    return r, direct


CONFIGS = [
    dict(),
    dict(antialias=True),
    dict(font_size=12),
    dict(font_size=12, antialias=True, background_brightness=0, text_brightness=255),
    dict(font_size=24, antialias=True, image_size=384),
    dict(spacing=0, min_width=0, image_size=100),
    dict(monospace=True, antialias=True, image_size=160),
    dict(lower=False, max_chars=40, spacing=3, text_brightness=200, background_brightness=20),
]


@needs_dejavu
@pytest.mark.parametrize("params", CONFIGS,
                         ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()) or "defaults")
def test_dejavu_matches_direct_freetype(params):
    r, direct = check_font(DEJAVU, TEXTS, **params)
    assert direct.clipped, "the corpus should exercise clipping at the cell edges"
    img = r(["Hello"])[:, 0]
    if params.get("antialias"):
        assert len(img.unique()) > 2           # real coverage blending
    else:
        assert len(img.unique()) == 2


@needs_dejavu
@pytest.mark.parametrize("size,antialias", [(16, False), (16, True), (12, False)])
def test_dejavu_atlas_cells_equal_direct_freetype(size, antialias):
    atlas = atlas_lib.load_atlas(DEJAVU, None, size, antialias)
    direct = DirectFreeType(DEJAVU, size, antialias)
    assert atlas.cells.shape[1:] == (size, 2 * size)
    assert atlas.binary is (not antialias)
    cps = list(range(0x20, 0x250)) + list(range(0x370, 0x530)) + list(range(0x600, 0x700)) + \
        [0x4E2D, 0x1F600, 0x10FFFF, 0x2603, 0x263A, 0xFB01, 0x20AC]
    for cp in cps:
        g = atlas.cmap[cp]
        assert (g > 0) == (direct.face.get_char_index(cp) > 0), hex(cp)
        assert np.array_equal(atlas.cells[g], direct.cell(cp)), hex(cp)
    assert not atlas.cells[0].any()


@needs_dejavu
def test_dejavu_renderer_is_cached_and_pickles_by_reference():
    a = clippo.TextRenderer(font=DEJAVU)
    b = clippo.TextRenderer(font=DEJAVU, image_size=100)
    assert a.atlas is b.atlas
    blob = pickle.dumps(a)
    assert len(blob) < 10_000
    back = pickle.loads(blob)
    texts = ["pickled DejaVu ÀÉÎ", CORPUS["greek"]]
    assert torch.equal(back(texts), a(texts))


# -- disk cache -----------------------------------------------------------------------------

def fresh_load(path, size=16, antialias=False):
    """load_freetype_atlas without its in-process cache: the disk cache is all that helps."""
    return atlas_lib.load_freetype_atlas.__wrapped__(str(path), size, antialias)


@needs_dejavu
def test_disk_cache_is_written_once_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPPO_CACHE_DIR", str(tmp_path))
    first = fresh_load(DEJAVU)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns

    def no_freetype(*args, **kwargs):
        raise AssertionError("rasterised again instead of reading the cache")
    monkeypatch.setattr(atlas_lib, "_rasterise_freetype", no_freetype)
    second = fresh_load(DEJAVU)
    assert np.array_equal(second.cells, first.cells) and np.array_equal(second.cmap, first.cmap)
    assert second.binary == first.binary
    assert list(tmp_path.glob("*.npz")) == files and files[0].stat().st_mtime_ns == stamp
    # another size or antialias is another entry
    monkeypatch.undo()
    monkeypatch.setenv("CLIPPO_CACHE_DIR", str(tmp_path))
    fresh_load(DEJAVU, 16, True)
    fresh_load(DEJAVU, 12, False)
    assert len(list(tmp_path.glob("*.npz"))) == 3


def _bit_flip(data):
    b = bytearray(data)
    b[len(b) // 2] ^= 0xFF
    return bytes(b)


CORRUPTIONS = {
    "garbage": lambda good: os.urandom(2000),
    "missing_arrays": None,   # a valid npz without the expected keys (written below)
    "truncated": lambda good: good[:len(good) // 2],
    "empty": lambda good: b"",
    "bit_flip": _bit_flip,
}


@needs_dejavu
@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupted_cache_is_rebuilt(tmp_path, monkeypatch, kind):
    monkeypatch.setenv("CLIPPO_CACHE_DIR", str(tmp_path))
    good = fresh_load(DEJAVU)
    (path,) = tmp_path.glob("*.npz")
    if kind == "missing_arrays":
        with open(path, "wb") as f:
            np.savez(f, something_else=np.zeros(3))
    else:
        path.write_bytes(CORRUPTIONS[kind](path.read_bytes()))
    again = fresh_load(DEJAVU)
    assert np.array_equal(again.cells, good.cells) and np.array_equal(again.cmap, good.cmap)
    with np.load(path) as z:             # and the entry was rewritten whole
        assert np.array_equal(z["cells"], good.cells)


def test_unwritable_cache_dir_still_renders(tmp_path, monkeypatch):
    if not os.path.exists(DEJAVU):
        pytest.skip(f"{DEJAVU} missing")
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    monkeypatch.setenv("CLIPPO_CACHE_DIR", str(blocker / "sub"))
    atlas = fresh_load(DEJAVU)
    assert atlas.cmap[ord("a")] > 0


# -- custom .hex fonts ----------------------------------------------------------------------

def hex_rows(rows, wide=False):
    """16 rows of ints -> hex digits (2 or 4 per row)."""
    return "".join(f"{v:04X}" if wide else f"{v:02X}" for v in rows)


BAR = [0] * 4 + [0x3E] * 8 + [0] * 4             # 'A': columns 2..6 inked, rows 4..11
LINE = [0] * 8 + [0xFFFF] + [0] * 7               # U+4E00: one full-width row
BOX = [0xFFFF] + [0x8001] * 14 + [0xFFFF]         # U+1F600: a 16x16 frame


def bits(rows, wide):
    n = 16 if wide else 8
    cell = np.zeros((16, 16), np.uint8)
    for y, v in enumerate(rows):
        for x in range(n):
            cell[y, x] = v >> (n - 1 - x) & 1
    return cell


@pytest.fixture()
def custom_hex(tmp_path):
    bmp = tmp_path / "mine.hex"
    bmp.write_text(f"0041:{hex_rows(BAR)}\n4E00:{hex_rows(LINE, True)}\n")
    upper = tmp_path / "mine_upper.hex"
    upper.write_text(f"01F600:{hex_rows(BOX, True)}\n")
    gz = tmp_path / "mine.hex.gz"
    gz.write_bytes(gzip.compress(bmp.read_bytes()))
    return bmp, upper, gz


def test_custom_hex_glyphs_render_where_expected(custom_hex):
    bmp, upper, gz = custom_hex
    r = clippo.TextRenderer(font=bmp, upper_font=upper, lower=False)
    img = r(["AA一B😀"])[0, 0].numpy()
    want = np.full((224, 224), 127, np.uint8)
    a = np.where(bits(BAR, False)[:, 1:7], 0, 127)     # ink 2..6 -> keep [1, 7)
    line = np.where(bits(LINE, True), 0, 127)          # ink 0..15 -> keep [0, 16)
    box = np.where(bits(BOX, True), 0, 127)
    want[:16, 0:6] = a
    want[:16, 6:12] = a
    want[:16, 12:28] = line
    # 'B' is not in the font: an empty cell, min_width = 4 px
    want[:16, 32:48] = box
    assert np.array_equal(img, want)
    # .hex.gz reads the same; without the upper file the astral glyph is an empty cell
    assert np.array_equal(clippo.TextRenderer(font=gz, upper_font=upper, lower=False)(
        ["AA一B😀"])[0, 0].numpy(), want)
    no_upper = clippo.TextRenderer(font=bmp, lower=False)(["AA一B😀"])[0, 0].numpy()
    assert np.array_equal(no_upper[:, :32], want[:, :32]) and (no_upper[:, 32:] == 127).all()
    # lower=True turns 'A' into 'a', which this font does not have
    assert (clippo.TextRenderer(font=bmp)(["A"]) == 127).all()


def test_custom_hex_wraps_by_the_formula(custom_hex):
    bmp, _, _ = custom_hex
    r = clippo.TextRenderer(font=bmp, lower=False, image_size=64)
    # 'A' is 6 px, 一 16 px: div = 64 - 16 = 48; cum = 16, 22, 28, ..., row = floor(cum / 48)
    text = "一" + "A" * 12
    widths = [16] + [6] * 12
    cum = np.cumsum(widths)
    rows = (cum.astype(np.float32) / np.float32(48)).astype(int)
    img = r([text])[0, 0].numpy()
    x = {}
    for w, row in zip(widths, rows):
        x0 = x.get(row, 0)
        x[row] = x0 + w
        cell = bits(LINE, True) if w == 16 else bits(BAR, False)[:, 1:7]
        assert np.array_equal(img[16 * row:16 * row + 16, x0:x0 + w] == 0, cell > 0), (w, row)
    assert sorted(x) == [0, 1]


def test_custom_hex_is_cached_in_process(custom_hex):
    bmp, upper, _ = custom_hex
    a = clippo.TextRenderer(font=bmp, upper_font=upper)
    b = clippo.TextRenderer(font=str(bmp), upper_font=str(upper), image_size=64)
    assert a.atlas is b.atlas
    assert len(a.atlas) == 4                     # empty glyph + 3


def test_custom_hex_errors(tmp_path):
    bad = tmp_path / "bad.hex"
    bad.write_text(f"0041:{hex_rows(BAR)}\n0042:XYZ\n")
    with pytest.raises(FontError, match="line 2"):
        clippo.TextRenderer(font=bad)
    ttf_upper = tmp_path / "x.ttf"
    ttf_upper.write_bytes(b"")
    good = tmp_path / "good.hex"
    good.write_text(f"0041:{hex_rows(BAR)}\n")
    with pytest.raises(FontError):
        clippo.TextRenderer(font=good, upper_font=ttf_upper)


def test_font_path_with_tilde_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "mine.hex").write_text(f"0041:{hex_rows(BAR)}\n")
    want = clippo.TextRenderer(font=tmp_path / "mine.hex", lower=False)(["A"])
    assert torch.equal(clippo.TextRenderer(font="~/mine.hex", lower=False)(["A"]), want)


def test_relative_font_paths_follow_the_working_directory(tmp_path, monkeypatch):
    for name, rows in (("a", BAR), ("b", LINE[:8] + [0xFF] * 8)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "rel.hex").write_text(f"0041:{hex_rows([v & 0xFF for v in rows])}\n")
    monkeypatch.chdir(tmp_path / "a")
    first = clippo.TextRenderer(font="rel.hex", lower=False)(["A"])
    monkeypatch.chdir(tmp_path / "b")
    second = clippo.TextRenderer(font="rel.hex", lower=False)(["A"])
    want = clippo.TextRenderer(font=tmp_path / "b" / "rel.hex", lower=False)(["A"])
    assert not torch.equal(first, want)
    assert torch.equal(second, want)


def test_font_size_beyond_the_rasterizer_limit_is_a_value_error(tmp_path):
    font = tmp_path / "one.hex"
    font.write_text(f"0041:{hex_rows(BAR)}\n")
    with pytest.raises(ValueError):
        clippo.TextRenderer(font=font, font_size=257, image_size=600)(["A"])


@needs_dejavu
def test_failed_cache_write_leaves_no_temp_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPPO_CACHE_DIR", str(tmp_path))

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(atlas_lib.np, "savez", disk_full)
    atlas = fresh_load(DEJAVU)
    assert len(atlas) > 100
    assert list(tmp_path.iterdir()) == []
