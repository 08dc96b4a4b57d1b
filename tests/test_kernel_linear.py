"""Fused linear (GEMM + bias + tanh-GELU + residual): the Triton kernel (CUDA, or the CPU
interpreter) and the registered op with autograd, against torch in float64 and in the same
dtype; the public function's backends and fusion switch; opcheck and torch.compile."""
import importlib
import math

import pytest
import torch

import clippo.kernels as K
from _kernel_testing import ATOL, DEVICE, DTYPES, ON_GPU, assert_rule, needs_gpu, needs_triton

lin = importlib.import_module("clippo.kernels.linear")

# (leading shape of x, K, N): odd sizes that cut every block edge, a K below one block, rows
# that are not a multiple of the tile
SHAPES = [((3, 7), 24, 40), ((1,), 33, 17), ((70,), 64, 96), ((2, 3, 5), 48, 16)]
GPU_SHAPES = [((8, 197), 768, 3072), ((8, 197), 3072, 768), ((1024,), 768, 768)]
# (activation, residual, bias)
MODES = [("gelu", False, True), (None, True, True), (None, False, False), ("gelu", True, False)]


def make(lead, k, n, dtype, device=DEVICE, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, k, generator=g).to(device, dtype)
    w = (torch.randn(n, k, generator=g) / math.sqrt(k)).to(device, dtype)
    b = (0.5 * torch.randn(n, generator=g)).to(device, dtype)
    r = torch.randn(*lead, n, generator=g).to(device, dtype)
    dy = torch.randn(*lead, n, generator=g).to(device, dtype)
    return x, w, b, r, dy


def gelu_tanh64(h):
    """tanh-GELU written from its formula, in float64 (independent of torch's kernel)."""
    return 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))


def ref64(x, w, b, r, act):
    h = x.double() @ w.double().t()
    if b is not None:
        h = h + b.double()
    y = gelu_tanh64(h) if act == "gelu" else h
    return y + r.double() if r is not None else y


def grads(fn, tensors, dy):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in tensors]
    y = fn(*leaves)
    return y, torch.autograd.grad(y, [t for t in leaves if t is not None], dy.to(y.dtype))


def case_params():
    return ([pytest.param(*s, id=f"{'x'.join(map(str, s[0]))}-{s[1]}-{s[2]}") for s in SHAPES]
            + [pytest.param(*s, id=f"{'x'.join(map(str, s[0]))}-{s[1]}-{s[2]}",
                            marks=needs_gpu) for s in GPU_SHAPES])


def mode_params():
    return [pytest.param(*m, id=f"{m[0] or 'id'}{'-res' if m[1] else ''}"
                         f"{'' if m[2] else '-nobias'}") for m in MODES]


def test_reference_is_the_formula():
    """linear_ref (the model's unfused path) against the float64 formula, hand-checked point:
    gelu_tanh(1) = 0.5 (1 + tanh(sqrt(2/pi) 1.044715)) = 0.841192 (to 6 places)."""
    assert abs(gelu_tanh64(torch.tensor(1.0, dtype=torch.float64)).item() - 0.841192) < 1e-6
    x, w, b, r, _ = make((4, 5), 12, 9, torch.float64, device="cpu")
    for act, res, bias in MODES:
        got, _ = lin.linear_ref(x, w, b if bias else None, r if res else None, act)
        torch.testing.assert_close(got, ref64(x, w, b if bias else None, r if res else None,
                                              act), rtol=1e-12, atol=1e-12)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act,res,bias", mode_params())
@pytest.mark.parametrize("lead,k,n", case_params())
def test_kernel(lead, k, n, act, res, bias, dtype):
    x, w, b, r, _ = make(lead, k, n, dtype)
    b = b if bias else None
    r = r if res else None
    y, h = lin.linear_fwd(x, w, b, r, act, save_pre=True)
    same, _ = lin.linear_ref(x, w, b, r, act)
    assert_rule(y, ref64(x, w, b, r, act), same, ATOL[dtype] * math.sqrt(k), f"{dtype} y")
    if act == "gelu":
        assert_rule(h, ref64(x, w, b, None, None), torch.nn.functional.linear(x, w, b),
                    ATOL[dtype] * math.sqrt(k), f"{dtype} pre-activation")
    else:
        assert h.numel() == 0
    y2, h2 = lin.linear_fwd(x, w, b, r, act, save_pre=False)
    assert torch.equal(y2, y) and h2.numel() == 0


@needs_triton
def test_kernel_strided_inputs():
    """Transposed weight, a sliced x and a non-contiguous residual: strides are honoured."""
    x, w, b, r, _ = make((6, 9), 40, 24, torch.float32)
    xs = torch.cat([x, x], dim=-1)[..., ::2]                 # x's values, column stride 2
    xs.copy_(x)
    wt = w.t().contiguous().t()                              # [N, K] with strides (1, N)
    rt = r.transpose(0, 1).contiguous().transpose(0, 1)
    y, _ = lin.linear_fwd(xs, wt, b, rt, "gelu", False)
    assert_rule(y, ref64(x, w, b, r, "gelu"), lin.linear_ref(x, w, b, r, "gelu")[0],
                ATOL[torch.float32] * 8, "strided")


@needs_triton
@pytest.mark.parametrize("lead,k,n", [((0,), 16, 8), ((3,), 0, 8), ((3,), 16, 0), ((0, 4), 0, 0)],
                         ids=["no-rows", "K=0", "N=0", "all-empty"])
