"""Bad input never crashes and never draws out of bounds: lone surrogates, controls, astral
and out-of-font code points, huge strings, invalid UTF-8 bytes (checked code point by code
point against Python's own decoder), odd containers, bad fonts and bad configs. Then
concurrency: threads, fork after threaded rendering, pickling, DataLoader workers."""
import gzip
import multiprocessing
import pickle
import random
import threading

import numpy as np
import pytest
import torch

import clippo
from clippo.text import ops
from clippo.text.atlas import FontError
from clippo.text.render import encode_texts
from render_corpus import CORPUS, LONG, as_hwc, check_against_ref, random_strings, ref_image

S = 224


@pytest.fixture(scope="module")
def r():
    return clippo.TextRenderer()


# -- decoding, checked through the layout op with an identity font ---------------------------
# With cmap[cp] = cp and every glyph 1 px wide, layout_text's glyph ids ARE the decoded code
# points, in order (a 32767 px image holds ~10^9 of them on 1 px rows).

@pytest.fixture(scope="module")
def identity_tables():
    cmap = torch.arange(0x110000, dtype=torch.int32)
    cols = torch.full((0x110000,), 1 << 16, dtype=torch.int32)
    return cmap, cols


def decoded(identity_tables, texts, max_chars=0, lower=False):
    cmap, cols = identity_tables
    text, offsets = encode_texts(texts)
    glyphs, rows = ops.layout_text(text, offsets, cmap, cols, 32767, 1, max_chars, lower)
    ids = glyphs[:, 0].tolist()
    starts = rows[::32767].tolist()
    return [ids[a:b] for a, b in zip(starts[:-1], starts[1:])]


def python_decode(b):
    return [ord(c) for c in b.decode("utf-8", "replace")]


MALFORMED = [
    b"", b"\x80", b"\xbf", b"\x80\x80\x80", b"\xc0", b"\xc1\xbf", b"\xc0\x80",  # overlong NUL
    b"\xe0\x80\x80", b"\xe0\x9f\xbf", b"\xf0\x80\x80\x80", b"\xf0\x8f\xbf\xbf",  # overlongs
    b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xed\xa0\x80\xed\xb0\x80",   # UTF-8 surrogates (CESU)
    b"\xe2\x82", b"\xe2", b"\xf0\x9f\x98", b"\xf0\x9f", b"a\xf0\x9f\x98b",  # truncated
    b"\xf4\x90\x80\x80", b"\xf4\x8f\xbf\xbf", b"\xf7\xbf\xbf\xbf",          # > U+10FFFF
    bytes(range(0xF5, 0x100)), b"\xff\xfe\xfd", b"\xfe\xff",               # never valid
    b"\xc2\x80\xdf\xbf\xe0\xa0\x80\xef\xbf\xbf\xf0\x90\x80\x80\xf4\x8f\xbf\xbf",  # boundaries
    b"\xc2", b"\xc2A", b"\xe2\x28\xa1", b"\xe2\x82\x28", b"\xf0\x28\x8c\xbc",
    b"\xf8\x88\x80\x80\x80", b"\xfc\x84\x80\x80\x80\x80",                 # 5/6-byte forms
    "naïve 中文 😀".encode(), "Ünï".encode() + b"\x80" + "çødé".encode(),
    b"\x00\x00\x00", b"A\x00B",
]


def test_malformed_utf8_is_decoded_like_python(identity_tables):
    got = decoded(identity_tables, MALFORMED)
    for b, ids in zip(MALFORMED, got):
        assert ids == python_decode(b), b


def test_random_bytes_are_decoded_like_python(identity_tables):
    rng = random.Random(42)
    # bytes from every class of lead/continuation byte, so that partial sequences abound
    classes = [range(0x00, 0x80), range(0x80, 0xC0), range(0xC0, 0xC2), range(0xC2, 0xE0),
               range(0xE0, 0xF0), range(0xF0, 0xF5), range(0xF5, 0x100)]
    weights = [3, 6, 1, 2, 2, 2, 1]
    blobs = [bytes(rng.choice(rng.choices(classes, weights)[0])
                   for _ in range(rng.randint(0, 40))) for _ in range(2000)]
    blobs += [rng.randbytes(rng.randint(0, 64)) for _ in range(500)]
    got = decoded(identity_tables, blobs)
    for b, ids in zip(blobs, got):
        assert ids == python_decode(b), b


