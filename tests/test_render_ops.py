"""The rasterizer's torch ops: the two-stage path (layout + rasterize) against the one-shot
render, out= buffers, CPU == CUDA, torch.library.opcheck, and misuse with malformed tensors
(a RuntimeError, never a crash)."""
import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import clippo
from clippo.text import ops
from clippo.text.render import encode_texts
from render_corpus import CORPUS, LONG, random_strings

S = 224


def corpus_texts():
    return list(CORPUS.values()) + [LONG] + random_strings(60, seed=11, max_len=500)


def tables(r):
    return r._cmap, r._cols, r._shaded


def two_stage(r, texts):
    c = r.config
    text, offsets = encode_texts(texts, c.max_chars)
    glyphs, rows = ops.layout_text(text, offsets, r._cmap, r._cols, c.image_size, r.cell_height,
                                   c.max_chars or 0, c.lower)
    return ops.rasterize(glyphs, rows, r._cols, r._shaded, c.image_size,
                         c.background_brightness)


def one_shot(r, texts):
    c = r.config
    text, offsets = encode_texts(texts, c.max_chars)
    return ops.render_text(text, offsets, r._cmap, r._cols, r._shaded, c.image_size,
                           c.max_chars or 0, c.lower, c.background_brightness)


PARAMS = [dict(), dict(image_size=100), dict(monospace=True, image_size=64),
          dict(font_size=12, background_brightness=3, text_brightness=250),
          dict(spacing=0, min_width=0, max_chars=None, image_size=384), dict(image_size=17)]


@pytest.fixture(scope="module")
def r():
    return clippo.TextRenderer()


# -- two-stage == one-shot ------------------------------------------------------------------

