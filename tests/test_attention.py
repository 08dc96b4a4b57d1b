"""Attention: the Triton kernels (launched directly: CUDA, or the CPU interpreter) and the
registered op with autograd, against a naive float64 reference and the same-dtype torch."""
import importlib

import pytest
import torch
import torch.nn.functional as F

import clippo.kernels as K
from _kernel_testing import ATOL, DEVICE, DTYPES, assert_rule, needs_gpu, needs_triton

at = importlib.import_module("clippo.kernels.attention")

# (B, H, Lq, Lk, Dh, layout); layout "qkv": q, k, v are views of one packed [B, L, 3, H, Dh]
# projection (the model's layout, non-contiguous), "bhld": contiguous
SHAPES = [
    (1, 2, 37, 197, 64, "bhld"),     # ragged blocks on both axes, 197 keys
    (2, 1, 1, 196, 64, "bhld"),      # MAP head: one query over 196 tokens
    (1, 2, 20, 20, 128, "qkv"),      # head dim 128, packed qkv strides
    (1, 1, 17, 33, 40, "bhld"),      # head dim 40: masked (padded) head dim
    (1, 1, 5, 3, 16, "bhld"),        # fewer keys than one block
    (1, 3, 3, 3, 32, "qkv"),         # tiny, packed qkv
]
GPU_SHAPES = [
    (4, 12, 197, 197, 64, "qkv"),    # ViT-B/16 with a class token
    (2, 12, 196, 196, 64, "bhld"),
    (2, 16, 576, 576, 128, "qkv"),
    (8, 12, 1, 196, 64, "bhld"),     # MAP head
    (2, 12, 256, 256, 64, "bhld"),
]


def make_qkv(shape, dtype, device=DEVICE, seed=0):
    b, h, lq, lk, dh, layout = shape
    g = torch.Generator().manual_seed(seed)
    if layout == "qkv":
        assert lq == lk
        packed = torch.randn(b, lq, 3, h, dh, generator=g).to(device, dtype)
        q, k, v = packed.permute(2, 0, 3, 1, 4).unbind(0)
        assert not q.is_contiguous()
    else:
        q = torch.randn(b, h, lq, dh, generator=g).to(device, dtype)
        k = torch.randn(b, h, lk, dh, generator=g).to(device, dtype)
        v = torch.randn(b, h, lk, dh, generator=g).to(device, dtype)
    return q, k, v


def shape_params():
    return ([pytest.param(s, id="x".join(map(str, s))) for s in SHAPES]
            + [pytest.param(s, id="x".join(map(str, s)), marks=needs_gpu) for s in GPU_SHAPES])