def test_str_code_points_and_lone_surrogates(identity_tables):
    texts = ["\ud800", "a\udfffb\ud800", "\ud83d\ude00", "😀", "\U0010FFFF", "\x00\x85\x9f"]
    want = [[0xFFFD], [0x61, 0xFFFD, 0x62, 0xFFFD], [0xFFFD, 0xFFFD], [0x1F600], [0x10FFFF],
            [0, 0x85, 0x9F]]
    assert decoded(identity_tables, texts) == want
    strs = random_strings(200, seed=77, max_len=100)
    assert decoded(identity_tables, strs) == [[ord(c) for c in s] for s in strs]


def test_lowercasing_touches_ascii_only(identity_tables):
    text = "".join(chr(c) for c in range(0x20, 0x250)) + "ΩЖ"
    got = decoded(identity_tables, [text], lower=True)[0]
    assert got == [c + 32 if 0x41 <= c <= 0x5A else c for c in map(ord, text)]
    # bytes: lowercasing happens before decoding in the reference; ASCII never hides in a
    # multibyte sequence, so an invalid lead followed by 'A' gives U+FFFD, 'a'
    assert decoded(identity_tables, [b"\xc3A\xe2B"], lower=True)[0] == [0xFFFD, 0x61, 0xFFFD, 0x62]


def test_max_chars_counts_decoded_code_points(identity_tables):
    blob = b"\xff\xe2\x82ab\xf0\x9f\x98\x80c" * 3
    full = python_decode(blob)
    for m in (1, 2, 3, 5, 7, len(full), len(full) + 5):
        assert decoded(identity_tables, [blob], max_chars=m)[0] == full[:m]


def test_byte_truncation_before_layout_keeps_the_first_code_points(identity_tables):
    # encode_texts cuts inputs at 4 * max_chars bytes before the C++ layout: whatever the
    # bytes, the first max_chars decoded code points must be those Python decodes.
    cmap, cols = identity_tables
    rng = random.Random(8)
    pieces = [b"\xff", b"\xe4\xb8\xad", b"\xf0\x9f\x98\x80", b"\xf0\x9f\x98", b"a", b"\xc3",
              b"\xed\xa0\x80", b"\x80\x80"]
    for _ in range(300):
        blob = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        m = rng.randint(1, 12)
        text, offsets = encode_texts([blob], max_chars=m)
        assert int(offsets[-1]) <= 4 * m
        glyphs, _ = ops.layout_text(text, offsets, cmap, cols, 32767, 1, m, False)
        assert glyphs[:, 0].tolist() == python_decode(blob)[:m], (blob, m)


# -- bad input through the renderer: same images as the reference ---------------------------

def test_lone_surrogates_render_as_replacement_char(r):
    imgs = r(["\ud800", "\ufffd", "x\udc00y\ud800", "x\ufffdy\ufffd"])
    assert torch.equal(imgs[0], imgs[1]) and torch.equal(imgs[2], imgs[3])
    assert (imgs[1] == 0).any()                  # U+FFFD has a glyph


def test_controls_and_specials_match_reference(r):
    texts = ["".join(map(chr, range(0x00, 0x20))), "".join(map(chr, range(0x7F, 0xA0))),
             "a\x00b", "a\x00", "\x00" * 50, "\U0010FFFF" * 10, "\U000E0001\U000F0000\U00100000",
             "😀" * 100, CORPUS["emoji_astral"], CORPUS["controls"]]
    check_against_ref(r, texts)
    a = r(["a\x00b", "a\x00"])
    assert not torch.equal(a[0], a[1])           # NUL does not end the string


@pytest.mark.parametrize("blob", MALFORMED[:30])
def test_invalid_utf8_bytes_render_like_the_python_decoded_str(r, blob):
    a = r([blob, blob.decode("utf-8", "replace")])
    assert torch.equal(a[0], a[1])
    assert np.array_equal(as_hwc(a)[0], ref_image(blob))


def test_random_bytes_render_like_reference(r):
    rng = random.Random(5)
    blobs = [rng.randbytes(rng.randint(0, 300)) for _ in range(60)]
    got = as_hwc(r(blobs))
    for i, b in enumerate(blobs):
        assert np.array_equal(got[i], ref_image(b)), b[:40]


def test_megabyte_string_is_truncated_by_max_chars(r):
    big = (LONG * 1100)[:1 << 20]
    assert len(big.encode()) == 1 << 20
    text, offsets = encode_texts([big], 768)
    assert offsets.tolist() == [0, 4 * 768]       # cut before the C++ layout sees it
    imgs = r([big, big[:768]])
    assert torch.equal(imgs[0], imgs[1])
    mixed = (CORPUS["long_mixed"] * 500)[:1 << 20]    # multibyte: well over 1 MB of UTF-8
    assert len(mixed.encode()) > 1 << 20
    check_against_ref(r, [mixed[:800]])
    assert torch.equal(r([mixed])[0], r([mixed[:768]])[0])