@pytest.mark.parametrize("params", PARAMS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_layout_then_rasterize_equals_render_text(params):
    r = clippo.TextRenderer(**params)
    texts = corpus_texts()
    a, b = two_stage(r, texts), one_shot(r, texts)
    assert a.shape == b.shape == (len(texts), r.config.image_size, r.config.image_size)
    assert torch.equal(a, b)
    assert torch.equal(b, r(texts)[:, 0])


def test_layout_structure(r):
    # "ll" + "中": 'l' keeps columns [1, 7) (6 px), 中 [1, 13); all on row 0
    texts = ["ll中", "", "l" * 40]
    text, offsets = encode_texts(texts)
    glyphs, rows = ops.layout_text(text, offsets, r._cmap, r._cols, S, 16, 768, True)
    nrows = 14
    assert glyphs.dtype == rows.dtype == torch.int32
    assert rows.shape == (3 * nrows + 1,) and glyphs.shape == (3 + 0 + 40, 2)
    gl, gz = int(r.atlas.cmap[ord("l")]), int(r.atlas.cmap[0x4E2D])
    assert glyphs[:3].tolist() == [[gl, 0], [gl, 6], [gz, 12]]
    rows = rows.tolist()
    assert rows[:nrows + 1] == [0] + [3] * nrows                   # string 0: all on row 0
    assert rows[nrows:2 * nrows + 1] == [3] * (nrows + 1)          # string 1: empty
    # string 2: 36 letters on row 0, 4 on row 1 (div = 218), y packed in the high half
    assert rows[2 * nrows:2 * nrows + 3] == [3, 39, 43] and rows[-1] == 43
    xy = glyphs[3:, 1].tolist()
    assert xy[:36] == [6 * i for i in range(36)]
    assert xy[36:] == [6 * i | 16 << 16 for i in range(4)]


def test_layout_rows_are_consistent_on_the_corpus(r):
    texts = corpus_texts()
    text, offsets = encode_texts(texts)
    glyphs, rows = ops.layout_text(text, offsets, r._cmap, r._cols, S, 16, 768, True)
    nrows = 14
    rows = rows.numpy()
    assert rows[0] == 0 and rows[-1] == len(glyphs) and (np.diff(rows) >= 0).all()
    xy = glyphs[:, 1].numpy()
    x, y = xy & 0xFFFF, xy >> 16
    band = np.repeat(np.arange(len(texts) * nrows), np.diff(rows))
    assert (y == (band % nrows) * 16).all()
    assert (x < S).all()
    widths = (r._cols.numpy() >> 16)[glyphs[:, 0].numpy()]
    assert (x + widths <= S).all()                 # no glyph runs past the right edge


# -- out= buffers ---------------------------------------------------------------------------

def test_render_text_into_equals_render_text(r):
    texts = corpus_texts()
    text, offsets = encode_texts(texts, 768)
    out = torch.full((len(texts), S, S), 55, dtype=torch.uint8)   # stale content
    res = ops.render_text_into(text, offsets, *tables(r), S, 768, True, 127, out)
    assert res is out
    assert torch.equal(out, ops.render_text(text, offsets, *tables(r), S, 768, True, 127))


@pytest.mark.parametrize("shape", ["BSS", "B1SS"])
def test_renderer_out_buffer(r, shape):
    texts = random_strings(16, seed=3, max_len=300)
    size = (16, S, S) if shape == "BSS" else (16, 1, S, S)
    buf = torch.full(size, 9, dtype=torch.uint8)
    got = r(texts, out=buf)
    assert got.shape == (16, 3, S, S) and got.stride(1) == 0
    assert got.data_ptr() == buf.data_ptr()               # a view of the buffer
    assert torch.equal(got, r(texts))
    more = random_strings(16, seed=4, max_len=300)        # reuse: every pixel rewritten
    assert torch.equal(r(more, out=buf), r(more))
    one = clippo.TextRenderer(channels=1)
    assert torch.equal(one(texts, out=buf), one(texts))


def test_out_slice_of_a_larger_buffer_is_written_in_bounds(r):
    # a contiguous slice of one big buffer, reused for smaller batches: only the slice changes
    buf = torch.full((6, S, S), 77, dtype=torch.uint8)
    texts = [CORPUS["long_mixed"], CORPUS["wide_only"], ""]
    got = r(texts, out=buf[2:5])
    assert torch.equal(got, r(texts))
    assert (buf[:2] == 77).all() and (buf[5:] == 77).all()
    guard = torch.full((3 * S * S + 2 * 4096,), 77, dtype=torch.uint8)
    out = guard[4096:4096 + 3 * S * S].view(3, S, S)
    text, offsets = encode_texts(texts)
    ops.render_text_into(text, offsets, *tables(r), S, 768, True, 127, out)
    assert (guard[:4096] == 77).all() and (guard[-4096:] == 77).all()
    assert torch.equal(out, r(texts)[:, 0])


@pytest.mark.parametrize("out,exc", [
    (torch.empty(2, S, S, dtype=torch.uint8), ValueError),          # wrong batch
    (torch.empty(3, 3, S, S, dtype=torch.uint8), ValueError),       # 3 channels
    (torch.empty(3, S, S + 1, dtype=torch.uint8), ValueError),      # wrong size
    (torch.empty(3, S, 2 * S, dtype=torch.uint8)[:, :, ::2], ValueError),  # non-contiguous
    (torch.empty(3, S, S, dtype=torch.float32), TypeError),
    (torch.empty(3, S, S, dtype=torch.int8), TypeError),
    (np.zeros((3, S, S), np.uint8), TypeError),
])
def test_renderer_out_buffer_misuse(r, out, exc):
    with pytest.raises(exc, match="out"):
        r(["a", "b", "c"], out=out)


# -- CUDA -----------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("params", PARAMS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_cuda_equals_cpu(params):
    texts = corpus_texts() + random_strings(300, seed=21, max_len=800)
    gpu = clippo.TextRenderer(device="cuda", **params)(texts)
    assert gpu.device.type == "cuda" and gpu.dtype == torch.uint8
    assert gpu.shape == (len(texts), 3, gpu.shape[-1], gpu.shape[-1])
    assert torch.equal(gpu.cpu(), clippo.TextRenderer(**params)(texts))


def _a_ttf_font():
    """DejaVu Sans from the system (fonts-dejavu-core) or from matplotlib's bundled copy."""
    from render_corpus import DEJAVU
    if os.path.exists(DEJAVU):
        return DEJAVU
    try:
        import matplotlib
    except ImportError:
        return None
    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")
    return path if os.path.exists(path) else None


@cuda
@pytest.mark.parametrize("params", [dict(word_wrap=True, image_size=160),
                                    dict(antialias=True, font_size=20), dict(font_size=12)],
                         ids=["word_wrap", "freetype-antialias", "freetype-mono-12"])
def test_cuda_equals_cpu_beyond_the_reference(params, tmp_path, monkeypatch):
    """The options beyond the reference op draw the same on both devices: word wrap (C++
    layout), and FreeType atlases with grey levels (anti-aliased) or without."""
    texts = corpus_texts() + random_strings(100, seed=5, max_len=400)
    if "word_wrap" not in params:
        font = _a_ttf_font()
        if font is None or importlib.util.find_spec("freetype") is None:
            pytest.skip("needs freetype-py and a TTF font (DejaVu Sans)")
        monkeypatch.setenv("CLIPPO_CACHE_DIR", str(tmp_path))
        params = dict(params, font=font)
    gpu = clippo.TextRenderer(device="cuda", **params)(texts)
    assert torch.equal(gpu.cpu(), clippo.TextRenderer(**params)(texts))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_renderer_without_a_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="CUDA|GPU"):
        clippo.TextRenderer(device="cuda")


