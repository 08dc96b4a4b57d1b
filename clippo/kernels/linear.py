"""Dense layer with its epilogue fused into one Triton GEMM: y = act(x @ W^T + b) + residual.

The ViT's elementwise passes after its matmuls (bias + tanh-GELU after the MLP's first Dense,
the residual add after the attention output projection and after the MLP's second Dense) each
read and write a full activation tensor. Here they run on the fp32 accumulator before the one
store. act is tanh-GELU (flax's nn.gelu, F.gelu(approximate="tanh")) or none.

Backward: dh = dy * gelu'(h) (aten's gelu_backward), then dx = dh W, dW = dh^T x, db = sum dh
with torch matmuls; d(residual) = dy. h, the pre-activation, is stored by the forward only
when autograd will need it (`save_pre`); otherwise the backward recomputes it.

Layout: the torch reference (`linear_ref`), the Triton kernel, the launcher (`linear_fwd`),
the op torch.ops.clippo.linear with autograd, then `linear_op()`.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._backend import HAS_TRITON
from ._triton import Kernel, define_op, dot_precision, tl, triton

if HAS_TRITON:
    from ._triton import gemm_tile

ACTIVATIONS = (None, "gelu")
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------------------------
# torch reference (the op's CPU kernel)
# --------------------------------------------------------------------------------------------


def check_args(x, weight, bias, residual, activation, kernel=True):
    """Validate the arguments, for the Triton kernel or (kernel=False: fp64 too) the
    reference; returns the output shape [..., N]. Raises ValueError naming the issue."""
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
    if x.dtype not in KERNEL_DTYPES + (() if kernel else (torch.float64,)):
        raise ValueError(f"linear: x must be fp32/fp16/bf16, got {x.dtype}")
    return out_shape


def linear_ref(x, weight, bias=None, residual=None, activation=None, save_pre=False):
    """(y, h): the unfused torch computation y = act(x W^T + b) + residual, and the
    pre-activation h when save_pre and activation is "gelu" (else an empty tensor)."""
    check_args(x, weight, bias, residual, activation, kernel=False)
    h = F.linear(x, weight, bias)
    y = F.gelu(h, approximate="tanh") if activation == "gelu" else h
    if residual is not None:
        y = residual + y
    return y, (h if save_pre and activation == "gelu" else x.new_empty(0))


# --------------------------------------------------------------------------------------------
# Triton kernel
# --------------------------------------------------------------------------------------------

if HAS_TRITON:
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
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):
        tl.static_assert(BLOCK_K >= 16)
        offs_m, mask_m, offs_n, mask_n = gemm_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
        offs_k = tl.arange(0, BLOCK_K)
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

    # Tables: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). "fp32" tiles are smaller:
    # fp32 operands need twice the registers and shared memory. The short rows serve the
    # Dense layers over one row per image (the MAP head's). Every row compiles for sm_80 and
    # sm_90 within shared memory and without register spills (tests/test_kernel_compile.py).
    _linear = Kernel(
        _linear_kernel, names=("BLOCK_M", "BLOCK_N", "BLOCK_K"),
        key=["N", "K", "HAS_RES", "GELU", "SAVE_PRE"],
        interpret={"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32}, tables={
            "half": [(128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 128, 32, 8, 4),
                     (64, 128, 64, 4, 4), (128, 64, 64, 4, 4), (64, 256, 32, 8, 3),
                     (32, 128, 64, 4, 4), (16, 128, 64, 4, 4)],
            "fp32": [(64, 64, 32, 4, 2), (128, 64, 32, 8, 2), (64, 32, 32, 4, 2),
                     (32, 64, 32, 4, 2), (16, 64, 32, 4, 2)]})


# --------------------------------------------------------------------------------------------
# launcher
# --------------------------------------------------------------------------------------------


def _rows(t, width):
    """[..., width] -> a 2-D [M, width] view (a copy only if no view exists); M explicit, as
    -1 is ambiguous when width is 0."""
    return t.reshape(math.prod(t.shape[:-1]), width)


def linear_fwd(x: Tensor, weight: Tensor, bias: Optional[Tensor], residual: Optional[Tensor],
               activation: Optional[str], save_pre: bool) -> Tuple[Tensor, Tensor]:
    """Launch the kernel (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1).

    Returns (y, h): y = act(x W^T + b) + residual with x's dtype and shape [..., N]; h the
    pre-activation x W^T + b when save_pre and activation is "gelu", else an empty tensor.
    """
    out_shape = check_args(x, weight, bias, residual, activation)
    n, k = weight.shape
    x2 = _rows(x, k)
    m = x2.shape[0]
    y = torch.empty((m, n), device=x.device, dtype=x.dtype)
    gelu = activation == "gelu"
    save = bool(save_pre and gelu)
    h = torch.empty((m, n) if save else (0,), device=x.device, dtype=x.dtype)
    if m and n:
        r2 = _rows(residual, n) if residual is not None else None
        # any tensor serves as the pointer of an absent optional input
        _linear(lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),),
                x2, *x2.stride(), weight, *weight.stride(), y if bias is None else bias,
                y if r2 is None else r2, *((0, 0) if r2 is None else r2.stride()),
                y, *y.stride(), h if save else y, *(h.stride() if save else (0, 0)), m, n, k,
                device=x.device, dtype=x.dtype, rows=m,
                HAS_BIAS=bias is not None, HAS_RES=r2 is not None, GELU=gelu, SAVE_PRE=save,
                IN_PRECISION=dot_precision(x.dtype), GROUP_M=8)
    return y.reshape(out_shape), (h.reshape(out_shape) if save else h)


# --------------------------------------------------------------------------------------------
# op
# --------------------------------------------------------------------------------------------


def _setup_context(ctx, inputs, output):
    x, weight, bias, residual, activation, save_pre = inputs
    _, h = output
    ctx.gelu = activation == "gelu"
    ctx.has_bias, ctx.has_res = bias is not None, residual is not None
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


linear_fwd_op = define_op("linear", linear_fwd, linear_ref, backward=_backward,
                          setup_context=_setup_context)


def linear_op(x, weight, bias=None, residual=None, activation=None):
    """torch.ops.clippo.linear, output only: Triton on CUDA, torch on the CPU. Stores the
    pre-activation for the backward only when autograd records this call."""
    save = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias, residual))
    return linear_fwd_op(x, weight, bias, residual, activation, save)[0]
