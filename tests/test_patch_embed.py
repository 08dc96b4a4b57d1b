"""Patch embedding: the Triton kernels (launched directly: CUDA, or the CPU interpreter) and the
registered op with autograd, against conv2d references in float64 and in the same dtype."""
import importlib

import pytest
import torch

import clippo.kernels as K
from _kernel_testing import ATOL, DEVICE, DTYPES, assert_rule, needs_gpu, needs_triton

pe = importlib.import_module("clippo.kernels.patch_embed")

# (name, B, C, H, W, P, D, images kind, bias, pos embed shape)
#   grey: the renderer's uint8 [B, 3, H, W] expanded from one plane (channel stride 0)
#   uint8: contiguous uint8; float: images float in [-1, 1]; strided: float, channels-last and
#   cropped out of a larger tensor; pos "1nd" = [1, N, D], "nd" = [N, D], None = no pos embed
CASES = [
    ("grey", 2, 3, 32, 40, 8, 48, "grey", True, "1nd"),
    ("uint8_b1_c1", 1, 1, 24, 24, 8, 40, "uint8", True, "nd"),
    ("float_nobias", 2, 3, 16, 24, 8, 33, "float", False, "1nd"),
    ("strided_nopos_ragged", 1, 3, 20, 27, 8, 24, "strided", True, None),
    ("p4", 3, 2, 12, 8, 4, 20, "float", True, "nd"),
]
GPU_CASES = [  # ViT-B/16 sized, only on a GPU
    ("b16_grey", 8, 3, 224, 224, 16, 768, "grey", True, "1nd"),
    ("b16_float", 4, 3, 224, 224, 16, 768, "strided", True, "1nd"),
]


