"""Glyph atlases: every glyph of a font as a fixed-size cell of ink coverage.

An atlas is what the rasterizer needs from a font and nothing more:

    cells  uint8 [G, H, W]   ink coverage, 0 (none) .. 255 (full); glyph 0 is the empty cell
    cmap   int32 [0x110000]  glyph index of every code point (0 where the font has none)

Two sources:
  * GNU Unifont `.hex` files, the reference's exact format (a BMP file plus an optional
    upper-planes file); `.hex.gz` is read too. Cells are 16x16, 8-px glyphs in the left half.
  * any TTF/OTF font through FreeType (freetype-py): every glyph rasterised once at a pixel
    size, monochrome or anti-aliased, on a common baseline in cells `font_size` tall.

Atlases are cached in memory (per process, keyed by each font file's path, size, mtime and
inode, so a file replaced or edited in place is read again) and on disk (FreeType atlases,
which are slow to build, keyed by the font's sha256), so creating a renderer the second time
costs milliseconds.
"""
import dataclasses
import functools
import gzip
import hashlib
import inspect
import os
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

NUM_CODE_POINTS = 0x110000
FONT_DIR = Path(__file__).resolve().parent.parent / "fonts"
DEFAULT_FONT = FONT_DIR / "unifont-15.0.01.hex.gz"
DEFAULT_UPPER_FONT = FONT_DIR / "unifont_upper-15.0.01.hex.gz"
_HEX_SUFFIXES = (".hex", ".hex.gz")


class FontError(ValueError):
    """A font file is missing, unreadable or not a font."""


@dataclasses.dataclass(frozen=True, eq=False)
class GlyphAtlas:
    cells: np.ndarray   # uint8 [G, H, W] coverage 0..255, cells[0] is empty
    cmap: np.ndarray    # int32 [0x110000] -> index into cells
    binary: bool        # coverage is only ever 0 or 255
    source: str         # description for repr / errors

    @property
    def cell_height(self):
        return self.cells.shape[1]

    @property
    def cell_width(self):
        return self.cells.shape[2]

    def __len__(self):
        return self.cells.shape[0]

    def __repr__(self):
        return (f"GlyphAtlas({self.source}, {len(self) - 1} glyphs, "
                f"{self.cell_height}x{self.cell_width} cells)")