@cuda
def test_cuda_rasterize_op_equals_cpu(r):
    texts = corpus_texts()
    text, offsets = encode_texts(texts)
    glyphs, rows = ops.layout_text(text, offsets, r._cmap, r._cols, S, 16, 768, True)
    cpu = ops.rasterize(glyphs, rows, r._cols, r._shaded, S, 127)
    gpu = ops.rasterize(glyphs.cuda(), rows.cuda(), r._cols.cuda(), r._shaded.cuda(), S, 127)
    assert torch.equal(gpu.cpu(), cpu)
    empty = ops.rasterize(glyphs[:0].cuda(), torch.zeros(1, dtype=torch.int32, device="cuda"),
                          r._cols.cuda(), r._shaded.cuda(), S, 127)
    assert empty.shape == (0, S, S)


@cuda
def test_cuda_threads_and_out_refused():
    import threading
    g = clippo.TextRenderer(device="cuda")
    texts = random_strings(64, seed=8, max_len=300)
    want = g(texts).cpu()
    results = [None] * 4

    def work(i):
        results[i] = g(texts).cpu()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(x, want) for x in results)
    with pytest.raises(ValueError):
        g(texts, out=torch.empty(64, S, S, dtype=torch.uint8))


# -- opcheck --------------------------------------------------------------------------------

def op_samples():
    r = clippo.TextRenderer(image_size=64)
    cm, cols, sh = tables(r)
    samples = []
    for texts in (["hello", "中文 😀 Ünï", ""], ["x" * 300], []):
        text, off = encode_texts(texts)
        g, rows = ops.layout_text(text, off, cm, cols, 64, 16, 768, True)
        out = torch.empty(len(texts), 64, 64, dtype=torch.uint8)
        samples.append({
            "render_text": (text, off, cm, cols, sh, 64, 768, True, 127),
            "render_text_into": (text, off, cm, cols, sh, 64, 768, True, 127, out),
            "layout_text": (text, off, cm, cols, 64, 16, 768, True, False),
            "rasterize": (g, rows, cols, sh, 64, 127),
        })
    return samples


@pytest.mark.parametrize("name", ["render_text", "render_text_into", "layout_text", "rasterize"])
def test_opcheck(name):
    op = getattr(torch.ops.clippo, name).default
    for sample in op_samples():
        # the default utils: schema (incl. mutation of out), autograd registration, fake
        # tensor kernels vs real shapes, AOT dispatch with dynamic shapes. The static AOT
        # check does not apply to layout_text, whose output size is data dependent.
        torch.library.opcheck(op, sample[name])


def test_fake_kernels_give_real_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv
    for sample in op_samples():
        real = ops.render_text(*sample["render_text"])
        with FakeTensorMode(shape_env=ShapeEnv()) as mode:
            fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
                         for a in sample["render_text"]]
            fake = ops.render_text(*fake_args)
            fake_r = ops.rasterize(*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
                                     for a in sample["rasterize"]])
        assert tuple(fake.shape) == tuple(real.shape) == tuple(fake_r.shape)
        assert fake.dtype == fake_r.dtype == torch.uint8


# -- misuse through torch.ops.clippo.* (in this process: a crash fails the whole run) -------

@pytest.fixture(scope="module")
def args():
    r = clippo.TextRenderer()
    text, off = encode_texts(["hello world", "中文"])
    g, rows = ops.layout_text(text, off, r._cmap, r._cols, S, 16, 768, True)
    return dict(text=text, off=off, cm=r._cmap, cols=r._cols, sh=r._shaded, g=g, rows=rows)