def test_kernel_empty_sizes(lead, k, n):
    """Empty rows, an empty contraction (x W^T = 0: the output is the epilogue of 0) or no
    output columns: what torch returns, no launch error."""
    x, w, b, r, _ = make(lead, k, n, torch.float32)
    for act, res in (("gelu", None), (None, r)):
        y, _ = lin.linear_fwd(x, w, b, res, act, save_pre=True)
        torch.testing.assert_close(y, lin.linear_ref(x, w, b, res, act)[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act,res,bias", mode_params())
@pytest.mark.parametrize("lead,k,n", [pytest.param(*s, id=f"{s[1]}-{s[2]}") for s in SHAPES[:2]])
def test_op_autograd(lead, k, n, act, res, bias, dtype):
    x, w, b, r, dy = make(lead, k, n, dtype)
    tensors = [x, w, b if bias else None, r if res else None]

    def op(x, w, b, r):
        return lin.linear_op(x, w, b, r, act)

    def same(x, w, b, r):
        return lin.linear_ref(x, w, b, r, act)[0]

    def f64(x, w, b, r):
        return ref64(x, w, b, r, act)

    y, got = grads(op, tensors, dy)
    y64, want64 = grads(f64, [t.double() if t is not None else None for t in tensors], dy)
    ys, want = grads(same, tensors, dy)
    m = x.numel() // k
    assert_rule(y, y64, ys, ATOL[dtype] * math.sqrt(k), f"{dtype} y")
    names = [nm for nm, t in zip(("x", "weight", "bias", "residual"), tensors) if t is not None]
    for name, g, g64, gs in zip(names, got, want64, want):
        scale = math.sqrt(n) if name == "x" else math.sqrt(m)
        assert_rule(g, g64, gs, ATOL[dtype] * scale, f"{dtype} d{name}")


def test_backward_recomputes_without_saved_pre_activation():
    """save_pre=False under autograd (a caller that skipped it): the backward recomputes h."""
    x, w, b, _, dy = make((5,), 8, 6, torch.float32, device="cpu")
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    y, h = torch.ops.clippo.linear(*leaves, None, "gelu", False)
    assert h.numel() == 0
    got = torch.autograd.grad(y, leaves, dy)
    leaves64 = [t.double().requires_grad_() for t in (x, w, b)]
    want = torch.autograd.grad(ref64(*leaves64, None, "gelu"), leaves64, dy.double())
    for g, e in zip(got, want):
        torch.testing.assert_close(g.double(), e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if ON_GPU else []))
def test_opcheck_and_compile(device):
    x, w, b, r, dy = make((2, 5), 24, 16, torch.float32, device=device)
    x, w, b, r = (t.requires_grad_() for t in (x, w, b, r))
    for act, save, res in (("gelu", True, None), ("gelu", False, r), (None, False, r)):
        torch.library.opcheck(torch.ops.clippo.linear.default, (x, w, b, res, act, save))
    torch._dynamo.reset()
    with K.use_backend("triton" if K.HAS_TRITON else "auto"):
        def fn(x, w, b, r):
            h = K.linear(x, w, b, activation="gelu")
            return K.linear(h, w.t()[:16, :].contiguous() + 0, None, residual=r).square().sum()
        eager = torch.autograd.grad(fn(x, w, b, r), [x, w, b, r])
        got = torch.autograd.grad(torch.compile(fn, fullgraph=True)(x, w, b, r), [x, w, b, r])
    for g, e in zip(got, eager):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


def test_public_backends_fusion_switch_and_errors():
    x, w, b, r, _ = make((2, 3), 16, 8, torch.float32, device="cpu")
    want, _ = lin.linear_ref(x, w, b, r, "gelu")
    for name in ["torch", "auto"] + (["triton"] if K.HAS_TRITON else []):
        with K.use_backend(name):
            torch.testing.assert_close(K.linear(x, w, b, activation="gelu", residual=r), want)
    assert K.get_fusions() == ()
    with K.use_fusions("all"):
        assert K.get_fusions() == ("layer_norm", "linear")
        with K.use_fusions("linear"):
            assert K.get_fusions() == ("linear",)
    assert K.get_fusions() == ()
    with pytest.raises(ValueError, match="unknown clippo fusion"):
        K.set_fusions("linear,gemm")
    assert K.get_fusions() == ()  # unchanged by the bad call
    with K.set_fusions("layer_norm") as restore:
        assert K.get_fusions() == ("layer_norm",) and restore.previous == frozenset()
    assert K.get_fusions() == ()
    with pytest.raises(ValueError, match="activation"):
        K.linear(x, w, b, activation="relu")
    with pytest.raises(ValueError, match="residual must be"):
        torch.ops.clippo.linear(x, w, b, r[:, :1], None, False)
    with pytest.raises(ValueError, match="do not match"):
        torch.ops.clippo.linear(x, w[:, 1:], b, None, None, False)


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
@pytest.mark.gpu
def test_auto_runs_triton_only_when_enabled():
    """Under "auto" the fused linear is opt-in: the op is called only with the fusion on."""
    x, w, b, r, _ = make((4, 7), 64, 32, torch.bfloat16)
    calls = []
    orig = lin.linear_op
    lin.linear_op = lambda *a: calls.append(1) or orig(*a)
    try:
        with K.use_backend("auto"):
            K.linear(x, w, b, residual=r)
            assert not calls
            with K.use_fusions("linear"):
                K.linear(x, w, b, residual=r)
            assert calls
    finally:
        lin.linear_op = orig
