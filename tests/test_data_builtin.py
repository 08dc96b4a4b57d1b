"""Built-in data: deterministic, held-out combinations never in training, pictures that show
what the captions say (checked on the pixels, not on the generator's own bookkeeping)."""
import unicodedata

import numpy as np
import pytest
import torch

from clippo.data import builtin
from clippo.data.builtin import (COLORS, LANGUAGES, POSITIONS, SHAPES, BuiltinImageText,
                                 BuiltinTextPairs, caption, class_name, class_prompts, combos,
                                 draw_scene)


def test_splits_partition_the_combinations():
    train, heldout, everything = combos("train"), combos("heldout"), combos("all")
    assert len(everything) == len(COLORS) * len(POSITIONS) == 72
    assert set(train).isdisjoint(heldout) and set(train) | set(heldout) == set(everything)
    assert len(heldout) == 16
    # neither attribute alone names a held-out pair, and each is trained on
    for colour in COLORS:
        assert sum(c == colour for c, _ in heldout) == 2
        assert sum(c == colour for c, _ in train) == 7
    for position in POSITIONS:
        assert 1 <= sum(p == position for _, p in heldout) <= 2
        assert sum(p == position for _, p in train) >= 6
    with pytest.raises(ValueError, match="split"):
        combos("test")


def test_training_split_never_shows_a_heldout_combination():
    ds = BuiltinImageText("train", 2000, image_size=32)
    heldout = set(combos("heldout"))
    metas = [ds.meta(i) for i in range(len(ds))]
    seen = {(m["color"], m["position"]) for m in metas}
    assert seen.isdisjoint(heldout)
    assert seen == set(combos("train"))  # and it covers all of them
    assert {m["shape"] for m in metas} == set(SHAPES)  # shapes drawn independently
    ho = BuiltinImageText("heldout", 500, image_size=32)
    assert {(m["color"], m["position"]) for m in map(ho.meta, range(500))} == heldout


def test_items_are_deterministic_by_seed_and_index():
    a, b = BuiltinImageText(num_samples=8, image_size=32), BuiltinImageText(num_samples=8,
                                                                             image_size=32)
    order = [5, 1, 7, 1]
    for i in order:  # random access in any order gives the same item
        xa, ta = a[i]
        xb, tb = b[i]
        assert torch.equal(xa, xb) and ta == tb
    c = BuiltinImageText(num_samples=8, image_size=32, seed=1)
    assert any(not torch.equal(a[i][0], c[i][0]) for i in range(8))
    x, t = a[-1]
    assert torch.equal(x, a[7][0]) and t == a[7][1]
    with pytest.raises(IndexError):
        a.meta(8)


def test_items_are_uint8_chw_at_the_asked_size():
    x, text = BuiltinImageText(num_samples=1, image_size=48)[0]
    assert x.dtype == torch.uint8 and x.shape == (3, 48, 48)
    assert isinstance(text, str) and text
    with pytest.raises(ValueError):
        draw_scene("red", "circle", "left", np.random.default_rng(0), image_size=8)


def _hue_pixels(image, rgb, tol=40):
    d = np.abs(image.astype(int) - np.array(rgb)).max(axis=-1)
    return d <= tol


@pytest.mark.parametrize("position", POSITIONS)
def test_scene_shows_the_colour_at_the_position(position):
    """The object's pixels have the caption's colour and their centre lies in the named cell
    of a 3 x 3 grid."""
    S = 96
    row, col = divmod(POSITIONS.index(position), 3)
    for colour in ("red", "green", "blue", "yellow"):
        img = draw_scene(colour, "square", position, np.random.default_rng(3), image_size=S)
        mask = _hue_pixels(img, COLORS[colour])
        assert mask.sum() > 0.015 * S * S, (colour, position)
        ys, xs = np.nonzero(mask)
        assert int(xs.mean() * 3 // S) == col and int(ys.mean() * 3 // S) == row, (
            colour, position, xs.mean(), ys.mean())