def i32(*v):
    return torch.tensor(v, dtype=torch.int32)


def i64(*v):
    return torch.tensor(v, dtype=torch.int64)


RENDER_MISUSE = {
    "text_int32": lambda a: dict(text=a["text"].int()),
    "text_2d": lambda a: dict(text=a["text"].view(1, -1)),
    "text_noncontig": lambda a: dict(text=a["text"].repeat_interleave(2)[::2]),
    "offsets_int32": lambda a: dict(off=a["off"].int()),
    "offsets_empty": lambda a: dict(off=i64()),
    "offsets_decreasing": lambda a: dict(off=i64(0, 9, 4)),
    "offsets_past_end": lambda a: dict(off=i64(0, 5, 10**6)),
    "offsets_negative": lambda a: dict(off=i64(-3, 5, 10)),
    "cmap_short": lambda a: dict(cm=a["cm"][:0x10000].contiguous()),
    "cmap_long": lambda a: dict(cm=torch.zeros(0x110001, dtype=torch.int32)),
    "cmap_int64": lambda a: dict(cm=a["cm"].long()),
    "cols_wrong_length": lambda a: dict(cols=a["cols"][:-1].contiguous()),
    "cols_out_of_cell": lambda a: dict(cols=torch.where(torch.arange(len(a["cols"])) == 5,
                                                        10 | 10 << 16, a["cols"]).int()),
    "cols_first_past_cell": lambda a: dict(cols=torch.full_like(a["cols"], 17 | 0 << 16)),
    "cols_negative_width": lambda a: dict(cols=torch.full_like(a["cols"], -1)),
    "cols_int64": lambda a: dict(cols=a["cols"].long()),
    "atlas_float": lambda a: dict(sh=a["sh"].float()),
    "atlas_2d": lambda a: dict(sh=a["sh"][:, 0].contiguous()),
    "atlas_noncontig": lambda a: dict(sh=a["sh"].transpose(1, 2)),
    "atlas_too_wide": lambda a: dict(sh=torch.zeros(len(a["cols"]), 16, 300, dtype=torch.uint8)),
    "atlas_empty": lambda a: dict(sh=torch.zeros(0, 16, 16, dtype=torch.uint8), cols=i32()),
    "image_size_0": lambda a: dict(size=0),
    "image_size_negative": lambda a: dict(size=-224),
    "image_size_huge": lambda a: dict(size=1 << 20),
    "image_size_narrower_than_glyph": lambda a: dict(size=10),
    "background_300": lambda a: dict(bg=300),
    "background_negative": lambda a: dict(bg=-1),
}


@pytest.mark.parametrize("case", sorted(RENDER_MISUSE))
@pytest.mark.parametrize("op", ["render_text", "render_text_into"])
def test_render_op_misuse_raises(args, case, op):
    a = dict(args, size=S, bg=127)
    a.update(RENDER_MISUSE[case](args))
    batch = max(a["off"].numel() - 1, 0)
    call = (a["text"], a["off"], a["cm"], a["cols"], a["sh"], a["size"], 768, True, a["bg"])
    with pytest.raises(RuntimeError):
        if op == "render_text":
            torch.ops.clippo.render_text(*call)
        else:
            size = min(max(a["size"], 1), 512)
            torch.ops.clippo.render_text_into(*call, torch.empty(batch, size, size,
                                                                 dtype=torch.uint8))


@pytest.mark.parametrize("out", [
    torch.empty(3, S, S, dtype=torch.uint8),                      # wrong batch
    torch.empty(2, S, S + 1, dtype=torch.uint8),
    torch.empty(2, S, S, dtype=torch.int32),
    torch.empty(2, S, 2 * S, dtype=torch.uint8)[:, :, ::2],      # non-contiguous
    torch.empty(2, 1, S, S, dtype=torch.uint8),
])
def test_render_text_into_bad_out_raises(args, out):
    with pytest.raises(RuntimeError, match="out"):
        torch.ops.clippo.render_text_into(args["text"], args["off"], args["cm"], args["cols"],
                                          args["sh"], S, 768, True, 127, out)