def _file_state(path):
    """What tells one version of a file from the next without reading it; None if missing."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev


def _cached_by_file_state(maxsize, path_args):
    """functools.lru_cache whose key also holds the state of the files named by the first
    `path_args` parameters, so an updated font never serves the atlas of the old file."""
    def decorate(load):
        signature = inspect.signature(load)

        @functools.lru_cache(maxsize=maxsize)
        def cached(args, state):
            return load(*args)

        @functools.wraps(load)  # wrapper.__wrapped__ is the uncached loader
        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()   # f(x, 16) and f(x, font_size=16) share one entry
            args = tuple(bound.arguments.values())
            return cached(args, tuple(_file_state(p) for p in args[:path_args]))
        wrapper.cache_clear = cached.cache_clear
        return wrapper
    return decorate


def is_hex_font(path):
    return str(path).endswith(_HEX_SUFFIXES)


def _read_text(path):
    path = Path(path)
    if not path.is_file():
        raise FontError(f"font file not found: {path}")
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        return raw.decode("ascii")
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error, UnicodeDecodeError) as e:
        raise FontError(f"cannot read font file {path}: {e}") from e


def parse_hex(path):
    """Parse a Unifont .hex file into (code_points int64 [n], bits uint8 [n, 16, 16])."""
    lines = _read_text(path).split()
    code_points = np.empty(len(lines), np.int64)
    packed = np.zeros((len(lines), 16, 2), np.uint8)  # two bytes per row: left, right half
    for i, line in enumerate(lines):
        key, sep, digits = line.partition(":")
        try:
            if not sep or len(digits) not in (32, 64):
                raise ValueError("expected CODEPOINT:32 or 64 hex digits")
            cp = int(key, 16)
            if not 0 <= cp < NUM_CODE_POINTS:
                raise ValueError(f"code point {key} out of range")
            rows = np.frombuffer(bytes.fromhex(digits), np.uint8)
        except ValueError as e:
            raise FontError(f"{path}: line {i + 1} is not a Unifont .hex glyph ({e}): "
                            f"{line[:80]!r}") from None
        code_points[i] = cp
        if len(digits) == 32:      # 8 px wide: one byte per row, in the left half of the cell
            packed[i, :, 0] = rows
        else:                      # 16 px wide: two bytes per row
            packed[i] = rows.reshape(16, 2)
    if not len(lines):
        raise FontError(f"{path}: no glyphs in .hex file")
    bits = np.unpackbits(packed, axis=2)  # [n, 16, 16], MSB first = leftmost pixel
    return code_points, bits


def _resize_area(cells, size):
    """tf.image.resize(method="area") of float32 cells [G, h, w] to [G, size, size].

    Reproduces TensorFlow's ResizeArea kernel operation by operation in float32 (the
    reference resizes Unifont cells this way when font_size != 16), vectorised over glyphs.
    """
    cells = cells.astype(np.float32)
    n, in_h, in_w = cells.shape
    f32 = np.float32
    hs, ws = f32(in_h) / f32(size), f32(in_w) / f32(size)
    scale = f32(1.0 / float(f32(hs * ws)))

    def taps(o, s, limit):
        lo, hi = f32(o) * s, f32(o + 1) * s
        out = []
        for i in range(int(np.floor(lo)), int(np.ceil(hi))):
            if i < lo:
                w = s if i + 1 > hi else f32(f32(i + 1) - lo)
            else:
                w = f32(hi - f32(i)) if i + 1 > hi else f32(1.0)
            out.append((min(limit - 1, max(0, i)), f32(w)))
        return out

    out = np.empty((n, size, size), np.float32)
    x_taps = [taps(x, ws, in_w) for x in range(size)]
    for y in range(size):
        for x in range(size):
            xt = x_taps[x]
            total = np.zeros(n, np.float32)
            for iy, wy in taps(y, hs, in_h):
                row = cells[:, iy]
                s = row[:, xt[0][0]] * xt[0][1]
                if len(xt) > 1:
                    for ix, _ in xt[1:-1]:
                        s = s + row[:, ix]
                    s = s + row[:, xt[-1][0]] * xt[-1][1]
                total = total + s * wy
            out[:, y, x] = total * scale
    return out


@_cached_by_file_state(maxsize=8, path_args=2)
def load_hex_atlas(font, upper_font):
    """Atlas from a BMP .hex file and an optional upper-planes .hex file (16x16 cells)."""
    cmap = np.zeros(NUM_CODE_POINTS, np.int32)
    parts = [np.zeros((1, 16, 16), np.uint8)]
    count = 1
    for path in (font, upper_font):
        if path is None:
            continue
        cps, bits = parse_hex(path)
        cmap[cps] = np.arange(count, count + len(cps), dtype=np.int32)
        parts.append(bits)
        count += len(cps)
    cells = np.concatenate(parts) * np.uint8(255)
    source = " + ".join(Path(p).name for p in (font, upper_font) if p is not None)
    return GlyphAtlas(cells, cmap, True, source)


def _cache_dir():
    root = os.environ.get("CLIPPO_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "clippo")
    return Path(root)


def _freetype_key(path, font_size, antialias):
    h = hashlib.sha256(Path(path).read_bytes())
    h.update(f"|{font_size}|{antialias}|v1".encode())
    return h.hexdigest()[:32]


@_cached_by_file_state(maxsize=8, path_args=1)
def load_freetype_atlas(font, font_size, antialias=False):
    """Atlas from a TTF/OTF font rendered by FreeType at `font_size` pixels.

    Cells are `font_size` tall and `2 * font_size` wide. The baseline sits at the font's
    ascender scaled into the cell, so every glyph shares it; ink outside the cell is
    clipped. Glyphs are placed at their left bearing (never left of the cell).
    """
    path = Path(font)
    if not path.is_file():
        raise FontError(f"font file not found: {path}")
    cache = _cache_dir() / f"atlas-{_freetype_key(path, font_size, antialias)}.npz"
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                cells, code_points, glyphs = z["cells"], z["code_points"], z["glyphs"]
            if (cells.ndim == 3 and cells.dtype == np.uint8 and len(cells) >= 1
                    and code_points.shape == glyphs.shape and code_points.ndim == 1
                    and (code_points.size == 0 or (0 <= code_points.min()
                                                   and code_points.max() < NUM_CODE_POINTS
                                                   and 0 <= glyphs.min()
                                                   and glyphs.max() < len(cells)))):
                cmap = np.zeros(NUM_CODE_POINTS, np.int32)
                cmap[code_points] = glyphs
                return GlyphAtlas(cells, cmap, not antialias, path.name)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # a damaged cache entry is rebuilt below
    cells, code_points, glyphs = _rasterise_freetype(path, font_size, antialias)
    tmp = None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, cells=cells, code_points=code_points, glyphs=glyphs)
        os.replace(tmp, cache)
    except OSError:  # caching is an optimisation; a read-only or full disk still renders
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    cmap = np.zeros(NUM_CODE_POINTS, np.int32)
    cmap[code_points] = glyphs
    return GlyphAtlas(cells, cmap, not antialias, path.name)


def _rasterise_freetype(path, font_size, antialias):
    try:
        import freetype
    except ImportError as e:
        raise ImportError("TTF/OTF fonts need freetype-py: pip install freetype-py") from e
    try:
        face = freetype.Face(str(path))
        face.set_pixel_sizes(0, font_size)
    except freetype.FT_Exception as e:
        raise FontError(f"FreeType cannot open {path}: {e}") from e
    height, width = font_size, 2 * font_size
    units_asc, units_desc = face.ascender, face.descender
    span = units_asc - units_desc
    baseline = int(round(font_size * units_asc / span)) if span > 0 else font_size
    flags = freetype.FT_LOAD_RENDER | (0 if antialias else freetype.FT_LOAD_TARGET_MONO)
    by_glyph_index = {}
    code_points, glyphs = [], []
    cells = [np.zeros((height, width), np.uint8)]
    for cp, gi in face.get_chars():
        if gi == 0 or not 0 <= cp < NUM_CODE_POINTS:
            continue
        if gi not in by_glyph_index:
            face.load_glyph(gi, flags)
            cells.append(_glyph_cell(face.glyph, height, width, baseline, antialias))
            by_glyph_index[gi] = len(cells) - 1
        code_points.append(cp)
        glyphs.append(by_glyph_index[gi])
    return (np.stack(cells), np.asarray(code_points, np.int64),
            np.asarray(glyphs, np.int32))


def glyph_bitmap(glyph_slot, antialias):
    """A FreeType glyph slot's bitmap as uint8 coverage [rows, width] (0..255)."""
    bm = glyph_slot.bitmap
    rows, cols, pitch = bm.rows, bm.width, bm.pitch
    if rows == 0 or cols == 0:
        return np.zeros((0, 0), np.uint8)
    buf = np.frombuffer(bytes(bm.buffer), np.uint8).reshape(rows, abs(pitch))
    if antialias:
        return buf[:, :cols].copy()
    return np.unpackbits(buf, axis=1)[:, :cols] * np.uint8(255)