def naive_attention(q, k, v, scale=None):
    """Attention as written: matmuls in the inputs' dtype (the same-dtype torch baseline), the
    softmax in fp32 (fp64 for fp64 inputs: the float64 reference)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q @ k.transpose(-2, -1)).to(torch.promote_types(q.dtype, torch.float32)) * scale
    return s.softmax(-1).to(q.dtype) @ v


def ref_grads(q, k, v, grad, scale=None):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = naive_attention(*leaves, scale=scale)
    return out, torch.autograd.grad(out, leaves, grad.to(out.dtype))


# ------------------------------------------------------------------ Triton kernels, direct


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", shape_params())
def test_kernels_forward_backward(shape, dtype):
    q, k, v = make_qkv(shape, dtype)
    scale = 0.3 if shape[4] == 40 else shape[4] ** -0.5  # a custom scale once
    out, lse = at.attention_fwd(q, k, v, scale)
    ref64 = naive_attention(q.double(), k.double(), v.double(), scale)
    ref = naive_attention(q, k, v, scale)
    assert_rule(out, ref64, ref, ATOL[dtype], f"{shape} {dtype} out")

    lse64 = torch.logsumexp(q.double() @ k.double().transpose(-2, -1) * scale, -1) * at.LOG2E
    torch.testing.assert_close(lse.double(), lse64, rtol=0, atol=ATOL[dtype] * 10)

    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE, dtype)
    dq, dk, dv = at.attention_bwd(grad, q, k, v, out, lse, scale)
    _, want64 = ref_grads(q.double(), k.double(), v.double(), grad.double(), scale)
    _, want = ref_grads(q, k, v, grad, scale)
    for name, g, g64, gs in zip("qkv", (dq, dk, dv), want64, want):
        assert_rule(g, g64, gs, ATOL[dtype], f"{shape} {dtype} d{name}")


@needs_triton
def test_kernel_rejects_unsupported_head_dim():
    q, k, v = make_qkv((1, 1, 4, 4, 160, "bhld"), torch.float32)
    with pytest.raises(ValueError, match="head dim 160"):
        at.attention_fwd(q, k, v, 0.1)


@needs_triton
def test_softmax_is_stable_for_large_logits():
    """Scores around 1e3 would overflow a naive exp: the online softmax must not."""
    q, k, v = make_qkv((1, 1, 16, 40, 64, "bhld"), torch.float32)
    out, _ = at.attention_fwd(q * 30, k * 30, v, 0.125)
    ref64 = naive_attention(q.double() * 30, k.double() * 30, v.double())
    assert torch.isfinite(out).all()
    assert_rule(out, ref64, naive_attention(q * 30, k * 30, v), ATOL[torch.float32],
                "large logits")


# ------------------------------------------------------------------ the op and its autograd


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [pytest.param(s, id="x".join(map(str, s))) for s in SHAPES])
def test_op_autograd(shape, dtype):
    """torch.ops.clippo.attention_fwd + autograd (Triton on CUDA, torch kernels on the CPU)."""
    q, k, v = make_qkv(shape, dtype)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = at.attention_op(*leaves)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE, dtype)
    got = torch.autograd.grad(out, leaves, grad)
    out64, want64 = ref_grads(q.double(), k.double(), v.double(), grad.double())
    outs, want = ref_grads(q, k, v, grad)
    assert_rule(out, out64, outs, ATOL[dtype], f"{shape} {dtype} out")
    for name, g, g64, gs in zip("qkv", got, want64, want):
        assert g.shape == gs.shape
        assert_rule(g, g64, gs, ATOL[dtype], f"{shape} {dtype} d{name}")


# ------------------------------------------------------------------ public function, errors


def test_public_matches_sdpa_on_every_backend():
    q, k, v = make_qkv(SHAPES[0], torch.float32)
    ref = F.scaled_dot_product_attention(q, k, v)
    for name in ["torch", "auto"] + (["triton"] if K.HAS_TRITON else []):
        with K.use_backend(name):
            torch.testing.assert_close(K.attention(q, k, v), ref, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(K.attention(q, k, v, scale=0.5),
                                       F.scaled_dot_product_attention(q, k, v, scale=0.5),
                                       rtol=1e-5, atol=1e-5)


def test_public_falls_back_for_large_head_dim():
    q, k, v = make_qkv((1, 2, 9, 9, 160, "bhld"), torch.float32)
    with K.use_backend("triton" if K.HAS_TRITON else "auto"):
        out = K.attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize("change, message", [
    (lambda q, k, v: (q, k.half(), v), "share one of"),
    (lambda q, k, v: (q, k[:, :, :3], v), "k/v must be"),
    (lambda q, k, v: (q, k, v[:, :1]), "batch/heads"),
    (lambda q, k, v: (q[0], k, v), r"\[B, H, L, Dh\]"),
    (lambda q, k, v: (q.double(), k.double(), v.double()), "share one of"),
])
def test_errors(change, message):
    q, k, v = change(*make_qkv((1, 2, 5, 7, 16, "bhld"), torch.float32, device="cpu"))
    with pytest.raises(ValueError, match=message):
        at.check_args(q, k, v)  # what the Triton launchers check first
    if q.dtype != torch.float64:  # the op's CPU kernel, the torch reference, takes fp64 too
        with pytest.raises(ValueError, match=message):
            torch.ops.clippo.attention_fwd(q, k, v, 0.25)


def test_cpu_op_is_the_reference_in_fp64_too():
    q, k, v = (t.double() for t in make_qkv(SHAPES[3], torch.float32, device="cpu"))
    out, lse2 = torch.ops.clippo.attention_fwd(q, k, v, 0.3)
    torch.testing.assert_close(out, naive_attention(q, k, v, 0.3), rtol=1e-12, atol=1e-12)
    assert lse2.dtype == torch.float32


def test_backend_switch_validation():
    with pytest.raises(ValueError, match="unknown clippo kernel backend"):
        K.set_backend("cuda")
    before = K.get_backend()
    restore = K.set_backend("torch")
    try:
        assert K.get_backend() == "torch" and restore.previous == before
    finally:
        K.set_backend(restore.previous)
    with K.set_backend("torch") as restore:
        assert K.get_backend() == "torch"
    assert K.get_backend() == before == restore.previous
