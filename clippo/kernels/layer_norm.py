"""LayerNorm over the last dim in Triton, forward and backward (optional fusion).

y = (x - mean) * rstd * weight + bias, rstd = 1 / sqrt(var + eps), statistics in fp32, one
rounding at the store; y has x's dtype. The forward saves mean and rstd ([M] fp32); the
backward computes dx row by row and dweight/dbias as fp32 partial sums per program (summed
by torch), so nothing is accumulated with atomics.

Layout as the other kernels: references (`layer_norm_ref`), kernels, launchers
(`layer_norm_fwd`, `layer_norm_bwd`), ops `torch.ops.clippo.layer_norm_fwd` /
`layer_norm_bwd` with autograd and CPU kernels, then `layer_norm_op()`.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._utils import HAS_TRITON, interpret_for, interpreted, launcher, num_sms, tl, triton

MAX_WIDTH = 16384


def layer_norm_ref(x, weight, bias, eps=1e-6):
    """F.layer_norm computed in fp32 (fp64 for fp64 inputs), returned in x.dtype."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = F.layer_norm(x.to(acc), x.shape[-1:], weight.to(acc), bias.to(acc), eps)
    return y.to(x.dtype)


def _check(x, weight, bias):
    d = x.shape[-1] if x.dim() else 0
    if x.dim() < 1 or d < 1:
        raise ValueError(f"layer_norm: x must have a last dim, got shape {tuple(x.shape)}")
    if tuple(weight.shape) != (d,) or tuple(bias.shape) != (d,):
        raise ValueError(f"layer_norm: weight and bias must be [{d}], got "
                         f"{tuple(weight.shape)} and {tuple(bias.shape)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"layer_norm: x must be fp32/fp16/bf16, got {x.dtype}")
    if d > MAX_WIDTH:
        raise ValueError(f"layer_norm: width {d} is above the kernel's {MAX_WIDTH}")
    return d


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


def _warps(block_d):
    return min(max(block_d // 256, 1), 16)


def layer_norm_fwd(x, weight, bias, eps=1e-6):
    """Launch the forward kernel; returns (y like x, mean [M] fp32, rstd [M] fp32)."""
    d = _check(x, weight, bias)
    weight, bias = weight.contiguous(), bias.contiguous()
    x2 = x.reshape(-1, d)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    y = torch.empty((m, d), device=x.device, dtype=x.dtype)
    mean = torch.empty(m, device=x.device, dtype=torch.float32)
    rstd = torch.empty(m, device=x.device, dtype=torch.float32)
    if m:
        block_d = triton.next_power_of_2(d)
        args = (x2, x2.stride(0), weight, bias, y, y.stride(0), mean, rstd, d, float(eps))
        if interpret_for(x):
            interpreted(_layer_norm_fwd_kernel)[(m,)](*args, BLOCK_D=block_d)
        else:
            launcher(_layer_norm_fwd_kernel)[(m,)](*args, BLOCK_D=block_d,
                                                   num_warps=_warps(block_d))
    return y.reshape(x.shape), mean, rstd


def layer_norm_bwd(dy, x, weight, mean, rstd):
    """Launch the backward kernel; returns (dx like x, dweight, dbias) in weight's dtype."""
    d = x.shape[-1]
    weight, mean, rstd = weight.contiguous(), mean.contiguous(), rstd.contiguous()
    x2 = x.reshape(-1, d)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    dy2 = dy.reshape(-1, d).to(x.dtype)
    if dy2.stride(-1) != 1:
        dy2 = dy2.contiguous()
    m = x2.shape[0]
    dx = torch.empty((m, d), device=x.device, dtype=x.dtype)
    interp = interpret_for(x)
    programs = max(1, min(m, 4 if interp else 4 * num_sms(x.device.index or 0)))
    rows = triton.cdiv(m, programs) if m else 1
    dw = torch.zeros((programs, d), device=x.device, dtype=torch.float32)
    db = torch.zeros((programs, d), device=x.device, dtype=torch.float32)
    if m:
        block_d = triton.next_power_of_2(d)
        args = (dy2, dy2.stride(0), x2, x2.stride(0), weight, mean, rstd, dx, dx.stride(0),
                dw, db, m, d, rows)
        if interp:
            interpreted(_layer_norm_bwd_kernel)[(programs,)](*args, BLOCK_D=block_d)
        else:
            launcher(_layer_norm_bwd_kernel)[(programs,)](*args, BLOCK_D=block_d,
                                                          num_warps=_warps(block_d))
    return (dx.reshape(x.shape), dw.sum(0).to(weight.dtype), db.sum(0).to(weight.dtype))


def _fwd_cpu(x, weight, bias, eps):
    d = _check(x, weight, bias)
    x2 = x.reshape(-1, d).float()
    mean = x2.mean(-1)
    rstd = torch.rsqrt(x2.var(-1, unbiased=False) + eps)
    y = ((x2 - mean[:, None]) * rstd[:, None] * weight.float() + bias.float()).to(x.dtype)
    return y.reshape(x.shape), mean, rstd


def _bwd_cpu(dy, x, weight, mean, rstd):
    d = x.shape[-1]
    x2, dy2 = x.reshape(-1, d).float(), dy.reshape(-1, d).float()
    xhat = (x2 - mean[:, None]) * rstd[:, None]
    wdy = weight.float() * dy2
    c1 = (xhat * wdy).mean(-1, keepdim=True)
    c2 = wdy.mean(-1, keepdim=True)
    dx = ((wdy - (xhat * c1 + c2)) * rstd[:, None]).to(x.dtype).reshape(x.shape)
    return dx, (dy2 * xhat).sum(0).to(weight.dtype), dy2.sum(0).to(weight.dtype)


_FWD = "clippo::layer_norm_fwd"
_BWD = "clippo::layer_norm_bwd"

if HAS_TRITON:
    @torch.library.triton_op(_FWD, mutates_args=())
    def _layer_norm_fwd_op(x: Tensor, weight: Tensor, bias: Tensor,
                           eps: float) -> Tuple[Tensor, Tensor, Tensor]:
        if x.device.type != "cuda":  # torch.compile decomposes into this body on any device
            return _fwd_cpu(x, weight, bias, eps)
        return layer_norm_fwd(x, weight, bias, eps)

    @torch.library.triton_op(_BWD, mutates_args=())
    def _layer_norm_bwd_op(dy: Tensor, x: Tensor, weight: Tensor, mean: Tensor,
                           rstd: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        if x.device.type != "cuda":
            return _bwd_cpu(dy, x, weight, mean, rstd)
        return layer_norm_bwd(dy, x, weight, mean, rstd)
else:
    @torch.library.custom_op(_FWD, mutates_args=(), device_types="cpu")
    def _layer_norm_fwd_op(x: Tensor, weight: Tensor, bias: Tensor,
                           eps: float) -> Tuple[Tensor, Tensor, Tensor]:
        raise AssertionError("unreachable: replaced by the CPU kernel below")

    @torch.library.custom_op(_BWD, mutates_args=(), device_types="cpu")
    def _layer_norm_bwd_op(dy: Tensor, x: Tensor, weight: Tensor, mean: Tensor,
                           rstd: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        raise AssertionError("unreachable: replaced by the CPU kernel below")

    @_layer_norm_fwd_op.register_fake
    def _(x, weight, bias, eps):
        m = x.numel() // max(x.shape[-1], 1)
        return (torch.empty_like(x), x.new_empty(m, dtype=torch.float32),
                x.new_empty(m, dtype=torch.float32))

    @_layer_norm_bwd_op.register_fake
    def _(dy, x, weight, mean, rstd):
        return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(weight)


torch.library.register_kernel(_FWD, "cpu", _fwd_cpu)
torch.library.register_kernel(_BWD, "cpu", _bwd_cpu)


def _setup_context(ctx, inputs, output):
    x, weight, bias, eps = inputs
    y, mean, rstd = output
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.mark_non_differentiable(mean, rstd)


def _backward(ctx, dy, dmean, drstd):
    x, weight, mean, rstd = ctx.saved_tensors
    dx, dw, db = torch.ops.clippo.layer_norm_bwd(dy, x, weight, mean, rstd)
    return dx, dw, db, None


torch.library.register_autograd(_FWD, _backward, setup_context=_setup_context)


def layer_norm_op(x, weight, bias, eps=1e-6):
    """torch.ops.clippo.layer_norm_fwd, output only: Triton on CUDA, torch on the CPU."""
    return torch.ops.clippo.layer_norm_fwd(x, weight, bias, float(eps))[0]