def _glyph_cell(glyph_slot, height, width, baseline, antialias):
    cell = np.zeros((height, width), np.uint8)
    bitmap = glyph_bitmap(glyph_slot, antialias)
    if bitmap.size == 0:
        return cell
    top = baseline - glyph_slot.bitmap_top
    left = max(glyph_slot.bitmap_left, 0)
    y0, x0 = max(top, 0), left
    y1, x1 = min(top + bitmap.shape[0], height), min(left + bitmap.shape[1], width)
    if y1 > y0 and x1 > x0:
        cell[y0:y1, x0:x1] = bitmap[y0 - top:y1 - top, :x1 - x0]
    return cell


def resolve_font_path(path):
    """An absolute path string (~ expanded), so caches and pickles don't depend on the cwd."""
    if path is None:
        return None
    return str(Path(path).expanduser().resolve())


def load_atlas(font=None, upper_font=None, font_size=16, antialias=False):
    """The atlas for a font spec: default Unifont, a .hex pair, or a TTF/OTF file."""
    if font is None:
        font = DEFAULT_FONT
        if upper_font is None:
            upper_font = DEFAULT_UPPER_FONT
    font = resolve_font_path(font)
    if is_hex_font(font):
        if upper_font is not None and not is_hex_font(upper_font):
            raise FontError(f"upper_font must be a .hex file to pair with {font}")
        return load_hex_atlas(font, resolve_font_path(upper_font))
    if upper_font is not None:
        raise FontError("upper_font only applies to Unifont .hex fonts")
    return load_freetype_atlas(font, int(font_size), bool(antialias))


