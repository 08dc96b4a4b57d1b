"""LayerNorm: the Triton kernels (CUDA, or the CPU interpreter) and the registered op with
autograd, against F.layer_norm in float64 and in the same dtype; opcheck and torch.compile."""
import importlib

import pytest
import torch
import torch.nn.functional as F

import clippo.kernels as K
from _kernel_testing import ATOL, DEVICE, DTYPES, ON_GPU, assert_rule, needs_gpu, needs_triton

ln = importlib.import_module("clippo.kernels.layer_norm")

SHAPES = [(3, 7, 48), (1, 1, 33), (5, 100), (2, 3, 4, 24)]
GPU_SHAPES = [(64, 196, 768), (4096, 1024)]


def make(shape, dtype, device=DEVICE, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = shape[-1]
    x = (torch.randn(*shape, generator=g) * 3 + 1).to(device, dtype)
    w = (1 + 0.1 * torch.randn(d, generator=g)).to(device, dtype)
    b = (0.1 * torch.randn(d, generator=g)).to(device, dtype)
    dy = torch.randn(*shape, generator=g).to(device, dtype)
    return x, w, b, dy


def torch_grads(fn, x, w, b, dy):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    y = fn(*leaves)
    return y, torch.autograd.grad(y, leaves, dy.to(y.dtype))


def torch_layer_norm(x, w, b):
    """torch's own LayerNorm: the float64 reference in fp64, the same-dtype baseline else."""
    return F.layer_norm(x, x.shape[-1:], w, b, 1e-6)


def shape_params():
    return ([pytest.param(s, id="x".join(map(str, s))) for s in SHAPES]
            + [pytest.param(s, id="x".join(map(str, s)), marks=needs_gpu) for s in GPU_SHAPES])


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", shape_params())
def test_kernels(shape, dtype):
    x, w, b, dy = make(shape, dtype)
    y, mean, rstd = ln.layer_norm_fwd(x, w, b, 1e-6)
    y64, g64 = torch_grads(torch_layer_norm, x.double(), w.double(), b.double(), dy.double())
    ys, gs = torch_grads(torch_layer_norm, x, w, b, dy)
    assert_rule(y, y64, ys, ATOL[dtype], f"{shape} {dtype} y")
    x32 = x.double().reshape(-1, shape[-1])
    torch.testing.assert_close(mean.double(), x32.mean(-1), rtol=0, atol=1e-5)
    torch.testing.assert_close(rstd.double(), torch.rsqrt(x32.var(-1, unbiased=False) + 1e-6),
                               rtol=1e-4, atol=0)
    got = ln.layer_norm_bwd(dy, x, w, mean, rstd)
    m = x.numel() // shape[-1]
    for name, g, want64, want in zip(("x", "weight", "bias"), got, g64, gs):
        assert_rule(g, want64, want, ATOL[dtype] * (m ** 0.5 if name != "x" else 1),
                    f"{shape} {dtype} d{name}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [pytest.param(s, id="x".join(map(str, s))) for s in SHAPES])
def test_op_autograd(shape, dtype):
    x, w, b, dy = make(shape, dtype)
    y, got = torch_grads(ln.layer_norm_op, x, w, b, dy)
    y64, g64 = torch_grads(torch_layer_norm, x.double(), w.double(), b.double(), dy.double())
    ys, gs = torch_grads(torch_layer_norm, x, w, b, dy)
    assert_rule(y, y64, ys, ATOL[dtype], f"{shape} {dtype} y")
    m = x.numel() // shape[-1]
    for name, g, want64, want in zip(("x", "weight", "bias"), got, g64, gs):
        assert_rule(g, want64, want, ATOL[dtype] * (m ** 0.5 if name != "x" else 1),
                    f"{shape} {dtype} d{name}")


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if ON_GPU else []))
def test_opcheck_and_compile(device):
    x, w, b, dy = make((2, 5, 24), torch.float32, device=device)
    x, w, b = (t.requires_grad_() for t in (x, w, b))
    torch.library.opcheck(torch.ops.clippo.layer_norm_fwd.default, (x, w, b, 1e-6))
    y, mean, rstd = torch.ops.clippo.layer_norm_fwd(x, w, b, 1e-6)
    torch.library.opcheck(torch.ops.clippo.layer_norm_bwd.default,
                          (dy, x.detach(), w.detach(), mean, rstd))
    torch._dynamo.reset()
    with K.use_backend("triton" if K.HAS_TRITON else "auto"):
        def fn(x, w, b):
            return K.layer_norm(x, w, b).square().sum()
        eager = torch.autograd.grad(fn(x, w, b), [x, w, b])
        got = torch.autograd.grad(torch.compile(fn, fullgraph=True)(x, w, b), [x, w, b])
    for g, e in zip(got, eager):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


def test_public_matches_torch_and_errors():
    x, w, b, _ = make((2, 3, 16), torch.float32, device="cpu")
    for name in ["torch", "auto"] + (["triton"] if K.HAS_TRITON else []):
        with K.use_backend(name):
            torch.testing.assert_close(K.layer_norm(x, w, b), torch_layer_norm(x, w, b))
    with pytest.raises(ValueError, match="weight and bias must be"):
        torch.ops.clippo.layer_norm_fwd(x, w[:-1], b, 1e-6)