LAYOUT_MISUSE = {
    "text_int32": lambda a: dict(text=a["text"].int()),
    "offsets_decreasing": lambda a: dict(off=i64(0, 9, 4)),
    "offsets_past_end": lambda a: dict(off=i64(0, 5, 10**6)),
    "offsets_2d": lambda a: dict(off=a["off"].view(1, -1)),
    "cmap_short": lambda a: dict(cm=a["cm"][:100].contiguous()),
    "cmap_noncontig": lambda a: dict(cm=a["cm"].repeat_interleave(2)[::2]),
    "cols_negative_width": lambda a: dict(cols=torch.full_like(a["cols"], -1)),
    "cols_float": lambda a: dict(cols=a["cols"].float()),
    "cell_h_0": lambda a: dict(cell_h=0),
    "cell_h_negative": lambda a: dict(cell_h=-16),
    "image_size_0": lambda a: dict(size=0),
    "image_size_huge": lambda a: dict(size=1 << 20),
    "image_size_narrower_than_glyph": lambda a: dict(size=10),
}


@pytest.mark.parametrize("case", sorted(LAYOUT_MISUSE))
def test_layout_op_misuse_raises(args, case):
    a = dict(args, size=S, cell_h=16)
    a.update(LAYOUT_MISUSE[case](args))
    with pytest.raises(RuntimeError):
        torch.ops.clippo.layout_text(a["text"], a["off"], a["cm"], a["cols"], a["size"],
                                     a["cell_h"], 768, True, False)


def test_layout_op_cell_h_beyond_int32_raises(args):
    try:
        g, rows = torch.ops.clippo.layout_text(args["text"], args["off"], args["cm"],
                                               args["cols"], S, 2**32 + 16, 768, True, False)
    except RuntimeError:
        return
    raise AssertionError(f"accepted: glyphs {tuple(g.shape)}, row_offsets {tuple(rows.shape)}")


def test_layout_op_out_of_range_cmap_entries_draw_the_empty_glyph(args):
    # cmap entries outside [0, G) are documented to draw the empty glyph (glyph 0)
    for bad in (-5, 10**9):
        cm = torch.full_like(args["cm"], bad)
        g, rows = torch.ops.clippo.layout_text(args["text"], args["off"], cm, args["cols"], S,
                                               16, 768, True, False)
        assert (g[:, 0] == 0).all()
        img = torch.ops.clippo.render_text(args["text"], args["off"], cm, args["cols"],
                                           args["sh"], S, 768, True, 127)
        assert (img == 127).all()


RASTER_MISUSE = {
    "glyphs_int64": lambda a: dict(g=a["g"].long()),
    "glyphs_1d": lambda a: dict(g=a["g"].flatten()),
    "glyphs_3_columns": lambda a: dict(g=torch.zeros(4, 3, dtype=torch.int32)),
    "glyphs_noncontig": lambda a: dict(g=a["g"].t().contiguous().t()),
    "rows_wrong_length": lambda a: dict(rows=a["rows"][:-1].contiguous()),
    "rows_empty": lambda a: dict(rows=i32()),
    "rows_2d": lambda a: dict(rows=a["rows"].view(1, -1)),
    "rows_int64": lambda a: dict(rows=a["rows"].long()),
    "cols_wrong_length": lambda a: dict(cols=a["cols"][:-1].contiguous()),
    "cols_out_of_cell": lambda a: dict(cols=torch.full_like(a["cols"], 15 | 4 << 16)),
    "atlas_float": lambda a: dict(sh=a["sh"].float()),
    "atlas_empty": lambda a: dict(sh=torch.zeros(0, 16, 16, dtype=torch.uint8), cols=i32()),
    "image_size_0": lambda a: dict(size=0),
    "image_size_huge": lambda a: dict(size=1 << 20),
    "background_256": lambda a: dict(bg=256),
}


@pytest.mark.parametrize("case", sorted(RASTER_MISUSE))
def test_rasterize_op_misuse_raises(args, case):
    a = dict(args, size=S, bg=127)
    a.update(RASTER_MISUSE[case](args))
    with pytest.raises(RuntimeError):
        torch.ops.clippo.rasterize(a["g"], a["rows"], a["cols"], a["sh"], a["size"], a["bg"])


