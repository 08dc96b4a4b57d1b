"""Patch ink masks (TextRenderer(..., ink_patch_size=p)): computed from the layout and a
per-glyph ink table, they must equal a scan of the rendered pixels (a patch is ink when any of
its pixels differs from the background) for every string of the renderer's tests, every patch
size that divides the image, on every path (one-shot, out=, host layout for CUDA, CUDA)."""
import os

import numpy as np
import pytest
import torch

import clippo
from clippo.text import ops
from clippo.text.render import encode_texts
from render_corpus import CORPUS, DEJAVU, LONG, random_strings

HAS_DEJAVU = os.path.exists(DEJAVU)

# Strings whose glyphs have vertical gaps (the cell is not the ink), line breaks and spaces
# for word_wrap, wide rows and strings cut by max_chars or the bottom of the image.
EXTRA = ['":;', ':' * 50, '"' * 30 + "\n" + "'" * 30, "..  ,,  ''  ``", "ab cd\nef  gh\n\n ij",
         "-_=~^", "中 " * 120, "x" * 3000, "\n" * 30 + "late", " " * 40]


def corpus_texts():
    return (list(CORPUS.values()) + [LONG] + EXTRA
            + random_strings(40, seed=11, max_len=500)
            + random_strings(16, seed=12, max_len=2000, scripts=["ascii", "space", "controls"]))


def divisors(n):
    return [p for p in range(1, n + 1) if n % p == 0]


def pixel_scan(images, background, p):
    """The definition: patch (i, j) of an image holds a pixel != background."""
    grey = images[:, 0] if images.dim() == 4 else images
    b, s, _ = grey.shape
    g = s // p
    return (grey != background).reshape(b, g, p, g, p).any(4).any(2).reshape(b, g * g)


