"""Shared test corpus and oracle helpers for the text-renderer tests.

The oracle is `clippo.text.render_ref` (a slow, independent numpy port of big_vision's
`render_unifont`) loaded from the same shipped Unifont files; nothing here calls the fast
renderer's layout code.
"""
import functools
import random

import numpy as np
import pytest

from clippo.text import atlas as atlas_lib
from clippo.text import render_ref

DEJAVU = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"

# Named strings covering the scripts and the edge cases of the layout.
CORPUS = {
    "ascii_pangram": "The quick brown fox jumps over the lazy dog. 0123456789",
    "ascii_all_printable": "".join(chr(c) for c in range(0x20, 0x7F)),
    "latin_accents": "Éléphant À Ça ÉCOLE École über ÜBER Straße ẞ ÑANDÚ ñandú Œuvre ÿ Ÿ ĳ Ĳ",
    "greek": "Η γρήγορη καφέ αλεπού ΠΗΔΆΕΙ πάνω από τον τεμπέλη σκύλο",
    "cyrillic": "Съешь же ещё этих мягких французских булок, да выпей ЧАЮ",
    "cjk": "中文字体渲染测试：我能吞下玻璃而不伤身体。日本語のテキスト、한국어 텍스트",
    "arabic": "أنا قادر على أكل الزجاج و هذا لا يؤلمني",
    "hebrew": "אני יכול לאכול זכוכית וזה לא מזיק לי",
    "devanagari": "मैं काँच खा सकता हूँ और मुझे उससे कोई चोट नहीं पहुंचती",
    "thai": "ฉันกินกระจกได้ แต่มันไม่ทำให้ฉันเจ็บ",
    "combining": "e\u0301 a\u0308 n\u0303 Z\u0327\u0301",
    "emoji_astral": "😀 🎉 👍🏽 👨\u200d👩\u200d👧 🇩🇪 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𐍈 🀄 \U0001F9FF",
    "controls": "line1\nline2\tTab\x00nul\r\x1b[0m\x7f\x80\x85\x9f end",
    "specials": "\ufeff\ufffd\uffff\U0010FFFF\U000E0001\ue000\U000F0000 \u2028\u2029",
    "empty": "",
    "one_letter": "W",
    "whitespace_only": "   \t  \u3000 \u00a0  \u2003 ",
    "narrow_only": "il1|.,;:'!" * 20,
    "wide_only": "中文字体渲染测试全角字符" * 12,
    "mixed_wide_narrow": "a中b文c字 d体e渲f染 " * 15,
    "long_mixed": ("CLIPPO renders text as pixels. 文字を画像として描く。 Текст! " * 40),
    "long_ascii_2000": ("lorem ipsum dolor sit amet " * 80)[:2000],
}

LONG = ("a photo of a cat sitting on a mat. " * 40)[:1000]  # well over 768 characters

# Code point pools for random strings: (lo, hi) inclusive ranges, drawn by weight.
POOLS = {
    "ascii": [(0x20, 0x7E)],
    "latin": [(0xC0, 0x17F)],
    "greek": [(0x391, 0x3A9), (0x3B1, 0x3C9)],
    "cyrillic": [(0x410, 0x44F)],
    "cjk": [(0x4E00, 0x9FFF), (0x3040, 0x30FF), (0xAC00, 0xD7A3)],
    "arabic": [(0x621, 0x64A)],
    "devanagari": [(0x900, 0x97F)],
    "thai": [(0xE01, 0xE5B)],
    "emoji": [(0x1F300, 0x1F64F), (0x1F900, 0x1F9FF), (0x1D400, 0x1D7FF)],
    "controls": [(0x00, 0x1F), (0x7F, 0x9F)],
    "space": [(0x20, 0x20)],
}
WEIGHTS = {"ascii": 8, "latin": 2, "greek": 1, "cyrillic": 1, "cjk": 2, "arabic": 1,
           "devanagari": 1, "thai": 1, "emoji": 1, "controls": 1, "space": 3}


def random_strings(n, seed, max_len=300, scripts=None):
    """n seeded random strings mixing the POOLS scripts; lengths 0..max_len (skewed short)."""
    rng = random.Random(seed)
    names = list(scripts or POOLS)
    weights = [WEIGHTS[k] for k in names]
    out = []
    for _ in range(n):
        length = min(max_len, int(rng.expovariate(1.0 / (max_len / 3)))) if max_len else 0
        chars = []
        for _ in range(length):
            lo, hi = rng.choice(POOLS[rng.choices(names, weights)[0]])
            chars.append(chr(rng.randint(lo, hi)))
        out.append("".join(chars))
    return out


@functools.lru_cache(maxsize=1)
def ref_table():
    """The oracle's glyph table from the shipped default Unifont files."""
    return render_ref.load_unifont_table(atlas_lib.DEFAULT_FONT, atlas_lib.DEFAULT_UPPER_FONT)


def ref_image(text, **params):
    """Oracle rendering, uint8 [S, S, 3]."""
    return render_ref.render_unifont_ref(text, ref_table(), **params)


def as_hwc(images):
    """clippo output [B, C, S, S] -> numpy [B, S, S, C]."""
    return images.permute(0, 2, 3, 1).numpy()


def assert_images_equal(got, texts, want, what=""):
    """got, want: numpy [B, S, S, C]; fails with the first differing string named."""
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert got.dtype == want.dtype == np.uint8
    for i, text in enumerate(texts):
        if not np.array_equal(got[i], want[i]):
            diff = np.argwhere(got[i] != want[i])
            pytest.fail(f"{what}: image {i} differs from the oracle in {len(diff)} values, "
                        f"first at (y, x, c) = {tuple(diff[0])}; text = {text[:80]!r}"
                        f"{'...' if len(text) > 80 else ''} ({len(text)} chars)")


def check_against_ref(renderer, texts, **params):
    """Render `texts` with `renderer` and compare every image to the oracle with `params`."""
    got = as_hwc(renderer(texts))
    want = np.stack([ref_image(t, **params) for t in texts]) if texts else \
        np.zeros((0,) + got.shape[1:], np.uint8)
    assert_images_equal(got, texts, want, what=repr(params))