def test_rasterize_malformed_layouts_never_write_out_of_bounds(args):
    # Garbage glyph ids, positions and row offsets: documented to draw glyph 0 for bad ids
    # and to clip; the result must be an image made only of atlas values and background.
    rng = np.random.default_rng(0)
    cols, sh = args["cols"], args["sh"]
    allowed = set(np.unique(sh.numpy()).tolist()) | {42}
    for trial in range(40):
        batch, n = int(rng.integers(0, 4)), int(rng.integers(0, 300))
        g = np.stack([rng.integers(-2**31, 2**31 - 1, n), rng.integers(-2**31, 2**31 - 1, n)],
                     axis=1)
        if trial % 2:   # plausible glyph ids and small coordinates
            g[:, 0] = rng.integers(-3, len(cols) + 3, n)
            g[:, 1] = rng.integers(0, 300, n) | rng.integers(0, 300, n) << 16
        rows = np.sort(rng.integers(-50, n + 50, batch * 14 + 1))
        if trial % 3 == 0:
            rows = rng.integers(-2**31, 2**31 - 1, batch * 14 + 1)   # not even sorted
        img = torch.ops.clippo.rasterize(torch.from_numpy(g.astype(np.int32)),
                                         torch.from_numpy(rows.astype(np.int32)), cols, sh, S, 42)
        assert img.shape == (batch, S, S)
        assert set(np.unique(img.numpy()).tolist()) <= allowed


def test_rasterize_glyph_ids_out_of_range_draw_nothing(args):
    g = args["g"].clone()
    g[:, 0] = torch.tensor([-1, 10**8], dtype=torch.int32).repeat(len(g))[:len(g)]
    img = torch.ops.clippo.rasterize(g, args["rows"], args["cols"], args["sh"], S, 127)
    assert (img == 127).all()


def overlapping_layout(cols, rows_per_image, batch=3, per_band=12, seed=0):
    """A malformed layout whose glyphs overlap within their rows: random glyphs, x in [0, 40).
    Returns glyphs int32 [n, 2] and row_offsets int32 [batch * rows_per_image + 1]."""
    rng = np.random.default_rng(seed)
    bands = batch * rows_per_image
    counts = rng.integers(0, per_band + 1, bands)
    n = int(counts.sum())
    g = np.stack([rng.integers(0, len(cols), n), rng.integers(0, 40, n)], axis=1)
    rows = np.concatenate([[0], np.cumsum(counts)])
    return torch.from_numpy(g.astype(np.int32)), torch.from_numpy(rows.astype(np.int32))