MAX_CELL_WIDTH = 256          # the rasterizer packs a column index into 8 bits
MAX_ATLAS_BYTES = 1 << 30     # shaded atlases beyond this are a font_size mistake


def render_tables(atlas, cfg):
    """Per-renderer tables derived from an atlas and a RenderConfig.

    Returns (shaded uint8 [G, h, w], cols int32 [G]) where `shaded` holds the final pixel
    value of every cell position (text/background blend), and `cols` packs each glyph's
    kept column range: first | width << 16 (the reference's trim, or the full cell).
    For a Unifont atlas with font_size != 16, cells are first resized like the reference
    (area interpolation), and `h = w = font_size`.
    """
    resize = (atlas.binary and atlas.cell_height == 16 and atlas.cell_width == 16
              and cfg.font_size != 16)
    g = len(atlas)
    h, w = (cfg.font_size, cfg.font_size) if resize else (atlas.cell_height, atlas.cell_width)
    if w > MAX_CELL_WIDTH:
        raise ValueError(f"font_size={cfg.font_size} gives {w}-pixel-wide cells with {atlas}; "
                         f"the rasterizer takes cells up to {MAX_CELL_WIDTH} pixels wide")
    if g * h * w > MAX_ATLAS_BYTES:
        raise ValueError(f"font_size={cfg.font_size} would need a {g * h * w / 2**30:.1f} GiB "
                         f"atlas for {atlas} (limit {MAX_ATLAS_BYTES / 2**30:.0f} GiB)")
    shaded = np.empty((g, h, w), np.uint8)
    cols = np.empty(g, np.int64)
    delta = np.float32(cfg.text_brightness - cfg.background_brightness)
    chunk = max(1, (64 << 20) // (4 * max(h * w, 16 * 16)))  # bounds the float32 temporaries
    for lo in range(0, g, chunk):
        cells = atlas.cells[lo:lo + chunk].astype(np.float32) / np.float32(255)
        coverage = _resize_area(cells, cfg.font_size) if resize else cells
        # reference: img = coverage * (text - background) + background, then cast to uint8
        # (truncation); for binary cells: exactly text where inked, background elsewhere.
        shaded[lo:lo + chunk] = (coverage * delta + np.float32(cfg.background_brightness)
                                 ).astype(np.uint8)
        cols[lo:lo + chunk] = _kept_columns(coverage, cfg)
    return shaded, cols.astype(np.int32)


def ink_table(shaded, background):
    """Per-glyph ink bits of a shaded atlas [G, h, w], for the renderer's patch ink masks.

    Returns int64 [G, h, ceil(w / 64)]: bit c % 64 of word c // 64 of row r of glyph g is set
    where shaded[g, r, c] != background (a pixel that differs from the background is ink, so
    with text_brightness == background_brightness nothing is).
    """
    g, h, w = shaded.shape
    words = -(-w // 64)
    out = np.empty((g, h, words * 8), np.uint8)
    chunk = max(1, (64 << 20) // (h * words * 64))  # bounds the bool temporaries
    for lo in range(0, g, chunk):
        inked = np.zeros((min(chunk, g - lo), h, words * 64), bool)
        inked[..., :w] = shaded[lo:lo + chunk] != background
        out[lo:lo + chunk] = np.packbits(inked, axis=-1, bitorder="little")
    return out.view("<i8")


def _kept_columns(coverage, cfg):
    """first | width << 16 for each cell: the reference's trim to the ink, or the full cell."""
    g, _, w = coverage.shape
    if cfg.monospace:
        return np.full(g, w << 16, np.int64)
    inked = coverage.max(axis=1) > 0                        # [G, w] columns with ink
    any_ink = inked.any(axis=1)
    first_ink = np.where(any_ink, inked.argmax(axis=1), 0)
    last_ink = np.where(any_ink, w - 1 - inked[:, ::-1].argmax(axis=1), 0)
    first = np.maximum(first_ink - cfg.spacing, 0)
    last = np.maximum(last_ink + cfg.spacing, first + cfg.min_width)
    width = np.clip(np.minimum(last, w) - first, 0, None)  # slicing clamps at the cell
    return first | (width << 16)
