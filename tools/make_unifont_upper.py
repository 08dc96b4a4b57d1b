"""Regenerate clippo/fonts/unifont_upper-15.0.01.hex.gz from Debian's unifont_upper.otf.

Debian ships the BMP of GNU Unifont 15.0.01 as a .hex file (package `unifont`) but the
planes above the BMP only as OpenType (package `fonts-unifont`). FreeType renders the
Unifont OTF at 16 px exactly like the .hex bitmaps (checked over the BMP: every spacing
glyph matches), so we rasterise the upper planes once and store them in the reference's
.hex format.

Usage (needs freetype-py):
    apt-get download fonts-unifont && dpkg-deb -x fonts-unifont_*.deb x
    python tools/make_unifont_upper.py x/usr/share/fonts/opentype/unifont/unifont_upper.otf
"""
import gzip
import sys
from pathlib import Path

import freetype

OUT = Path(__file__).resolve().parents[1] / "clippo" / "fonts" / "unifont_upper-15.0.01.hex.gz"


def cell_bits(face, glyph_index):
    """16x16 list of 0/1 for one glyph, placed as in the .hex cell."""
    face.load_glyph(glyph_index, freetype.FT_LOAD_RENDER | freetype.FT_LOAD_TARGET_MONO)
    g = face.glyph
    bm = g.bitmap
    ascender = face.size.ascender >> 6
    ink = [(ascender - g.bitmap_top + r, g.bitmap_left + c)
           for r in range(bm.rows) for c in range(bm.width)
           if bm.buffer[r * bm.pitch + c // 8] >> (7 - c % 8) & 1]
    # Zero-advance (combining) glyphs hang left of the pen; the .hex draws them inside
    # their own cell, shifted right by 8 or 16 columns.
    for shift in (0, 8, 16):
        if all(0 <= y < 16 and 0 <= x + shift < 16 for y, x in ink):
            cell = [[0] * 16 for _ in range(16)]
            for y, x in ink:
                cell[y][x + shift] = 1
            return g.advance.x >> 6, cell
    return None


def to_hex(advance, cell):
    width = 16 if advance > 8 or any(row[8:].count(1) for row in cell) else 8
    return "".join(f"{int(''.join(map(str, row[:width])), 2):0{width // 4}X}" for row in cell)


def main(otf_path):
    face = freetype.Face(otf_path)
    face.set_pixel_sizes(0, 16)
    lines = []
    for code_point, glyph_index in face.get_chars():
        if code_point < 0x10000 or glyph_index == 0:
            continue
        got = cell_bits(face, glyph_index)
        if got is None:
            print(f"skipping U+{code_point:06X}: ink outside the 16x16 cell", file=sys.stderr)
            continue
        lines.append(f"{code_point:06X}:{to_hex(*got)}\n")
    with gzip.open(OUT, "wt", compresslevel=9) as f:
        f.writelines(lines)
    print(f"wrote {len(lines)} glyphs to {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
