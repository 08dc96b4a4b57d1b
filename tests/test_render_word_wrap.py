"""word_wrap=True, an option beyond the reference: checked against a plain Python greedy
word wrap over the reference's own trimmed letters (clippo/text/render_ref.py)."""
import random

import numpy as np
import pytest
import torch

import clippo
from clippo.text.render_ref import decode, shade, trimmed_letters
from render_corpus import CORPUS, ref_table


def word_wrap_ref(text, table, image_size=224, font_size=16, max_chars=768, lower=True, **kw):
    ids = decode(text, lower, max_chars)
    letters = trimmed_letters(ids, table, font_size, kw.get("monospace", False),
                              kw.get("spacing", 1), kw.get("min_width", 4))
    canvas = np.zeros((image_size, image_size), np.float32)
    rows = -(-image_size // font_size)
    row, x, wrapped = 0, 0, False
    items = list(zip(ids, letters))

    def place(letter):
        y = row * font_size
        h = min(font_size, image_size - y)
        canvas[y:y + h, x:x + letter.shape[1]] = letter[:h]

    i = 0
    while i < len(items) and row < rows:
        cp, letter = items[i]
        if cp == 10:                                   # "\n": a new row, nothing drawn
            row, x, wrapped = row + 1, 0, False
            i += 1
            continue
        if cp == 32:                                   # a space
            if not (x == 0 and wrapped):
                if x + letter.shape[1] > image_size:
                    row, x, wrapped = row + 1, 0, True
                else:
                    place(letter)
                    x += letter.shape[1]
            i += 1
            continue
        j = i
        while j < len(items) and items[j][0] not in (10, 32):
            j += 1
        if x > 0 and x + sum(l.shape[1] for _, l in items[i:j]) > image_size:
            row, x, wrapped = row + 1, 0, True
        for _, letter in items[i:j]:
            if x + letter.shape[1] > image_size:
                row, x, wrapped = row + 1, 0, True
            if row >= rows:
                break
            place(letter)
            x += letter.shape[1]
            wrapped = False
        i = j
    return shade(canvas, kw.get("background_brightness", 127), kw.get("text_brightness", 0))


def random_texts(n, seed):
    rng = random.Random(seed)
    words = ["a", "photo", "of", "CLIPPO", "internationalization", "中文字符", "😀", "ελληνικά",
             "x" * 40, "", "\n", "  "]
    return [" ".join(rng.choice(words) for _ in range(rng.randrange(0, 60))) for _ in range(n)]


@pytest.mark.parametrize("kw", [{}, dict(image_size=64), dict(image_size=100, spacing=3),
                                dict(monospace=True), dict(font_size=12, image_size=96)])
def test_word_wrap_matches_a_python_greedy_wrap(kw):
    table = ref_table()
    texts = list(CORPUS.values())[:20] + random_texts(40, seed=len(kw))
    got = clippo.TextRenderer(word_wrap=True, **kw)(texts)
    for i, t in enumerate(texts):
        want = word_wrap_ref(t, table, **kw)
        assert np.array_equal(got[i].permute(1, 2, 0).numpy(), want), (kw, t[:80])


def test_word_wrap_keeps_words_whole_and_breaks_at_newlines():
    from clippo.text import ops
    from clippo.text.render import encode_texts
    r = clippo.TextRenderer(word_wrap=True)
    text = "representation " * 6 + "\nend"
    glyphs, rows = ops.layout_text(*encode_texts([text]), r._cmap, r._cols, 224, 16, 768, True,
                                   word_wrap=True)
    first_of_row = {}
    for g, xy in glyphs.tolist():
        if xy & 0xFFFF == 0:
            first_of_row[xy >> 16] = g
    # every row begins with a word's first letter: "r" for the six words, "e" for "end"
    r_glyph, e_glyph = int(r._cmap[ord("r")]), int(r._cmap[ord("e")])
    *word_rows, last = sorted(first_of_row)
    assert len(word_rows) >= 2 and all(first_of_row[y] == r_glyph for y in word_rows)
    assert first_of_row[last] == e_glyph
    # "end" follows the "\n" on a row of its own
    ends = [xy >> 16 for g, xy in glyphs.tolist() if xy >> 16 == last]
    assert len(ends) == 3
    assert not torch.equal(r([text]), clippo.TextRenderer()([text]))


def test_word_wrap_is_off_by_default_and_round_trips_in_configs():
    assert clippo.RenderConfig().word_wrap is False
    cfg = clippo.RenderConfig(word_wrap=True)
    assert clippo.RenderConfig(**cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="word_wrap"):
        clippo.RenderConfig(word_wrap=1)