def test_megabyte_string_without_max_chars_shows_the_visible_part():
    r = clippo.TextRenderer(max_chars=None)
    big = (CORPUS["long_mixed"] * 500)[:1 << 20]
    imgs = r([big, big[:3000]])
    assert torch.equal(imgs[0], imgs[1])         # only the first ~700 fit in 14 rows
    check_against_ref(r, [big[:3000]], max_chars=None)
    raw = (b"\xff\xe4\xb8\xad" * (1 << 18))       # 1 MB of bytes, half of it invalid
    imgs = r([raw, raw[:4000]])
    assert torch.equal(imgs[0], imgs[1])
    assert np.array_equal(as_hwc(imgs)[1], ref_image(raw[:4000], max_chars=None))


def test_empty_batches(r):
    for texts in ([], (), iter([]), (t for t in [])):
        out = r(texts)
        assert out.shape == (0, 3, S, S) and out.dtype == torch.uint8
    assert clippo.TextRenderer(channels=1)([]).shape == (0, 1, S, S)
    assert r([], out=torch.empty(0, S, S, dtype=torch.uint8)).shape == (0, 3, S, S)


def test_containers(r):
    texts = ["tuple", "of", b"bytes too"]
    want = r(list(texts))
    assert torch.equal(r(tuple(texts)), want)
    assert torch.equal(r(t for t in texts), want)
    assert torch.equal(r(iter(texts)), want)
    assert torch.equal(r([bytearray(b"bytes too"), memoryview(b"of")])[0], want[2])
    assert torch.equal(r("one str"), r(["one str"]))
    assert torch.equal(r(b"one bytes"), r(["one bytes"]))
    assert torch.equal(r(np.array(["numpy", "strs"])), r(["numpy", "strs"]))


@pytest.mark.parametrize("bad,index,kind", [
    (["ok", 3], 1, "int"), ([None], 0, "NoneType"), (["a", "b", 2.5], 2, "float"),
    (["a", ["nested"]], 1, "list"), ([b"x", object()], 1, "object"),
])
def test_non_string_elements_raise_type_error_naming_the_index(r, bad, index, kind):
    with pytest.raises(TypeError, match=rf"texts\[{index}\] is a {kind}"):
        r(bad)


def test_non_iterable_input_raises_type_error(r):
    with pytest.raises(TypeError):
        r(42)


# -- bad fonts: a FontError (a ValueError), never a crash -----------------------------------

def font_cases(tmp_path):
    garbage = tmp_path / "garbage.ttf"
    garbage.write_bytes(random.Random(1).randbytes(5000))
    truncated = tmp_path / "truncated.ttf"    # a TrueType signature, then garbage tables
    truncated.write_bytes(b"\x00\x01\x00\x00\x00\x10" + bytes(200))
    empty_ttf = tmp_path / "empty.otf"
    empty_ttf.write_bytes(b"")
    hexes = {
        "junk.hex": "this is not a font\n",
        "short_digits.hex": "0041:00000000\n",
        "bad_digits.hex": "0041:ZZ00000018242442427E424242420000\n",
        "no_colon.hex": "00410000000018242442427E424242420000\n",
        "out_of_range.hex": "110000:0000000018242442427E424242420000\n",
        "empty.hex": "",
        "binary.hex": None,
    }
    cases = {"missing.hex": tmp_path / "missing.hex", "missing.ttf": tmp_path / "missing.ttf",
             "directory": tmp_path, "directory.hex": tmp_path / "dir.hex",
             "garbage.ttf": garbage, "truncated.ttf": truncated, "empty.otf": empty_ttf}
    (tmp_path / "dir.hex").mkdir()
    for name, content in hexes.items():
        p = tmp_path / name
        if content is None:
            p.write_bytes(bytes(range(256)) * 4)
        else:
            p.write_text(content)
        cases[name] = p
    bad_gz = tmp_path / "bad.hex.gz"
    bad_gz.write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    cases["bad.hex.gz"] = bad_gz
    cut_gz = tmp_path / "cut.hex.gz"
    cut_gz.write_bytes(gzip.compress(b"0041:0000000018242442427E424242420000\n" * 50)[:40])
    cases["cut.hex.gz"] = cut_gz
    return cases