def check_all_patch_sizes(r, texts):
    s, bg = r.config.image_size, r.config.background_brightness
    plain = r(texts)
    for p in divisors(s):
        images, ink = r(texts, ink_patch_size=p)
        assert torch.equal(images, plain), f"p={p}: the images must not change"
        assert ink.dtype == torch.bool and ink.shape == (len(texts), (s // p) ** 2)
        want = pixel_scan(images, bg, p)
        if not torch.equal(ink, want):
            i = int((ink != want).any(1).nonzero()[0])
            pytest.fail(f"p={p}: text {i} {texts[i][:40]!r}: layout mask {ink[i].sum()} "
                        f"patches, pixel scan {want[i].sum()}")
    return plain


UNIFONT = [
    dict(),
    dict(image_size=100),
    dict(monospace=True, image_size=64),
    dict(font_size=12, background_brightness=3, text_brightness=250),
    dict(spacing=0, min_width=0, max_chars=None, image_size=384),
    dict(image_size=17),
    dict(max_chars=10, image_size=96),
    dict(word_wrap=True),
    dict(word_wrap=True, image_size=60, spacing=3, min_width=8),
    dict(lower=False, background_brightness=255, text_brightness=0),
]


def ids(params):
    return ",".join(f"{k}={v}" for k, v in params.items()) or "defaults"


@pytest.mark.parametrize("params", UNIFONT, ids=ids)
def test_mask_equals_pixel_scan(params):
    check_all_patch_sizes(clippo.TextRenderer(**params), corpus_texts())


def test_float_and_one_channel_renderers():
    """Float images: the mask is that of the uint8 render they are computed from."""
    r = clippo.TextRenderer(channels=1, dtype=torch.float16)
    texts = corpus_texts()
    images, ink = r(texts, ink_patch_size=16)
    assert images.dtype == torch.float16 and images.shape[1] == 1
    assert torch.equal(ink, pixel_scan(clippo.TextRenderer()(texts), 127, 16))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """FreeType atlas caches of this module go to a temporary folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPPO_CACHE_DIR", str(tmp_path_factory.mktemp("clippo-cache")))
        yield


FREETYPE = [
    dict(antialias=True),
    dict(font_size=12, antialias=True, background_brightness=0, text_brightness=255),
    dict(),
    # cells 80 columns wide: two 64-bit words per ink row
    dict(font_size=40, antialias=True, image_size=240),
]


@pytest.mark.skipif(not HAS_DEJAVU, reason=f"{DEJAVU} missing")
@pytest.mark.parametrize("params", FREETYPE, ids=ids)
def test_freetype_mask_equals_pixel_scan(params, cache_dir):
    r = clippo.TextRenderer(font=DEJAVU, **params)
    texts = corpus_texts()
    if params.get("font_size") == 40:
        assert r._ink_table().shape[2] == 2
        texts = texts[:30]
    images = check_all_patch_sizes(r, texts)
    if params.get("antialias"):  # faint coverage rounds to the background: not ink
        assert len(images.unique()) > 2


def test_text_brightness_equal_to_background_has_no_ink():
    r = clippo.TextRenderer(background_brightness=90, text_brightness=90)
    images, ink = r(corpus_texts(), ink_patch_size=16)
    assert (images == 90).all() and not ink.any()


def test_hand_computed_cell_gaps():
    """Unifont '"' (hex 00002222222200000000000000000000) inks rows 2-5 at cell columns 2 and
    6, ':' (00000000000018180000001818000000) rows 6-7 and 11-12 at columns 3-4; trimmed with
    spacing 1 they start at cell columns 1 and 2, drawn at x = 0. Patches inside a glyph's
    cell can hold no ink."""
    r = clippo.TextRenderer(image_size=32)
    _, quote = r(['"'], ink_patch_size=4)           # rows 2-5 -> patch rows 0, 1; columns 1, 5
    assert quote[0].nonzero()[:, 0].tolist() == [0 * 8 + 0, 0 * 8 + 1, 1 * 8 + 0, 1 * 8 + 1]
    _, colon = r([":"], ink_patch_size=2)           # rows 6, 7, 11, 12 -> patch rows 3, 5, 6
    assert colon[0].nonzero()[:, 0].tolist() == [3 * 16, 3 * 16 + 1, 5 * 16, 5 * 16 + 1,
                                                  6 * 16, 6 * 16 + 1]
    _, one = r([""], ink_patch_size=32)
    assert one.shape == (1, 1) and not one.any()


def test_out_buffer_and_render_function():
    r = clippo.TextRenderer()
    texts = corpus_texts()
    images, ink = r(texts, ink_patch_size=14)
    buf = torch.full((len(texts), 224, 224), 5, dtype=torch.uint8)
    got, got_ink = r(texts, out=buf, ink_patch_size=14)
    assert got.data_ptr() == buf.data_ptr() and torch.equal(got, images)
    assert torch.equal(got_ink, ink)
    more = random_strings(len(texts), seed=3, max_len=300)   # the buffer reused
    assert torch.equal(r(more, out=buf, ink_patch_size=14)[1], r(more, ink_patch_size=14)[1])
    f_images, f_ink = clippo.render(texts, ink_patch_size=14)
    assert torch.equal(f_images, images) and torch.equal(f_ink, ink)
    assert isinstance(clippo.render(texts[:2]), torch.Tensor)


def host_layout_mask(r, texts, p):
    c = r.config
    text, offsets = encode_texts(texts, c.max_chars)
    glyphs, rows = ops.layout_text(text, offsets, r._cmap, r._cols, c.image_size, r.cell_height,
                                   c.max_chars or 0, c.lower, word_wrap=c.word_wrap)
    return ops.patch_ink(glyphs, rows, r._cols, r._ink_table(), c.image_size, p)


@pytest.mark.parametrize("params", [dict(), dict(image_size=100, word_wrap=True),
                                    dict(font_size=12, max_chars=30)])
def test_host_layout_mask_equals_the_render_mask(params):
    """The CUDA renderer's mask comes from the host layout (patch_ink): the same bits."""
    r = clippo.TextRenderer(**params)
    texts = corpus_texts()
    for p in divisors(r.config.image_size):
        assert torch.equal(host_layout_mask(r, texts, p), r(texts, ink_patch_size=p)[1]), p


def test_patch_ink_follows_rasterize_on_odd_layouts():
    """Layouts not from layout_text: items drawn at their band whatever their y, bad glyph ids
    as glyph 0, items past the right edge clipped; the mask follows what rasterize draws."""
    r = clippo.TextRenderer(image_size=64)
    gl = int(r.atlas.cmap[ord("w")])
    glyphs = torch.tensor([[gl, 60 | 48 << 16], [10 ** 6, 5], [gl, 100], [gl, 20]],
                          dtype=torch.int32)
    rows = torch.tensor([0, 3, 3, 3, 4], dtype=torch.int32)
    images = ops.rasterize(glyphs, rows, r._cols, r._shaded, 64, 127)
    for p in divisors(64):
        ink = ops.patch_ink(glyphs, rows, r._cols, r._ink_table(), 64, p)
        assert torch.equal(ink, pixel_scan(images, 127, p)), p


@pytest.mark.parametrize("bad", [0, 3, 225, -16, 1.5, True, "16", 16.0])
def test_bad_patch_size_is_a_value_error(bad):
    r = clippo.TextRenderer()
    with pytest.raises(ValueError, match="ink_patch_size"):
        r(["a"], ink_patch_size=bad)
    with pytest.raises(ValueError, match="ink_patch_size"):
        clippo.render(["a"], ink_patch_size=bad)


def test_numpy_int_patch_size():
    images, ink = clippo.TextRenderer()(["abc"], ink_patch_size=np.int64(16))
    assert ink.shape == (1, 196)


def test_op_misuse_is_a_runtime_error():
    r = clippo.TextRenderer(image_size=64)
    text, off = encode_texts(["hello"])
    ink_rows = r._ink_table()
    args = (text, off, r._cmap, r._cols, r._shaded)
    with pytest.raises(RuntimeError, match="ink_rows"):
        ops.render_text_ink(*args, ink_rows[:, :3], 64, 768, True, 127, 16)
    with pytest.raises(RuntimeError, match="ink_rows"):
        ops.render_text_ink(*args, ink_rows.int(), 64, 768, True, 127, 16)
    with pytest.raises(RuntimeError, match="divide"):
        ops.render_text_ink(*args, ink_rows, 64, 768, True, 127, 5)
    out = torch.empty(1, 64, 64, dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="ink"):
        ops.render_text_ink_into(*args, ink_rows, 64, 768, True, 127, 16, out,
                                 torch.empty(1, 15, dtype=torch.bool))
    g, rows = ops.layout_text(text, off, r._cmap, r._cols, 64, 16, 768, True)
    with pytest.raises(RuntimeError, match="row_offsets"):
        ops.patch_ink(g, rows[:-1], r._cols, ink_rows, 64, 16)
    with pytest.raises(RuntimeError, match="divide"):
        ops.patch_ink(g, rows, r._cols, ink_rows, 64, 0)


def op_samples():
    r = clippo.TextRenderer(image_size=64)
    cm, cols, sh, ink_rows = r._cmap, r._cols, r._shaded, r._ink_table()
    samples = []
    for texts in (["hello", "中文 😀 Ünï", "", "x" * 300], []):
        text, off = encode_texts(texts)
        g, rows = ops.layout_text(text, off, cm, cols, 64, 16, 768, True)
        out = torch.empty(len(texts), 64, 64, dtype=torch.uint8)
        ink = torch.empty(len(texts), 16, dtype=torch.bool)
        samples.append({
            "render_text_ink": (text, off, cm, cols, sh, ink_rows, 64, 768, True, 127, 16),
            "render_text_ink_into": (text, off, cm, cols, sh, ink_rows, 64, 768, True, 127, 16,
                                     out, ink),
            "patch_ink": (g, rows, cols, ink_rows, 64, 16),
        })
    return samples


@pytest.mark.parametrize("name", ["render_text_ink", "render_text_ink_into", "patch_ink"])
def test_opcheck(name):
    op = getattr(torch.ops.clippo, name).default
    for sample in op_samples():
        torch.library.opcheck(op, sample[name])


def test_compiled_function_sees_the_op():
    r = clippo.TextRenderer(image_size=64)
    text, off = encode_texts(["hello world", "中文"])
    args = (text, off, r._cmap, r._cols, r._shaded, r._ink_table())

    def count(*a):
        images, ink = ops.render_text_ink(*a, 64, 768, True, 127, 16)
        return ink.sum(1), images

    got = torch.compile(count, backend="eager", fullgraph=True)(*args)
    want = count(*args)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("params", [dict(), dict(image_size=100, word_wrap=True)])
def test_cuda_mask_equals_cpu(params):
    texts = corpus_texts()
    gpu = clippo.TextRenderer(device="cuda", **params)
    cpu = clippo.TextRenderer(**params)
    for p in divisors(cpu.config.image_size):
        g_images, g_ink = gpu(texts, ink_patch_size=p)
        c_images, c_ink = cpu(texts, ink_patch_size=p)
        assert g_ink.device == g_images.device and g_ink.device.type == "cuda"
        assert torch.equal(g_ink.cpu(), c_ink), p
        assert torch.equal(pixel_scan(g_images, cpu.config.background_brightness, p).cpu(), c_ink)