def make_inputs(case, dtype, device=DEVICE, image_dtype=None, seed=0):
    _, b, c, h, w, p, d, kind, has_bias, pos = case
    g = torch.Generator().manual_seed(seed)
    n = (h // p) * (w // p)
    if kind == "grey":
        images = torch.randint(0, 256, (b, 1, h, w), generator=g, dtype=torch.uint8)
        images = images.to(device).expand(b, c, h, w)
        assert images.stride(1) == 0
    elif kind == "uint8":
        images = torch.randint(0, 256, (b, c, h, w), generator=g, dtype=torch.uint8).to(device)
    elif kind == "float":
        images = (torch.rand(b, c, h, w, generator=g) * 2 - 1).to(device, image_dtype or dtype)
    else:  # strided: NHWC storage, cropped from a bigger image
        big = torch.rand(b, h + 3, w + 5, c, generator=g) * 2 - 1
        images = big.to(device, image_dtype or dtype).permute(0, 3, 1, 2)[:, :, 2:2 + h, 1:1 + w]
        assert not images.is_contiguous()
    k = c * p * p
    weight = (torch.randn(d, c, p, p, generator=g) * k ** -0.5).to(device, dtype)
    bias = torch.randn(d, generator=g).to(device, dtype) if has_bias else None
    shape = {"1nd": (1, n, d), "nd": (n, d), None: None}[pos]
    pos_embed = (torch.randn(*shape, generator=g) * 0.5).to(device, dtype) if shape else None
    return images, weight, bias, pos_embed


def f64(t):
    return None if t is None else (t if t.dtype == torch.uint8 else t.double())


def case_params(gpu_cases=True):
    params = [pytest.param(c, id=c[0]) for c in CASES]
    if gpu_cases:
        params += [pytest.param(c, id=c[0], marks=needs_gpu) for c in GPU_CASES]
    return params


# ------------------------------------------------------------------ Triton kernels, direct


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", case_params())
def test_forward_kernel(case, dtype):
    images, weight, bias, pos = make_inputs(case, dtype)
    out = pe.patch_embed_fwd(images, weight, bias, pos)
    ref64 = pe.patch_embed_ref(f64(images), f64(weight), f64(bias), f64(pos))
    ref = pe.patch_embed_ref(images, weight, bias, pos)
    assert out.is_contiguous()
    assert_rule(out, ref64, ref, ATOL[dtype], f"{case[0]} {dtype} tokens")


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", case_params())
def test_grad_weight_kernel(case, dtype):
    images, weight, _, _ = make_inputs(case, dtype)
    b, n, d = images.shape[0], (images.shape[2] // case[5]) * (images.shape[3] // case[5]), case[6]
    grad = torch.randn(b, n, d, generator=torch.Generator().manual_seed(1)).to(DEVICE, dtype)
    grad = grad.transpose(0, 1).contiguous().transpose(0, 1)  # non-contiguous grad_out
    p = weight.shape[-1]
    gw = pe.patch_embed_grad_weight(images, grad, p)
    ref64 = pe.patch_embed_grad_weight_ref(f64(images), grad.double(), p)
    # torch in the same dtype: autograd of conv2d
    w = weight.detach().clone().requires_grad_()
    pe.patch_embed_ref(images, w).backward(grad)
    assert_rule(gw, ref64, w.grad, ATOL[dtype] * (b * n) ** 0.5, f"{case[0]} {dtype} dweight")


@needs_triton
def test_float_image_dtype_differs_from_weight():
    """fp32 images with fp16 weight: the kernel casts the pixels to the weight dtype."""
    case = CASES[2]
    images, weight, bias, pos = make_inputs(case, torch.float16, image_dtype=torch.float32)
    out = pe.patch_embed_fwd(images, weight, bias, pos)
    ref64 = pe.patch_embed_ref(images.double(), weight.double(), f64(bias), f64(pos))
    assert out.dtype == torch.float16
    assert_rule(out, ref64, pe.patch_embed_ref(images, weight, bias, pos), ATOL[torch.float16],
                "fp32 images, fp16 weight")


@needs_triton
def test_uint8_normalisation_exact():
    """Identity-like weight picks single pixels: tokens must be exactly x / 255 * 2 - 1."""
    images = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).to(DEVICE)
    p = 4
    weight = torch.zeros(p * p, 1, p, p)
    weight.view(p * p, p * p).copy_(torch.eye(p * p))
    out = pe.patch_embed_fwd(images, weight.to(DEVICE), None, None)
    expect = images.float().reshape(1, 1, 4, p, 4, p).permute(0, 2, 4, 1, 3, 5).reshape(1, 16, 16)
    expect = expect / 255.0 * 2.0 - 1.0
    torch.testing.assert_close(out, expect, rtol=0, atol=1e-6)


# ------------------------------------------------------------------ the op and its autograd


def _op_and_grads(fn, inputs, names, grad):
    """Run fn(images, weight, bias, pos) with the named inputs as leaves; (out, {name: grad})."""
    leaves = {n: inputs[n].detach().clone().requires_grad_() for n in names}
    args = [leaves.get(n, inputs[n]) for n in ("images", "weight", "bias", "pos")]
    out = fn(*args)
    grads = torch.autograd.grad(out, list(leaves.values()), grad.to(out.dtype))
    return out, dict(zip(leaves, grads))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", case_params(gpu_cases=False))
def test_op_autograd(case, dtype):
    """torch.ops.clippo.patch_embed forward and every gradient (Triton on CUDA; on the CPU the
    registered torch kernels) against autograd through the float64 reference."""
    images, weight, bias, pos = make_inputs(case, dtype)
    inputs = dict(images=images, weight=weight, bias=bias, pos=pos)
    names = [n for n, t in inputs.items() if t is not None and t.dtype.is_floating_point]
    inputs64 = {n: f64(t) for n, t in inputs.items()}
    b, n = images.shape[0], (images.shape[2] // case[5]) * (images.shape[3] // case[5])
    grad = torch.randn(b, n, case[6], generator=torch.Generator().manual_seed(2)).to(DEVICE)

    out, got = _op_and_grads(torch.ops.clippo.patch_embed, inputs, names, grad)
    out64, want64 = _op_and_grads(pe.patch_embed_ref, inputs64, names, grad.double())
    outs, want = _op_and_grads(pe.patch_embed_ref, inputs, names, grad)

    assert_rule(out, out64, outs, ATOL[dtype], f"{case[0]} {dtype} out")
    assert set(got) == set(names)
    for name in names:
        assert got[name].shape == inputs[name].shape, name
        assert_rule(got[name], want64[name], want[name], ATOL[dtype] * (b * n) ** 0.5,
                    f"{case[0]} {dtype} d{name}")


def test_op_grad_names_match_inputs():
    """No bias, with pos: the gradients come back in input order with the right shapes."""
    images, weight, _, pos = make_inputs(CASES[2], torch.float32)
    w, p = weight.clone().requires_grad_(), pos.clone().requires_grad_()
    out = torch.ops.clippo.patch_embed(images, w, None, p)
    gw, gp = torch.autograd.grad(out.sum(), [w, p])
    assert gw.shape == w.shape and gp.shape == p.shape
    torch.testing.assert_close(gp, torch.full_like(p, images.shape[0]))


# ------------------------------------------------------------------ public function, errors


def test_public_matches_reference_on_every_backend():
    images, weight, bias, pos = make_inputs(CASES[0], torch.float32)
    ref = pe.patch_embed_ref(images, weight, bias, pos)
    backends = ["torch", "auto"] + (["triton"] if K.HAS_TRITON else [])
    for name in backends:
        with K.use_backend(name):
            torch.testing.assert_close(K.patch_embed(images, weight, bias, pos), ref)
    assert K.get_backend() == "auto"


@pytest.mark.parametrize("bad, message", [
    (lambda i, w: (i[:, :2], w), "channels"),
    (lambda i, w: (i[:, :, :4, :4], w), "smaller than one"),
    (lambda i, w: (i.to(torch.int32), w), "uint8 or floating"),
    (lambda i, w: (i, w[:, :, :, :4]), r"\[D, C, P, P\]"),
    (lambda i, w: (i[0], w), r"\[B, C, H, W\]"),
])
def test_errors(bad, message):
    images, weight, bias, pos = make_inputs(CASES[0], torch.float32, device="cpu")
    images, weight = bad(images, weight)
    with pytest.raises(ValueError, match=message):
        torch.ops.clippo.patch_embed(images, weight, None, None)


def test_bad_pos_embed_shape():
    images, weight, bias, pos = make_inputs(CASES[0], torch.float32, device="cpu")
    with pytest.raises(ValueError, match="pos_embed"):
        torch.ops.clippo.patch_embed(images, weight, bias, pos[:, :-1])


# ------------------------------------------------------------------ kept patches (patch_index)

def gather_tokens(full, patch_index):
    """The definition: tokens of every patch [B, N, D], picked at patch_index [B, L]; a
    negative entry gives a zero token."""
    idx = patch_index.long()
    picked = full.gather(1, idx.clamp(min=0).unsqueeze(-1).expand(-1, -1, full.shape[-1]))
    return torch.where((idx >= 0).unsqueeze(-1), picked, torch.zeros_like(picked))


def make_index(kind, b, n, seed=0, dtype=torch.int32):
    """ragged: each row keeps a random subset, one row keeps nothing; full: every patch in
    order (no padding); shuffled: any order, repeats, padding in the middle; empty: L = 0."""
    g = torch.Generator().manual_seed(seed)
    if kind == "ragged":
        ink = torch.rand(b, n, generator=g) < 0.4
        ink[min(1, b - 1)] = False
        idx = K.ink_index(ink)[0]
        if idx.shape[1] == 0:
            idx = torch.full((b, 1), -1, dtype=torch.int32)
    elif kind == "full":
        idx = torch.arange(n, dtype=torch.int32).repeat(b, 1)
    elif kind == "shuffled":
        idx = torch.randint(-1, n, (b, n + 3), generator=g, dtype=torch.int32)
    else:
        idx = torch.empty(b, 0, dtype=torch.int32)
    return idx.to(DEVICE, dtype)


INDEX_KINDS = ["ragged", "full", "shuffled", "empty"]


def tokens_of(case):
    return (case[3] // case[5]) * (case[4] // case[5])


@needs_triton
@pytest.mark.parametrize("kind", INDEX_KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", case_params())
def test_forward_kernel_kept_patches(case, dtype, kind):
    images, weight, bias, pos = make_inputs(case, dtype)
    idx = make_index(kind, case[1], tokens_of(case), dtype=torch.int64 if kind == "full" else
                     torch.int32)
    out = pe.patch_embed_fwd(images, weight, bias, pos, idx)
    ref64 = gather_tokens(pe.patch_embed_ref(f64(images), f64(weight), f64(bias), f64(pos)), idx)
    ref = pe.patch_embed_ref(images, weight, bias, pos, idx)
    assert out.shape == ref.shape == (case[1], idx.shape[1], case[6])
    if out.numel():
        assert_rule(out, ref64, ref, ATOL[dtype], f"{case[0]} {dtype} {kind} tokens")
    assert (out[idx < 0] == 0).all()                         # padding slots are zero tokens
    if kind == "full":   # the same tiles as without an index: the same bits
        assert torch.equal(out, pe.patch_embed_fwd(images, weight, bias, pos))


@needs_triton
@pytest.mark.parametrize("kind", INDEX_KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", case_params(gpu_cases=False))
def test_grad_weight_kernel_kept_patches(case, dtype, kind):
    images, weight, _, _ = make_inputs(case, dtype)
    idx = make_index(kind, case[1], tokens_of(case), seed=1)
    grad = torch.randn(case[1], idx.shape[1], case[6],
                       generator=torch.Generator().manual_seed(1)).to(DEVICE, dtype)
    p = weight.shape[-1]
    gw = pe.patch_embed_grad_weight(images, grad, p, idx)
    # float64 definition: autograd through the full conv, then the pick
    w64 = f64(weight).clone().requires_grad_()
    gather_tokens(pe.patch_embed_ref(f64(images), w64), idx).backward(grad.double())
    same = pe.patch_embed_grad_weight_ref(images, grad, p, idx)
    rows = max(1, idx.numel())
    assert_rule(gw, w64.grad, same, ATOL[dtype] * rows ** 0.5, f"{case[0]} {dtype} {kind} dW")


@pytest.mark.parametrize("kind", ["ragged", "shuffled"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", case_params(gpu_cases=False))
def test_op_autograd_kept_patches(case, dtype, kind):
    """The op with patch_index: forward and every gradient against autograd through the
    float64 full conv + pick (padding slots carry no gradient to bias or pos_embed)."""
    images, weight, bias, pos = make_inputs(case, dtype)
    idx = make_index(kind, case[1], tokens_of(case), seed=2)
    inputs = dict(images=images, weight=weight, bias=bias, pos=pos)
    names = [n for n, t in inputs.items() if t is not None and t.dtype.is_floating_point]
    grad = torch.randn(case[1], idx.shape[1], case[6],
                       generator=torch.Generator().manual_seed(3)).to(DEVICE)

    def op(*args):
        return torch.ops.clippo.patch_embed(*args, idx)

    def ref64(*args):
        return gather_tokens(pe.patch_embed_ref(*args), idx)

    def same(*args):
        return pe.patch_embed_ref(*args, idx)

    out, got = _op_and_grads(op, inputs, names, grad)
    out64, want64 = _op_and_grads(ref64, {n: f64(t) for n, t in inputs.items()}, names,
                                  grad.double())
    outs, want = _op_and_grads(same, inputs, names, grad)
    assert_rule(out, out64, outs, ATOL[dtype], f"{case[0]} {dtype} {kind} out")
    rows = idx.numel()
    for name in names:
        assert got[name].shape == inputs[name].shape, name
        assert_rule(got[name], want64[name], want[name], ATOL[dtype] * rows ** 0.5,
                    f"{case[0]} {dtype} {kind} d{name}")


def test_public_kept_patches_on_every_backend():
    images, weight, bias, pos = make_inputs(CASES[0], torch.float32)
    idx = make_index("ragged", CASES[0][1], tokens_of(CASES[0]))
    want = gather_tokens(pe.patch_embed_ref(images, weight, bias, pos), idx)
    backends = ["torch", "auto"] + (["triton"] if K.HAS_TRITON else [])
    for name in backends:
        with K.use_backend(name):
            torch.testing.assert_close(K.patch_embed(images, weight, bias, pos, idx), want)


@pytest.mark.parametrize("bad, message", [
    (lambda i: i.float(), "int32 or int64"),
    (lambda i: i[0], r"\[B=2, L\]"),
    (lambda i: i[:1], r"\[B=2, L\]"),
    (lambda i: i.clone().fill_(20), "holds 20"),
])
def test_kept_patch_index_errors(bad, message):
    images, weight, bias, pos = make_inputs(CASES[0], torch.float32, device="cpu")
    idx = bad(torch.zeros(2, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match=message):
        torch.ops.clippo.patch_embed(images, weight, bias, pos, idx)
    with pytest.raises(ValueError, match=message):
        K.patch_embed(images, weight, bias, pos, idx)


def ink_index_loop(ink):
    """Python loops: each row's True columns in order, then -1 up to the longest row."""
    rows = [[j for j, v in enumerate(row) if v] for row in ink.tolist()]
    longest = max((len(r) for r in rows), default=0)
    return [r + [-1] * (longest - len(r)) for r in rows], [len(r) for r in rows]


def test_ink_index():
    ink = torch.tensor([[0, 1, 0, 1, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    idx, lengths = K.ink_index(ink)
    assert idx.dtype == lengths.dtype == torch.int32
    assert idx.tolist() == [[1, 3, 4], [-1, -1, -1], [0, -1, -1]]
    assert lengths.tolist() == [3, 0, 1]
    g = torch.Generator().manual_seed(0)
    for n, p in ((196, 0.1), (25, 0.4), (7, 0.9), (1, 0.5)):
        ink = torch.rand(13, n, generator=g) < p
        idx, lengths = K.ink_index(ink)
        want, want_len = ink_index_loop(ink)
        assert idx.tolist() == want and lengths.tolist() == want_len
    idx, _ = K.ink_index(torch.zeros(2, 4, dtype=torch.bool))
    assert idx.shape == (2, 0)
    idx, _ = K.ink_index(torch.zeros(2, 4, dtype=torch.bool), min_length=1)
    assert idx.tolist() == [[-1], [-1]]
    idx, _ = K.ink_index(ink[:, :1] | True, min_length=3, multiple_of=4)   # beyond N: padding
    assert idx.shape == (13, 4) and (idx[:, 0] == 0).all() and (idx[:, 1:] == -1).all()
    assert K.ink_index(torch.zeros(0, 9, dtype=torch.bool))[0].shape == (0, 0)
    with pytest.raises(ValueError, match="bool"):
        K.ink_index(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="multiple_of"):
        K.ink_index(ink, multiple_of=0)


def test_renderer_ink_to_tokens():
    """End to end: the renderer's ink mask picks the patches holding ink, and the kept tokens
    are those of the full embedding (the blank patches dropped)."""
    import clippo
    images, ink = clippo.TextRenderer(image_size=64)(["a cat", "", "on a mat"],
                                                      ink_patch_size=16)
    idx, lengths = K.ink_index(ink)
    assert lengths[1] == 0 and lengths[0] > 0
    weight = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    full = pe.patch_embed_ref(images, weight)
    torch.testing.assert_close(K.patch_embed(images, weight, None, None, idx),
                               gather_tokens(full, idx))


def test_opcheck_kept_patches():
    """The ops with patch_index: schema, autograd registration, fake kernels (torch.compile)."""
    images, weight, bias, pos = make_inputs(CASES[0], torch.float32, device="cpu")
    idx = make_index("ragged", CASES[0][1], tokens_of(CASES[0])).cpu()
    w = weight.clone().requires_grad_()
    torch.library.opcheck(torch.ops.clippo.patch_embed.default, (images, w, bias, pos, idx))
    grad = torch.randn(idx.shape[0], idx.shape[1], weight.shape[0])
    torch.library.opcheck(torch.ops.clippo.patch_embed_grad_weight.default,
                          (images, grad, 8, idx))


@pytest.mark.parametrize("patch", [16, 14, 8, 7])
@pytest.mark.parametrize("layout", ["contiguous", "grey", "cropped"])
def test_gathered_patches_equal_a_loop_over_patches(patch, layout):
    """The kept patches are gathered in machine words where the image's strides allow (the
    renderer's stride-0 channels, patch rows of 8 bytes); whatever the layout, each row is
    its patch's pixels in conv weight order."""
    g = torch.Generator().manual_seed(5)
    side = 4 * patch
    if layout == "grey":
        images = torch.randint(0, 256, (3, 1, side, side), generator=g,
                               dtype=torch.uint8).expand(3, 3, side, side)
    elif layout == "cropped":  # odd offset and row stride: no word view exists
        images = torch.randint(0, 256, (3, 3, side + 3, side + 5), generator=g,
                               dtype=torch.uint8)[:, :, 1:side + 1, 3:side + 3]
    else:
        images = torch.randint(0, 256, (3, 3, side, side), generator=g, dtype=torch.uint8)
    wide = pe._as_words(images, patch)[1] > 1
    assert wide == (layout != "cropped" and patch % 2 == 0)  # both ways are exercised
    idx = make_index("shuffled", 3, 16, seed=6)
    got, keep, _ = pe._gather_patches(images, patch, idx, torch.float32)
    assert got.shape == (3, idx.shape[1], 3 * patch * patch)
    for b in range(3):
        for slot, t in enumerate(idx[b].tolist()):
            if t < 0:
                assert not keep[b, slot]
                continue
            r, c = divmod(t, 4)
            pixels = images[b, :, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch]
            want = pixels.reshape(-1).float() / 255 * 2 - 1  # x / 255 * 2 - 1 in fp32
            assert torch.equal(got[b, slot], want), (b, slot)