NAMES = ["missing.hex", "missing.ttf", "directory", "directory.hex", "garbage.ttf",
         "truncated.ttf", "empty.otf", "junk.hex", "short_digits.hex", "bad_digits.hex",
         "no_colon.hex", "out_of_range.hex", "empty.hex", "binary.hex", "bad.hex.gz",
         "cut.hex.gz"]


@pytest.mark.parametrize("name", NAMES)
def test_bad_font_raises_font_error(tmp_path, monkeypatch, name):
    monkeypatch.setenv("CLIPPO_CACHE_DIR", str(tmp_path / "cache"))
    path = font_cases(tmp_path)[name]
    with pytest.raises(FontError) as info:
        clippo.TextRenderer(font=path)
    assert isinstance(info.value, ValueError)
    assert str(path.name) in str(info.value) or str(path) in str(info.value)


@pytest.mark.parametrize("name", ["missing.hex", "junk.hex", "bad.hex.gz", "directory"])
def test_bad_upper_font_raises_font_error(tmp_path, name):
    with pytest.raises(FontError):
        clippo.TextRenderer(upper_font=font_cases(tmp_path)[name])


@pytest.mark.parametrize("kwargs", [
    dict(spacing=-1), dict(min_width=-3), dict(background_brightness=300),
    dict(text_brightness=256), dict(text_brightness=-1), dict(image_size=0),
    dict(image_size=-5), dict(image_size=16), dict(image_size=8), dict(font_size=0),
    dict(max_chars=-1), dict(image_size=224.0), dict(image_size=True), dict(channels=2),
    dict(device="meta"), dict(image_size=40000), dict(font_size=16.5),
    dict(background_brightness=127.5), dict(max_chars="768"),
])
def test_invalid_config_raises_value_error(kwargs):
    with pytest.raises(ValueError):
        clippo.TextRenderer(**kwargs)


def test_smallest_image_that_fits_a_glyph_renders():
    # image_size must exceed the widest glyph (16 px); 17 works, and the reference's
    # div = 17 - 16 = 1 pushes wide glyphs down the rows (rows are skipped, not an error)
    r = clippo.TextRenderer(image_size=17)
    check_against_ref(r, ["中", "ab", "a中b", "W" * 10, ""], image_size=17)


# -- concurrency ----------------------------------------------------------------------------

def test_threads_render_the_same_bytes_as_serial(r):
    batches = [random_strings(64, seed=100 + i, max_len=400) for i in range(16)]
    serial = [r(b).clone() for b in batches]
    results = [None] * len(batches)
    errors = []
    barrier = threading.Barrier(8)

    def work(k):
        try:
            barrier.wait(timeout=60)
            for i in range(k, len(batches), 8):
                out = torch.empty(len(batches[i]), S, S, dtype=torch.uint8) if i % 2 else None
                results[i] = r(batches[i], out=out).clone()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
    for i in range(len(batches)):
        assert torch.equal(results[i], serial[i]), i


def test_renderers_built_concurrently_share_one_atlas():
    made = [None] * 6

    def build(i):
        made[i] = clippo.TextRenderer(image_size=96 + (i % 2), spacing=2)
    threads = [threading.Thread(target=build, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(m is not None for m in made)
    assert len({id(m.atlas) for m in made}) == 1
    check_against_ref(made[0], ["concurrent 中文"], image_size=96, spacing=2)


def _render_in_child(texts):
    out = clippo.TextRenderer()(texts)
    return out[:, 0].numpy().copy()


def test_forked_child_renders_after_threaded_parent(r):
    texts = random_strings(64, seed=9, max_len=300)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        want = r(texts)[:, 0].numpy().copy()     # parent rendered with 2 threads
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(1) as pool:
            got = pool.apply_async(_render_in_child, (texts,)).get(timeout=120)
        assert np.array_equal(got, want)
    finally:
        torch.set_num_threads(before)


def test_pickles_by_reference(r):
    for rend in (r, clippo.TextRenderer(image_size=64, monospace=True, channels=1, max_chars=None)):
        blob = pickle.dumps(rend)
        assert len(blob) < 10_000
        back = pickle.loads(blob)
        assert back.config == rend.config and back.channels == rend.channels
        assert back.atlas is rend.atlas            # same process: the cached atlas
        texts = CORPUS["long_mixed"], CORPUS["emoji_astral"], ""
        assert torch.equal(back(texts), rend(texts))


def _unpickle_and_render(blob, texts):
    return pickle.loads(blob)(texts)[:, 0].numpy().copy()


def test_pickled_renderer_renders_in_a_spawned_process():
    rend = clippo.TextRenderer(image_size=100, spacing=2)
    texts = ["spawned worker 中文 😀", CORPUS["greek"]]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(_unpickle_and_render, (pickle.dumps(rend), texts)).get(timeout=180)
    assert np.array_equal(got, rend(texts)[:, 0].numpy())


class _Captions(torch.utils.data.Dataset):
    def __init__(self, texts, renderer):
        self.texts, self.renderer = texts, renderer

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, i):
        return self.renderer(self.texts[i])[0, 0], i


def test_dataloader_fork_workers_render(r):
    texts = random_strings(48, seed=31, max_len=300)
    r(texts[:4])      # the parent has rendered (and used its thread pool) before forking
    loader = torch.utils.data.DataLoader(_Captions(texts, r), batch_size=8, num_workers=2,
                                         multiprocessing_context="fork", timeout=120)
    images, idx = zip(*loader)
    images, idx = torch.cat(images), torch.cat(idx)
    assert idx.tolist() == list(range(48))
    assert torch.equal(images, r(texts)[:, 0])


class _Texts(torch.utils.data.Dataset):
    def __init__(self, texts):
        self.texts = texts

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, i):
        return self.texts[i]


