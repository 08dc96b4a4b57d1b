"""Attention with a key-padding `lengths` (ragged batches padded at the end): the Triton
kernels (CUDA, or the CPU interpreter), the registered op with autograd and the public
function, against a float64 reference that runs each batch row on its own unpadded keys."""
import importlib

import pytest
import torch

import clippo.kernels as K
from _kernel_testing import ATOL, DEVICE, DTYPES, assert_rule, needs_triton

at = importlib.import_module("clippo.kernels.attention")

# (H, Lq, Lk, Dh, lengths): ragged rows, a row of length 1 (an empty text's single token), a
# full row, lengths across the interpreter's 32-key blocks; Lq = 1 is the MAP head's probe
CASES = [
    (2, 37, 37, 32, [37, 1, 20, 33]),
    (1, 1, 45, 64, [45, 3, 1, 32]),
    (3, 9, 9, 16, [1, 9, 5]),
]


def _ids():
    return [pytest.param(c, id=f"Lq{c[1]}-Lk{c[2]}-{'.'.join(map(str, c[4]))}") for c in CASES]


def make(case, dtype, device=DEVICE, seed=0):
    h, lq, lk, dh, lengths = case
    b = len(lengths)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, dh, generator=g).to(device, dtype)
    k = torch.randn(b, h, lk, dh, generator=g).to(device, dtype)
    v = torch.randn(b, h, lk, dh, generator=g).to(device, dtype)
    grad = torch.randn(b, h, lq, dh, generator=g).to(device, dtype)
    return q, k, v, grad, torch.tensor(lengths, device=device)


def per_row(q, k, v, grad, lengths, scale):
    """(out, (dq, dk, dv)) row by row, each row's attention over its first lengths[b] keys
    only (no mask anywhere); dk, dv of the padded keys are zero. Matmuls in the inputs' dtype,
    softmax in fp32 (fp64 for fp64 inputs), as tests/test_attention.py's naive_attention."""
    outs, grads = [], [torch.zeros_like(t) for t in (q, k, v)]
    for b, n in enumerate(lengths.tolist()):
        leaves = [t[b:b + 1].detach().clone().requires_grad_() for t in (q, k[:, :, :n],
                                                                           v[:, :, :n])]
        s = (leaves[0] @ leaves[1].transpose(-2, -1)).to(
            torch.promote_types(q.dtype, torch.float32)) * scale
        out = s.softmax(-1).to(q.dtype) @ leaves[2]
        dq, dk, dv = torch.autograd.grad(out, leaves, grad[b:b + 1])
        grads[0][b], grads[1][b, :, :n], grads[2][b, :, :n] = dq[0], dk[0], dv[0]
        outs.append(out.detach())
    return torch.cat(outs), grads


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", _ids())
def test_kernels_forward_backward_with_lengths(case, dtype):
    q, k, v, grad, lengths = make(case, dtype)
    scale = case[3] ** -0.5
    out, lse = at.attention_fwd(q, k, v, scale, lengths)
    ref64, want64 = per_row(q.double(), k.double(), v.double(), grad.double(), lengths, scale)
    ref, want = per_row(q, k, v, grad, lengths, scale)
    assert_rule(out, ref64, ref, ATOL[dtype], f"{case} {dtype} out")
    assert torch.isfinite(lse).all()
    dq, dk, dv = at.attention_bwd(grad, q, k, v, out, lse, scale, lengths)
    for name, g, g64, gs in zip("qkv", (dq, dk, dv), want64, want):
        assert_rule(g, g64, gs, ATOL[dtype], f"{case} {dtype} d{name}")
    for b, n in enumerate(lengths.tolist()):  # padded keys: exactly zero, not just small
        assert not dk[b, :, n:].any() and not dv[b, :, n:].any()


@pytest.mark.parametrize("backend", ["torch", "auto"] + (["triton"] if K.HAS_TRITON else []))
@pytest.mark.parametrize("case", _ids())
def test_public_attention_with_lengths_autograd(case, backend):
    """clippo.kernels.attention (SDPA with a mask, or the op: CPU kernel = torch reference)
    forward and backward against the per-row float64 reference; garbage in the padded keys
    (huge values) changes nothing."""
    q, k, v, grad, lengths = make(case, torch.float32, device="cpu")
    for b, n in enumerate(lengths.tolist()):
        k[b, :, n:], v[b, :, n:] = 1e4, -3e4
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    with K.use_backend(backend):
        out = K.attention(*leaves, lengths=lengths)
    got = torch.autograd.grad(out, leaves, grad)
    scale = case[3] ** -0.5
    ref64, want64 = per_row(q.double(), k.double(), v.double(), grad.double(), lengths, scale)
    torch.testing.assert_close(out.double(), ref64, rtol=1e-5, atol=1e-5)
    for g, g64 in zip(got, want64):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g.double(), g64, rtol=1e-4, atol=1e-5)


def test_reference_ops_take_lengths_in_fp64():
    q, k, v, grad, lengths = make(CASES[0], torch.float64, device="cpu")
    out, lse2 = torch.ops.clippo.attention_fwd(q, k, v, 0.2, lengths)
    ref, want = per_row(q, k, v, grad, lengths, 0.2)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    got = torch.ops.clippo.attention_bwd(grad, q, k, v, out, lse2, 0.2, lengths)
    for g, w in zip(got, want):  # lse2 is kept in fp32 whatever the inputs
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)


def test_full_lengths_equal_no_lengths():
    q, k, v, _, _ = make(CASES[2], torch.float32, device="cpu")
    full = torch.full((q.shape[0],), k.shape[2])
    torch.testing.assert_close(K.attention(q, k, v, lengths=full), K.attention(q, k, v))


def test_bad_lengths_are_refused():
    q, k, v, _, _ = make(CASES[2], torch.float32, device="cpu")
    with pytest.raises(ValueError, match="lengths must be an integer tensor"):
        at._check_lengths(torch.ones(2), q.shape[0])
