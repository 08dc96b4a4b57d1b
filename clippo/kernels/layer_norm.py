"""LayerNorm over the last dim in Triton, forward and backward (optional fusion).

y = (x - mean) * rstd * weight + bias, rstd = 1 / sqrt(var + eps), statistics in fp32, one
rounding at the store; y has x's dtype. The forward saves mean and rstd ([M] fp32); the
backward computes dx row by row and dweight/dbias as fp32 partial sums per program (summed
by torch), so nothing is accumulated with atomics.

Layout: the torch references (`layer_norm_fwd_ref`, `layer_norm_bwd_ref`), the Triton
kernels, the launchers (`layer_norm_fwd`, `layer_norm_bwd`), the ops
torch.ops.clippo.layer_norm_fwd (with autograd) / layer_norm_bwd, then `layer_norm_op()`.
"""
from typing import Tuple

import torch
from torch import Tensor

from ._backend import HAS_TRITON
from ._triton import Kernel, define_op, num_sms, tl, triton

MAX_WIDTH = 16384
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------------------------
# torch references (the ops' CPU kernels)
# --------------------------------------------------------------------------------------------


def check_args(x, weight, bias, kernel=True):
    """Validate the arguments, for the Triton kernels or (kernel=False: fp64 too, any width)
    the reference; returns the width D. Raises ValueError naming the issue."""
    d = x.shape[-1] if x.dim() else 0
    if x.dim() < 1 or d < 1:
        raise ValueError(f"layer_norm: x must have a last dim, got shape {tuple(x.shape)}")
    if tuple(weight.shape) != (d,) or tuple(bias.shape) != (d,):
        raise ValueError(f"layer_norm: weight and bias must be [{d}], got "
                         f"{tuple(weight.shape)} and {tuple(bias.shape)}")
    if x.dtype not in KERNEL_DTYPES + (() if kernel else (torch.float64,)):
        raise ValueError(f"layer_norm: x must be fp32/fp16/bf16, got {x.dtype}")
    if kernel and d > MAX_WIDTH:
        raise ValueError(f"layer_norm: width {d} is above the kernel's {MAX_WIDTH}")
    return d


def layer_norm_fwd_ref(x, weight, bias, eps):
    """(y like x, mean [M], rstd [M]) in torch; statistics in fp32 (fp64 for fp64 x)."""
    d = check_args(x, weight, bias, kernel=False)
    acc = torch.promote_types(x.dtype, torch.float32)
    x2 = x.reshape(-1, d).to(acc)
    mean = x2.mean(-1)
    rstd = torch.rsqrt(x2.var(-1, unbiased=False) + eps)
    y = (x2 - mean[:, None]) * rstd[:, None] * weight.to(acc) + bias.to(acc)
    return y.to(x.dtype).reshape(x.shape), mean.float(), rstd.float()


def layer_norm_bwd_ref(grad, x, weight, mean, rstd):
    """(dx like x, dweight, dbias) in torch from the saved statistics."""
    d = x.shape[-1]
    acc = torch.promote_types(x.dtype, torch.float32)
    x2, dy2 = x.reshape(-1, d).to(acc), grad.reshape(-1, d).to(acc)
    xhat = (x2 - mean.to(acc)[:, None]) * rstd.to(acc)[:, None]
    wdy = weight.to(acc) * dy2
    c1 = (xhat * wdy).mean(-1, keepdim=True)
    c2 = wdy.mean(-1, keepdim=True)
    dx = ((wdy - (xhat * c1 + c2)) * rstd.to(acc)[:, None]).to(x.dtype).reshape(x.shape)
    return dx, (dy2 * xhat).sum(0).to(weight.dtype), dy2.sum(0).to(weight.dtype)


# --------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------

