"""Dense layer with its epilogue fused into one Triton GEMM: y = act(x @ W^T + b) + residual.

The ViT's elementwise passes after its matmuls (bias + tanh-GELU after the MLP's first Dense,
the residual add after the attention output projection and after the MLP's second Dense) each
read and write a full activation tensor. Here they run on the fp32 accumulator before the one
store. act is tanh-GELU (flax's nn.gelu, F.gelu(approximate="tanh")) or none.

Backward: dh = dy * gelu'(h) (aten's gelu_backward), then dx = dh W, dW = dh^T x, db = sum dh
with torch matmuls; d(residual) = dy. h, the pre-activation, is stored by the forward only
when autograd will need it (`save_pre`); otherwise the backward recomputes it.

Layout as the other kernels: reference (`linear_ref`), kernel, launcher (`linear_fwd`), the op
`torch.ops.clippo.linear` with autograd, a CPU kernel and a fake kernel, then `linear_op()`.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._utils import (HAS_TRITON, config_kind, dot_precision, gemm_configs, interpret_for,
                     interpreted, launcher, tl, triton)
if HAS_TRITON:
    from ._utils import grouped_tile

ACTIVATIONS = (None, "gelu")


def linear_ref(x, weight, bias=None, residual=None, activation=None):
    """The unfused torch computation (what the model did before this kernel)."""
    y = F.linear(x, weight, bias)
    if activation == "gelu":
        y = F.gelu(y, approximate="tanh")
    return y if residual is None else residual + y


def _check(x, weight, bias, residual, activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"linear: activation must be one of {ACTIVATIONS}, got {activation!r}")
    if x.dim() < 1 or weight.dim() != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: x [..., K] and weight [N, K] do not match: "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    n = weight.shape[0]
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"linear: bias must be [{n}], got {tuple(bias.shape)}")
    out_shape = (*x.shape[:-1], n)
    if residual is not None and tuple(residual.shape) != out_shape:
        raise ValueError(f"linear: residual must be {out_shape}, got {tuple(residual.shape)}")
    for name, t in (("weight", weight), ("bias", bias), ("residual", residual)):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise ValueError(f"linear: {name} is {t.dtype} on {t.device}, "
                             f"x is {x.dtype} on {x.device}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"linear: x must be fp32/fp16/bf16, got {x.dtype}")
    return out_shape


if HAS_TRITON:
    # (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages); the first is the default when
    # autotuning is off. The usual Hopper GEMM tiles; "fp32" (exact products) needs smaller
    # ones. Each compiles for sm_90 without spills (tests/test_kernel_compile.py --all).
    _CONFIGS = {
        "half": [(128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (256, 128, 64, 8, 3),
                 (128, 128, 64, 4, 4), (64, 256, 64, 4, 4), (128, 64, 64, 4, 4)],
        "fp32": [(64, 64, 32, 4, 2), (128, 64, 32, 8, 2), (64, 32, 32, 4, 2)],
    }

    @triton.jit
    def _gelu_tanh(h):
        # 0.5 h (1 + tanh(u)) == h * sigmoid(2u), u = sqrt(2/pi) (h + 0.044715 h^3)
        u2 = 1.5957691216057308 * (h + 0.044715 * h * h * h)
        return h / (1.0 + tl.exp(-u2))

    @triton.jit
    def _linear_kernel(
        x_ptr, sxm, sxk,                    # x [M, K]
        w_ptr, swn, swk,                    # weight [N, K] (nn.Linear layout)
        b_ptr,                              # bias [N] (unused without HAS_BIAS)
        r_ptr, srm, srn,                    # residual [M, N] (unused without HAS_RES)
        y_ptr, sym, syn,                    # out [M, N]
        h_ptr, shm, shn,                    # pre-activation [M, N] (unused without SAVE_PRE)
        M, N, K,
        HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, GELU: tl.constexpr,
        SAVE_PRE: tl.constexpr, IN_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr,
    ):
        tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16 and BLOCK_K >= 16)
        pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)

        offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        mask_m = offs_m < M
        mask_n = offs_n < N
        a_ptrs = x_ptr + offs_m[:, None] * sxm + offs_k[None, :] * sxk
        w_ptrs = w_ptr + offs_n[None, :].to(tl.int64) * swn + offs_k[:, None] * swk

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            mask_k = offs_k < K - k0
            a = tl.load(a_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0)
            w = tl.load(w_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0)
            acc = tl.dot(a, w, acc, input_precision=IN_PRECISION)
            a_ptrs += BLOCK_K * sxk
            w_ptrs += BLOCK_K * swk

        mask = mask_m[:, None] & mask_n[None, :]
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0).to(tl.float32)[None, :]
        if SAVE_PRE:
            tl.store(h_ptr + offs_m[:, None] * shm + offs_n[None, :] * shn,
                     acc.to(h_ptr.dtype.element_ty), mask=mask)
        if GELU:
            acc = _gelu_tanh(acc)
        if HAS_RES:
            res = tl.load(r_ptr + offs_m[:, None] * srm + offs_n[None, :] * srn, mask=mask,
                          other=0)
            acc += res.to(tl.float32)
        tl.store(y_ptr + offs_m[:, None] * sym + offs_n[None, :] * syn,
                 acc.to(y_ptr.dtype.element_ty), mask=mask)

    _linear_tuned = {
        kind: triton.autotune(configs=gemm_configs(_CONFIGS[kind]),
                              key=["N", "K", "HAS_RES", "GELU", "SAVE_PRE"])(_linear_kernel)
        for kind in _CONFIGS}

# fixed blocks for the CPU interpreter (autotuning there would only cost time)
_INTERP = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}


def _rows(t, width):
    """[..., width] -> a 2-D [M, width] view (a copy only if no view exists); M explicit, as
    -1 is ambiguous when width is 0."""
    return t.reshape(math.prod(t.shape[:-1]), width)


def linear_fwd(x, weight, bias=None, residual=None, activation=None, save_pre=False):
    """Launch the kernel (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1).

    Returns (y, h): y = act(x W^T + b) + residual with x's dtype and shape [..., N]; h the
    pre-activation x W^T + b when save_pre and activation is "gelu", else an empty tensor.
    """
    out_shape = _check(x, weight, bias, residual, activation)
    n, k = weight.shape
    x2 = _rows(x, k)
    m = x2.shape[0]
    y = torch.empty((m, n), device=x.device, dtype=x.dtype)
    gelu = activation == "gelu"
    save = bool(save_pre and gelu)
    h = torch.empty((m, n) if save else (0,), device=x.device, dtype=x.dtype)
    if m and n:
        r2 = _rows(residual, n) if residual is not None else None
        hs = h.stride() if save else (0, 0)
        args = (x2, *x2.stride(), weight, *weight.stride(),
                bias if bias is not None else weight,
                r2 if r2 is not None else y, *(r2.stride() if r2 is not None else (0, 0)),
                y, *y.stride(), h if save else y, *hs, m, n, k)
        consts = dict(HAS_BIAS=bias is not None, HAS_RES=residual is not None, GELU=gelu,
                      SAVE_PRE=save, IN_PRECISION=dot_precision(x.dtype))
        if interpret_for(x):
            grid = (triton.cdiv(m, _INTERP["BLOCK_M"]) * triton.cdiv(n, _INTERP["BLOCK_N"]),)
            interpreted(_linear_kernel)[grid](*args, **consts, **_INTERP)
        else:
            def grid(meta):
                return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)
            launcher(_linear_tuned[config_kind(x.dtype)])[grid](*args, **consts)
    return y.reshape(out_shape), (h.reshape(out_shape) if save else h)


def linear_cpu(x, weight, bias, residual, activation, save_pre):
    """The op's CPU kernel (and the torch path of the CUDA op's decomposition on CPU)."""
    out_shape = _check(x, weight, bias, residual, activation)
    h = F.linear(x, weight, bias)
    save = bool(save_pre and activation == "gelu")
    y = F.gelu(h, approximate="tanh") if activation == "gelu" else h
    if residual is not None:
        y = residual + y
    return y.reshape(out_shape), (h if save else x.new_empty(0))


_OP = "clippo::linear"

if HAS_TRITON:
    @torch.library.triton_op(_OP, mutates_args=())
    def _linear_op(x: Tensor, weight: Tensor, bias: Optional[Tensor],
                   residual: Optional[Tensor], gelu: bool,
                   save_pre: bool) -> Tuple[Tensor, Tensor]:
        act = "gelu" if gelu else None
        if x.device.type != "cuda":  # torch.compile decomposes into this body on any device
            return linear_cpu(x, weight, bias, residual, act, save_pre)
        return linear_fwd(x, weight, bias, residual, act, save_pre)
else:
    @torch.library.custom_op(_OP, mutates_args=(), device_types="cpu")
    def _linear_op(x: Tensor, weight: Tensor, bias: Optional[Tensor],
                   residual: Optional[Tensor], gelu: bool,
                   save_pre: bool) -> Tuple[Tensor, Tensor]:
        raise AssertionError("unreachable: replaced by the CPU kernel below")

    @_linear_op.register_fake
    def _(x, weight, bias, residual, gelu, save_pre):
        out_shape = _check(x, weight, bias, residual, "gelu" if gelu else None)
        return (x.new_empty(out_shape),
                x.new_empty(out_shape) if save_pre and gelu else x.new_empty(0))


torch.library.register_kernel(
    _OP, "cpu", lambda x, w, b, r, gelu, save: linear_cpu(x, w, b, r, "gelu" if gelu else None,
                                                           save))


def _setup_context(ctx, inputs, output):
    x, weight, bias, residual, gelu, save_pre = inputs
    _, h = output
    ctx.gelu, ctx.has_bias, ctx.has_res = gelu, bias is not None, residual is not None
    ctx.save_for_backward(x, weight, h, bias)
    ctx.mark_non_differentiable(h)


def _backward(ctx, dy, dh_unused):
    x, weight, h, bias = ctx.saved_tensors
    k, n = weight.shape[1], weight.shape[0]
    dy2 = _rows(dy, n)
    if ctx.gelu:
        if h.numel() == 0 and dy2.shape[0]:  # forward ran without save_pre: recompute
            h = F.linear(x, weight, bias)
        dpre = torch.ops.aten.gelu_backward(dy2, _rows(h, n), approximate="tanh")
    else:
        dpre = dy2
    x2 = _rows(x, k)
    dx = (dpre @ weight).reshape(x.shape) if ctx.needs_input_grad[0] else None
    dw = dpre.t() @ x2 if ctx.needs_input_grad[1] else None
    db = dpre.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
    dres = dy if ctx.has_res and ctx.needs_input_grad[3] else None
    return dx, dw, db, dres, None, None


torch.library.register_autograd(_OP, _backward, setup_context=_setup_context)


def linear_op(x, weight, bias=None, residual=None, activation=None):
    """torch.ops.clippo.linear, output only: Triton on CUDA, torch on the CPU. Stores the
    pre-activation for the backward only when autograd records this call."""
    save = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias, residual))
    return torch.ops.clippo.linear(x, weight, bias, residual, activation == "gelu", save)[0]
