"""A small numpy port of big_vision's `render_unifont` op: the golden oracle for tests.

Written from the reference algorithm (big_vision/pp/proj/clippo/pp_ops.py), one string at a
time, with no code shared with the fast renderer: its own .hex reader, its own glyph
unpacking, its own area resize, trimming and wrapping. Slow on purpose; clarity first.
"""
import gzip

import numpy as np


def load_unifont_table(*paths):
    """Code point -> 32 packed bytes (16 rows x 16 bits), as the reference's bit_embedding.

    8-px glyphs (32 hex digits) fill the left byte of each row; 16-px glyphs both bytes.
    Returns a dict {code point: bytes(32)}; missing code points are empty cells.
    """
    left_bytes = [i for i in range(32) if i % 4 in (0, 2)]  # reference's colpattern[32]
    table = {}
    for path in paths:
        if path is None:
            continue
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rt") as f:
            for line in f:
                key, digits = line.strip().split(":")
                cell = bytearray(32)
                data = bytes.fromhex(digits)
                if len(digits) == 64:
                    cell[:] = data
                else:
                    for j, b in zip(left_bytes, data):  # left byte of each row
                        cell[j] = b
                table[int(key, 16)] = bytes(cell)
    return table


def _letter_bits(cell32):
    """32 packed bytes -> 16x16 uint8 0/1, MSB first, as the reference's bit twiddling."""
    rows = np.frombuffer(cell32, np.uint8)
    return np.unpackbits(rows).reshape(16, 16)


def _resize_area_one(letter, size):
    """TensorFlow ResizeArea (align_corners=False) of one float32 16x16 cell, scalar loops."""
    f = np.float32
    in_h, in_w = letter.shape
    hs = f(in_h) / f(size)
    ws = f(in_w) / f(size)
    scale = f(1.0 / float(f(hs * ws)))

    def weight(i, lo, hi, s):
        if i < lo:
            return s if i + 1 > hi else f(f(i + 1) - lo)
        return f(hi - f(i)) if i + 1 > hi else f(1.0)

    out = np.zeros((size, size), np.float32)
    for y in range(size):
        y0, y1 = f(y) * hs, f(y + 1) * hs
        for x in range(size):
            x0, x1 = f(x) * ws, f(x + 1) * ws
            xs, xe = int(np.floor(x0)), int(np.ceil(x1))
            acc = f(0)
            for iy in range(int(np.floor(y0)), int(np.ceil(y1))):
                row = letter[min(in_h - 1, max(0, iy))]
                px = lambda i: row[min(in_w - 1, max(0, i))]  # noqa: E731
                s = f(px(xs) * weight(xs, x0, x1, ws))
                if xs + 1 != xe:
                    for ix in range(xs + 1, xe - 1):
                        s = f(s + px(ix))
                    s = f(s + f(px(xe - 1) * weight(xe - 1, x0, x1, ws)))
                acc = f(acc + f(s * weight(iy, y0, y1, hs)))
            out[y, x] = f(acc * scale)
    return out


def decode(text, lower=True, max_chars=768):
    """Code points as the reference sees them: ASCII-lowered bytes, UTF-8 with U+FFFD."""
    if isinstance(text, str):
        # a Python str may hold lone surrogates; clippo documents one U+FFFD for each
        data = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c
                       for c in text).encode("utf-8")
    else:
        data = bytes(text)
    if lower:
        data = bytes(b + 32 if 65 <= b <= 90 else b for b in data)
    ids = [ord(c) for c in data.decode("utf-8", "replace")]
    return ids[:max_chars] if max_chars else ids


def trimmed_letters(ids, table, font_size=16, monospace=False, spacing=1, min_width=4):
    """The reference's letters for code points `ids`: float32 coverage [font_size, w] each,
    resized when font_size != 16, then trimmed to their ink (unless monospace)."""
    empty = bytes(32)
    letters = [_letter_bits(table.get(cp, empty)) for cp in ids]
    if font_size != 16:
        letters = [_resize_area_one(letter.astype(np.float32), font_size) for letter in letters]
    else:
        letters = [letter.astype(np.float32) for letter in letters]
    if monospace:
        return letters
    trimmed = []
    for letter in letters:
        v = letter.max(axis=0)
        nz = np.flatnonzero(v)
        first, last = (int(nz[0]), int(nz[-1])) if len(nz) else (0, 0)
        first = max(first - spacing, 0)
        last = max(last + spacing, first + min_width)
        trimmed.append(letter[:, first:last])
    return trimmed


def shade(canvas, background_brightness=127, text_brightness=0):
    """Coverage [H, W] -> uint8 [H, W, 3], the reference's arithmetic and cast."""
    img = canvas * np.float32(text_brightness - background_brightness)
    img = img + np.float32(background_brightness)
    gray = img.astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def render_unifont_ref(text, table, image_size=224, font_size=16, max_chars=768,
                       background_brightness=127, text_brightness=0, lower=True,
                       monospace=False, spacing=1, min_width=4):
    """Render one string; returns uint8 [image_size, image_size, 3] like the reference."""
    ids = decode(text, lower, max_chars)
    trimmed = trimmed_letters(ids, table, font_size, monospace, spacing, min_width)
    canvas = np.zeros((image_size, image_size), np.float32)  # coverage, 0 = background
    if trimmed:
        widths = np.array([t.shape[1] for t in trimmed], np.int64)
        cum = np.cumsum(widths).astype(np.float32)
        div = np.float32(image_size - widths.max())
        rows = np.floor(cum / div).astype(np.int64)
        x_in_row = {}
        for letter, r in zip(trimmed, rows):
            x = x_in_row.get(r, 0)
            x_in_row[r] = x + letter.shape[1]
            y = int(r) * font_size
            if y >= image_size:
                break
            h = min(font_size, image_size - y)
            canvas[y:y + h, x:x + letter.shape[1]] = letter[:h]
    return shade(canvas, background_brightness, text_brightness)