def test_shapes_differ_in_area_fill():
    """Each shape covers a different share of its bounding box (a ring has a hole, a star
    less than a square), so shapes are told apart by the pixels, not just by the label."""
    S, fills = 160, {}
    for shape in SHAPES:
        ratios = []
        for seed in range(4):
            img = draw_scene("red", shape, "middle", np.random.default_rng(seed), image_size=S)
            ys, xs = np.nonzero(_hue_pixels(img, COLORS["red"]))
            box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
            ratios.append(len(ys) / box)
        fills[shape] = np.mean(ratios)
    assert fills["circle"] == pytest.approx(np.pi / 4, abs=0.08)
    assert fills["triangle"] < 0.6 and fills["star"] < 0.5 and fills["ring"] < 0.7
    assert fills["square"] > 0.45  # a rotated square still fills half its box
    assert len({round(v, 2) for v in fills.values()}) == len(SHAPES)


def _scripts(text):
    return {unicodedata.name(ch).split()[0] for ch in text if ch.isalpha()}


def test_captions_in_three_scripts():
    assert caption("red", "circle", "left", "en") == "a red circle on the left"
    assert caption("red", "circle", None, "de") == "ein Kreis in Rot"
    assert class_name("blue", "top") == "blue top"
    assert class_prompts("blue", "top", "en") == [f"a blue {s} at the top" for s in SHAPES]
    assert caption("red", "circle", "bottom right", "ru") == "красный круг снизу справа"
    assert _scripts(caption("green", "ring", "top", "en")) == {"LATIN"}
    assert _scripts(caption("green", "ring", "top", "ru")) == {"CYRILLIC"}
    assert _scripts(caption("green", "ring", "top", "zh")) == {"CJK"}
    prompts = {t for c, p in combos("all") for lang in LANGUAGES for t in class_prompts(c, p, lang)}
    assert len(prompts) == 72 * len(SHAPES) * 4  # all distinct, within and across languages
    with pytest.raises(ValueError, match="language"):
        caption("red", "circle", lang="fr")


def test_languages_and_positions_are_mixed():
    ds = BuiltinImageText(num_samples=400, image_size=16)
    metas = [ds.meta(i) for i in range(400)]
    assert {m["lang"] for m in metas} == set(LANGUAGES)
    assert all(m["named"] for m in metas)  # position_prob 1 by default
    some = BuiltinImageText(num_samples=400, image_size=16, position_prob=0.5)
    assert 0.4 < np.mean([some.meta(i)["named"] for i in range(400)]) < 0.6
    only_en = BuiltinImageText(num_samples=50, image_size=16, languages=["en"])
    assert all(_scripts(only_en.caption(i)) == {"LATIN"} for i in range(50))


@pytest.mark.parametrize("mix", [None, {"en": 1, "zh": 3}, {"de": 2, "ru": 0, "zh": 1},
                                 ("en", "ru")])
def test_language_mix_is_drawn_at_its_weights(mix):
    n = 4000
    ds = BuiltinImageText(num_samples=n, image_size=16, languages=mix)
    want = builtin.LANGUAGE_MIX if mix is None else (
        mix if isinstance(mix, dict) else {lang: 1 for lang in mix})
    total = sum(want.values())
    langs = [ds.meta(i)["lang"] for i in range(n)]
    for lang, w in want.items():
        p = w / total
        # within 4.5 binomial standard deviations of its share; a weight 0 never drawn
        assert abs(langs.count(lang) / n - p) <= 4.5 * np.sqrt(p * (1 - p) / n) + 1e-12, lang
    assert set(langs) <= set(want)


@pytest.mark.parametrize("bad", [{}, [], {"en": -1, "de": 2}, {"en": 0}, {"fr": 1}])
def test_bad_language_mix_is_refused(bad):
    with pytest.raises(ValueError, match="language"):
        BuiltinImageText(num_samples=4, image_size=16, languages=bad)


def test_text_pairs_share_their_object():
    pairs = BuiltinTextPairs(200, seed=0)
    shape_words = {lang: set(builtin._WORDS[lang]["shape"].values()) for lang in LANGUAGES}
    for i in range(200):
        a, b = pairs[i]
        assert a and b and a != b
        shared = [w for words in shape_words.values() for w in words if w in a and w in b]
        assert shared, (a, b)
    assert pairs[3] == BuiltinTextPairs(200, seed=0)[3]
    assert pairs[3] != BuiltinTextPairs(200, seed=1)[3] or pairs[4] != BuiltinTextPairs(
        200, seed=1)[4]