if HAS_TRITON:
    @triton.jit
    def _layer_norm_fwd_kernel(
        x_ptr, sx,                          # x [M, D], row stride sx (unit column stride)
        w_ptr, b_ptr,                       # weight, bias [D]
        y_ptr, sy,                          # y [M, D]
        mean_ptr, rstd_ptr,                 # [M] fp32
        D, eps,
        BLOCK_D: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK_D)
        mask = cols < D
        x = tl.load(x_ptr + row * sx + cols, mask=mask, other=0).to(tl.float32)
        mean = tl.sum(x, 0) / D
        xc = tl.where(mask, x - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 0) / D + eps)
        w = tl.load(w_ptr + cols, mask=mask, other=0).to(tl.float32)
        b = tl.load(b_ptr + cols, mask=mask, other=0).to(tl.float32)
        y = xc * rstd * w + b
        tl.store(y_ptr + row * sy + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
        tl.store(mean_ptr + row, mean)
        tl.store(rstd_ptr + row, rstd)

    @triton.jit
    def _layer_norm_bwd_kernel(
        dy_ptr, sdy,                        # grad of y [M, D]
        x_ptr, sx,                          # x [M, D]
        w_ptr,                              # weight [D]
        mean_ptr, rstd_ptr,                 # [M] fp32
        dx_ptr, sdx,                        # grad of x [M, D]
        dw_ptr, db_ptr,                     # fp32 partials [PROGRAMS, D], contiguous
        M, D, ROWS_PER_PROGRAM,
        BLOCK_D: tl.constexpr,
    ):
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK_D)
        mask = cols < D
        w = tl.load(w_ptr + cols, mask=mask, other=0).to(tl.float32)
        dw = tl.zeros((BLOCK_D,), dtype=tl.float32)
        db = tl.zeros((BLOCK_D,), dtype=tl.float32)
        first = pid.to(tl.int64) * ROWS_PER_PROGRAM
        for i in range(0, ROWS_PER_PROGRAM):
            row = first + i
            if row < M:
                x = tl.load(x_ptr + row * sx + cols, mask=mask, other=0).to(tl.float32)
                dy = tl.load(dy_ptr + row * sdy + cols, mask=mask, other=0).to(tl.float32)
                mean = tl.load(mean_ptr + row)
                rstd = tl.load(rstd_ptr + row)
                xhat = tl.where(mask, (x - mean) * rstd, 0.0)
                wdy = w * dy
                c1 = tl.sum(xhat * wdy, 0) / D
                c2 = tl.sum(wdy, 0) / D
                dx = (wdy - (xhat * c1 + c2)) * rstd
                tl.store(dx_ptr + row * sdx + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
                dw += dy * xhat
                db += dy
        tl.store(dw_ptr + pid.to(tl.int64) * D + cols, dw, mask=mask)
        tl.store(db_ptr + pid.to(tl.int64) * D + cols, db, mask=mask)

    # one row per program: the width alone sets the launch (num_warps from BLOCK_D)
    _layer_norm_fwd = Kernel(_layer_norm_fwd_kernel)
    _layer_norm_bwd = Kernel(_layer_norm_bwd_kernel)


# --------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------


def _row_major(t, d):
    """[..., D] -> [M, D] with unit column stride (the kernels' layout), a view if possible."""
    t2 = t.reshape(-1, d)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _blocks(d):
    block_d = triton.next_power_of_2(d)
    return dict(BLOCK_D=block_d, num_warps=min(max(block_d // 256, 1), 16))


def layer_norm_fwd(x: Tensor, weight: Tensor, bias: Tensor,
                   eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Launch the forward kernel; returns (y like x, mean [M] fp32, rstd [M] fp32)."""
    d = check_args(x, weight, bias)
    weight, bias = weight.contiguous(), bias.contiguous()
    x2 = _row_major(x, d)
    m = x2.shape[0]
    y = torch.empty((m, d), device=x.device, dtype=x.dtype)
    mean = torch.empty(m, device=x.device, dtype=torch.float32)
    rstd = torch.empty(m, device=x.device, dtype=torch.float32)
    if m:
        _layer_norm_fwd(lambda meta: (m,), x2, x2.stride(0), weight, bias, y, y.stride(0),
                        mean, rstd, d, float(eps), device=x.device, **_blocks(d))
    return y.reshape(x.shape), mean, rstd


def layer_norm_bwd(grad: Tensor, x: Tensor, weight: Tensor, mean: Tensor,
                   rstd: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Launch the backward kernel; returns (dx like x, dweight, dbias) in weight's dtype."""
    d = x.shape[-1]
    weight, mean, rstd = weight.contiguous(), mean.contiguous(), rstd.contiguous()
    x2, dy2 = _row_major(x, d), _row_major(grad.to(x.dtype), d)
    m = x2.shape[0]
    dx = torch.empty((m, d), device=x.device, dtype=x.dtype)
    # a few programs per SM, each summing its rows' dweight/dbias (4 on the CPU interpreter)
    sms = num_sms(x.device.index or 0) if x.device.type == "cuda" else 1
    programs = max(1, min(m, 4 * sms))
    rows = triton.cdiv(m, programs) if m else 1
    dw = torch.zeros((programs, d), device=x.device, dtype=torch.float32)
    db = torch.zeros((programs, d), device=x.device, dtype=torch.float32)
    if m:
        _layer_norm_bwd(lambda meta: (programs,), dy2, dy2.stride(0), x2, x2.stride(0), weight,
                        mean, rstd, dx, dx.stride(0), dw, db, m, d, rows, device=x.device,
                        **_blocks(d))
    return dx.reshape(x.shape), dw.sum(0).to(weight.dtype), db.sum(0).to(weight.dtype)


# --------------------------------------------------------------------------------------------
# ops
# --------------------------------------------------------------------------------------------


def _setup_context(ctx, inputs, output):
    x, weight, bias, eps = inputs
    y, mean, rstd = output
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.mark_non_differentiable(mean, rstd)


def _backward(ctx, dy, dmean, drstd):
    x, weight, mean, rstd = ctx.saved_tensors
    dx, dw, db = layer_norm_bwd_op(dy, x, weight, mean, rstd)
    return dx, dw, db, None


layer_norm_bwd_op = define_op("layer_norm_bwd", layer_norm_bwd, layer_norm_bwd_ref)
layer_norm_fwd_op = define_op("layer_norm_fwd", layer_norm_fwd, layer_norm_fwd_ref,
                              backward=_backward, setup_context=_setup_context)


def layer_norm_op(x, weight, bias, eps=1e-6):
    """torch.ops.clippo.layer_norm_fwd, output only: Triton on CUDA, torch on the CPU."""
    return layer_norm_fwd_op(x, weight, bias, float(eps))[0]