class _RenderCollate:
    def __init__(self, renderer):
        self.renderer = renderer

    def __call__(self, batch):
        return self.renderer(batch)


def test_dataloader_workers_render_whole_batches(r):
    # batches of 128 images (6 MB) take the renderer's large-output path; the worker sends
    # them back through shared memory
    texts = random_strings(384, seed=41, max_len=200)
    loader = torch.utils.data.DataLoader(_Texts(texts), batch_size=128, num_workers=2,
                                         collate_fn=_RenderCollate(r),
                                         multiprocessing_context="fork", timeout=120)
    batches = list(loader)
    assert [b.shape for b in batches] == [(128, 3, S, S)] * 3
    assert torch.equal(torch.cat(batches), r(texts))
    big = r(texts[:128])
    assert torch.equal(pickle.loads(pickle.dumps(big)), big)
    shared = big[:, 0].share_memory_()
    assert shared.is_shared() and torch.equal(shared, r(texts[:128])[:, 0])


def test_single_bytes_like_input_is_a_batch_of_one():
    r = clippo.TextRenderer()
    want = r(["abc"])
    for single in (b"abc", bytearray(b"abc"), memoryview(b"abc")):
        assert torch.equal(r(single), want)


@pytest.mark.parametrize("field", ["spacing", "min_width", "background_brightness",
                                   "text_brightness", "max_chars", "image_size", "font_size"])
def test_bools_are_not_ints_in_the_config(field):
    with pytest.raises(ValueError, match=field):
        clippo.RenderConfig(**{field: True})


def test_intra_op_thread_count_does_not_change_pixels():
    # The C++ loop splits the batch over torch.get_num_threads() threads in small chunks;
    # every split must give the same bytes (strings of very different lengths included).
    from clippo.text.render import encode_texts
    r = clippo.TextRenderer()
    rng = random.Random(7)
    texts = ["".join(rng.choice("ab 中😀\n") for _ in range(rng.randrange(0, 900)))
             for _ in range(203)]
    before = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3, 5):
            torch.set_num_threads(n)
            outs.append(r(texts).clone())
            glyphs, rows = ops.layout_text(*encode_texts(texts, 768), r._cmap, r._cols, 224,
                                           16, 768, True)
            outs.append(ops.rasterize(glyphs, rows, r._cols, r._shaded, 224, 127).unsqueeze(1)
                        .expand(-1, 3, -1, -1).clone())
    finally:
        torch.set_num_threads(before)
    for o in outs[1:]:
        assert torch.equal(o, outs[0])


def test_corrupt_gzip_font_is_a_font_error(tmp_path):
    from clippo.text.atlas import FontError
    good = gzip.compress(b"0041:" + b"00" * 16 + b"\n" * 1 + b"0042:" + b"FF" * 16 + b"\n")
    bad = bytearray(good)
    for i in range(12, min(40, len(bad))):
        bad[i] ^= 0x5A
    path = tmp_path / "bad.hex.gz"
    path.write_bytes(bytes(bad))
    with pytest.raises(FontError):
        clippo.TextRenderer(font=path)


def test_encode_texts_reads_one_shot_iterables_once():
    from clippo.text.render import encode_texts
    want_text, want_off = encode_texts(["abc", b"de", "f"])
    got_text, got_off = encode_texts(s for s in ["abc", b"de", "f"])
    assert torch.equal(got_off, want_off) and torch.equal(got_text, want_text)