def paint_in_order(glyphs, rows, cols, atlas, image_size, background):
    """Reference: glyphs copied one after another in layout order (later ones cover earlier
    ones), column by column, as in the definition of a layout."""
    g, rows, cols, atlas = glyphs.numpy(), rows.numpy(), cols.numpy(), atlas.numpy()
    cell_h, cell_w = atlas.shape[1:]
    n_rows = -(-image_size // cell_h)
    batch = (len(rows) - 1) // n_rows
    out = np.full((batch, image_size, image_size), background, np.uint8)
    for band in range(batch * n_rows):
        image, y0 = divmod(band, n_rows)
        y0 *= cell_h
        h = min(cell_h, image_size - y0)
        for k in range(rows[band], rows[band + 1]):
            glyph, x = int(g[k, 0]), int(g[k, 1]) & 0xFFFF
            first, width = int(cols[glyph]) & 0xFFFF, int(cols[glyph]) >> 16
            for j in range(min(width, cell_w - first)):
                if x + j < image_size:
                    out[image, y0:y0 + h, x + j] = atlas[glyph, :h, first + j]
    return out


def test_rasterize_overlapping_glyphs_the_later_one_wins(args):
    # layout_text never overlaps glyphs; a layout given to `rasterize` may. The rule shared by
    # the CPU and CUDA paths (raster_band.h): the glyph later in the layout covers the earlier
    # one, whatever order the claims run in (the CPU op runs them out of order on purpose).
    cols, sh = args["cols"], args["sh"]
    for image_size in (224, 40):
        rows_per_image = -(-image_size // 16)
        glyphs, rows = overlapping_layout(cols, rows_per_image, seed=image_size)
        got = ops.rasterize(glyphs, rows, cols, sh, image_size, 127).numpy()
        want = paint_in_order(glyphs, rows, cols, sh, image_size, 127)
        assert (want != 127).any()
        np.testing.assert_array_equal(got, want)
    # the simplest case by hand: "m" then "w" two columns to its right; then the reverse
    m, w = (int(args["cm"][ord(c)]) for c in "mw")
    for a, b in ((m, w), (w, m)):
        glyphs = i32(a, 0, b, 2).view(2, 2)
        rows = torch.tensor([0, 2] + [2] * 13, dtype=torch.int32)
        img = ops.rasterize(glyphs, rows, cols, sh, S, 127)[0].numpy()
        first_b, width_b = int(cols[b]) & 0xFFFF, int(cols[b]) >> 16
        np.testing.assert_array_equal(img[:16, 2:2 + width_b], sh[b, :, first_b:first_b + width_b])
        first_a = int(cols[a]) & 0xFFFF
        np.testing.assert_array_equal(img[:16, :2], sh[a, :, first_a:first_a + 2])


@cuda
def test_cuda_rasterize_overlapping_glyphs_equals_cpu(r):
    # the same rule on the GPU, where 256 threads claim a row's columns at once
    cols, sh = r._cols, r._shaded
    glyphs, rows = overlapping_layout(cols, 14, batch=64, per_band=200, seed=3)
    cpu = ops.rasterize(glyphs, rows, cols, sh, S, 127)
    for _ in range(3):
        gpu = ops.rasterize(glyphs.cuda(), rows.cuda(), cols.cuda(), sh.cuda(), S, 127)
        assert torch.equal(gpu.cpu(), cpu)


def test_layout_op_with_empty_glyph_cols_raises():
    # layout_text accepts glyph_cols of any length (it has no atlas to check against) and
    # maps out-of-range glyphs to glyph 0, so with zero entries it reads glyph_cols[0] of
    # an empty tensor. Run in a child process: a segfault there must not end this run.
    code = textwrap.dedent("""
        import torch, clippo
        from clippo.text.render import encode_texts
        r = clippo.TextRenderer()
        text, off = encode_texts(["hello"])
        try:
            torch.ops.clippo.layout_text(text, off, r._cmap, torch.empty(0, dtype=torch.int32),
                                         224, 16, 768, True, False)
        except RuntimeError as e:
            print("RuntimeError", e)
        else:
            print("no error")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0, f"child died with {proc.returncode}: {proc.stderr[-500:]}"
    assert proc.stdout.startswith("RuntimeError"), proc.stdout


def test_freed_outputs_are_reused_and_the_cache_can_be_emptied():
    # Large CPU outputs come from a small block cache (render/image_pool.cpp): the block of a
    # freed batch serves the next batch of the same size, with correct pixels.
    r = clippo.TextRenderer()
    # a full cache (earlier batches of other sizes) makes room for the newest freed block
    for n in (50, 100, 200, 250, 300):  # 4, 6, 10, 12, 16 MiB blocks; 128 images: 8 MiB
        del_me = r(["x"] * n)
        del del_me
    texts = [f"caption {i}" for i in range(128)]   # 128 * 224 * 224 bytes: a cached size
    first = r(texts)
    want = first.clone()
    ptr = first.data_ptr()
    del first
    second = r(texts)
    assert second.data_ptr() == ptr
    assert torch.equal(second, want)
    ops.empty_cache()
    del second
    ops.empty_cache()
    assert torch.equal(r(texts), want)


def test_ops_under_torch_compile_fullgraph():
    # The ops trace into one graph (fake kernels), so training code can compile rendering
    # together with the normalisation that follows it.
    r = clippo.TextRenderer(image_size=64)
    cm, cols, sh = tables(r)
    text, off = encode_texts(["compiled", "中文 😀", ""])

    def render_norm(text, off):
        img = torch.ops.clippo.render_text(text, off, cm, cols, sh, 64, 768, True, 127)
        return img.float() / 255 * 2 - 1

    def layout_raster(text, off):
        g, rows = torch.ops.clippo.layout_text(text, off, cm, cols, 64, 16, 768, True, False)
        return torch.ops.clippo.rasterize(g, rows, cols, sh, 64, 127)

    torch._dynamo.reset()
    want = render_norm(text, off)
    got = torch.compile(render_norm, fullgraph=True)(text, off)
    assert torch.equal(got, want)
    got = torch.compile(layout_raster, fullgraph=True, backend="aot_eager")(text, off)
    assert torch.equal(got, ops.render_text(text, off, cm, cols, sh, 64, 768, True, 127))
