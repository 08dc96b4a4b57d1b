"""Flash-style non-causal attention (forward and backward) in Triton.

out = softmax(scale * q @ k^T) @ v, q [B, H, Lq, Dh], k and v [B, H, Lk, Dh], any strides.

Forward: one program per (batch*head, BLOCK_M query rows) (batch*head on grid axis 0, which
has no 65535 limit); it streams K/V in BLOCK_N blocks
with the online softmax (exp2, fp32 running max / sum / accumulator) and stores the output
plus the row log-sum-exp in base 2 (`lse2 = log2 sum_j 2^(s_ij)` with s = scale*log2(e)*q.k),
which the backward uses to recompute the probabilities. Backward: a small kernel for
delta = rowsum(dO * O), one kernel for dK/dV (a program per key block loops over the query
blocks) and one for dQ (a program per query block loops over the key blocks); no atomics.

Supported: fp32/fp16/bf16 (q, k, v of one dtype), head dim 1..128 (64 and 128 are the tuned
cases; other sizes are padded inside the kernel to the next power of two >= 16 by masked
loads), any Lq >= 1 and Lk >= 1 (ragged last blocks are masked; Lq = 1 is the MAP head).
The launchers raise ValueError otherwise; `clippo.kernels.attention` falls back to
F.scaled_dot_product_attention for head dims above 128.

Layout: kernels, launchers (`attention_fwd`, `attention_bwd`), the reference
(`attention_ref`), custom ops `torch.ops.clippo.attention_fwd` / `attention_bwd` with autograd
and CPU kernels, then `attention_op()`.
"""
from typing import Tuple

import torch
from torch import Tensor

from ._utils import (HAS_TRITON, config_kind, dot_precision, interpret_for, interpreted,
                     launcher, tl, triton, tune_configs)

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 128


# --------------------------------------------------------------------------------------------
# torch references
# --------------------------------------------------------------------------------------------


def attention_ref(q, k, v, scale=None):
    """Naive attention: matmuls in the input dtype, softmax in fp32 (fp64 for fp64 inputs)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    s = (q @ k.transpose(-2, -1)).to(acc) * scale
    return s.softmax(-1).to(q.dtype) @ v


def _fwd_math(q, k, v, scale):
    """(out, lse2) in torch, the CPU kernel of clippo::attention_fwd."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    s = (q.to(acc) @ k.to(acc).transpose(-2, -1)) * scale
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse[..., None])
    out = (p @ v.to(acc)).to(q.dtype)
    return out, (lse * LOG2E).to(torch.float32)


def _bwd_math(do, q, k, v, out, lse2, scale):
    """(dq, dk, dv) in torch from the saved lse2, the CPU kernel of clippo::attention_bwd."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    q32, k32, v32, do32 = q.to(acc), k.to(acc), v.to(acc), do.to(acc)
    s = (q32 @ k32.transpose(-2, -1)) * scale
    p = torch.exp(s - lse2.to(acc)[..., None] / LOG2E)
    dv = p.transpose(-2, -1) @ do32
    dp = do32 @ v32.transpose(-2, -1)
    delta = (do32 * out.to(acc)).sum(-1, keepdim=True)
    ds = p * (dp - delta)
    dq = (ds @ k32) * scale
    dk = (ds.transpose(-2, -1) @ q32) * scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------


def check_args(q, k, v):
    """Validate shapes/dtypes; returns (B, H, Lq, Lk, Dh). Raises ValueError naming the issue."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"attention: {name} must be [B, H, L, Dh], got {tuple(t.shape)}")
    b, h, lq, dh = q.shape
    lk = k.shape[2]
    if k.shape[:2] != (b, h) or v.shape[:2] != (b, h):
        raise ValueError(f"attention: batch/heads differ: q {tuple(q.shape)}, k {tuple(k.shape)},"
                         f" v {tuple(v.shape)}")
    if k.shape[3] != dh or tuple(v.shape[2:]) != (lk, dh):
        raise ValueError(f"attention: k/v must be [B, H, Lk, {dh}], got k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (
            torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"attention: q, k, v must share one of fp32/fp16/bf16, got "
                         f"{q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError("attention: q, k, v are on different devices")
    if not 1 <= dh <= MAX_HEAD_DIM:
        raise ValueError(f"attention: head dim {dh} is not supported by the Triton kernel "
                         f"(1..{MAX_HEAD_DIM}; 64 and 128 are tuned)")
    if lq < 1 or lk < 1:
        raise ValueError(f"attention: empty sequence (Lq={lq}, Lk={lk})")
    return b, h, lq, lk, dh


def supported(q, k, v):
    """Whether the Triton kernel handles these inputs (else the caller uses torch)."""
    try:
        check_args(q, k, v)
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------

if HAS_TRITON:
    def _configs(pairs, names):
        # the first config is the conservative default used when autotuning is off
        return tune_configs([triton.Config(dict(zip(names, (bm, bn))), num_warps=w, num_stages=s)
                             for bm, bn, w, s in pairs])

    # (BLOCK_M, BLOCK_N, num_warps, num_stages); "half" = fp16/bf16 on the tensor cores,
    # "fp32" = exact fp32 products, no tensor cores: smaller tiles or the registers spill.
    # The first of each list (the default without autotuning) compiles for sm_90 without
    # spills at head dim 64 and 128 (tests/test_kernel_compile.py). The lists are short on
    # purpose: each autotune key (Lq, Lk, head dim) compiles and times every candidate once.
    _FWD_CONFIGS = {
        "half": _configs([
            (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 4, 4), (16, 64, 4, 2),
        ], ("BLOCK_M", "BLOCK_N")),
        "fp32": _configs([(32, 32, 8, 2), (64, 32, 8, 2), (16, 32, 8, 1), (16, 16, 4, 1)],
                         ("BLOCK_M", "BLOCK_N")),
    }
    _DKDV_CONFIGS = {
        "half": _configs([
            (32, 64, 4, 3), (64, 64, 8, 2), (32, 128, 8, 3), (16, 64, 4, 2),
        ], ("BLOCK_M", "BLOCK_N")),
        "fp32": _configs([(16, 32, 8, 2), (32, 32, 8, 2), (16, 16, 4, 2)],
                         ("BLOCK_M", "BLOCK_N")),
    }
    _DQ_CONFIGS = {
        "half": _configs([(64, 32, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3)],
                         ("BLOCK_M", "BLOCK_N")),
        "fp32": _configs([(32, 16, 4, 2), (32, 32, 4, 2), (16, 32, 4, 2)],
                         ("BLOCK_M", "BLOCK_N")),
    }

    @triton.jit
    def _head(bh, H, stride_b, stride_h):
        """Offset of (batch, head) = divmod(bh, H) in a tensor with these strides."""
        return (bh // H) * stride_b + (bh % H) * stride_h

    @triton.jit
    def _attn_fwd_kernel(
        q_ptr, sqb, sqh, sqm, sqd,          # q [B, H, Lq, Dh]
        k_ptr, skb, skh, skn, skd,          # k [B, H, Lk, Dh]
        v_ptr, svb, svh, svn, svd,          # v [B, H, Lk, Dh]
        o_ptr, sob, soh, som, sod,          # out [B, H, Lq, Dh]
        lse_ptr,                            # lse2 [B, H, Lq] fp32, contiguous
        H, LQ, LK, qk_scale,                # qk_scale = scale * log2(e)
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IN_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16 and BLOCK_D >= 16)
        bh = tl.program_id(0).to(tl.int64)  # batch*head on axis 0: no 65535 limit
        pid_m = tl.program_id(1)
        q_ptr += _head(bh, H, sqb, sqh)
        k_ptr += _head(bh, H, skb, skh)
        v_ptr += _head(bh, H, svb, svh)
        o_ptr += _head(bh, H, sob, soh)

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        mask_m = offs_m < LQ
        mask_d = offs_d < HEAD_DIM
        q = tl.load(q_ptr + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                    mask=mask_m[:, None] & mask_d[None, :], other=0)

        m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
        for n0 in range(0, LK, BLOCK_N):
            cols = n0 + offs_n
            mask_n = cols < LK
            kt = tl.load(k_ptr + cols[None, :] * skn + offs_d[:, None] * skd,
                         mask=mask_d[:, None] & mask_n[None, :], other=0)
            s = tl.dot(q, kt, input_precision=IN_PRECISION) * qk_scale
            s = tl.where(mask_n[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_ptr + cols[:, None] * svn + offs_d[None, :] * svd,
                        mask=mask_n[:, None] & mask_d[None, :], other=0)
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=IN_PRECISION)
            m_i = m_new

        acc = acc / l_i[:, None]
        tl.store(o_ptr + offs_m[:, None] * som + offs_d[None, :] * sod,
                 acc.to(o_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])
        tl.store(lse_ptr + bh * LQ + offs_m, m_i + tl.log2(l_i), mask=mask_m)

    @triton.jit
    def _attn_bwd_delta_kernel(
        o_ptr, sob, soh, som, sod,          # out [B, H, Lq, Dh]
        do_ptr, sdb, sdh, sdm, sdd,         # grad of out [B, H, Lq, Dh]
        delta_ptr,                          # [B, H, Lq] fp32, contiguous
        H, LQ,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    ):
        bh = tl.program_id(0).to(tl.int64)  # batch*head on axis 0: no 65535 limit
        pid_m = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        mask = (offs_m < LQ)[:, None] & (offs_d < HEAD_DIM)[None, :]
        o_ptr += _head(bh, H, sob, soh)
        do_ptr += _head(bh, H, sdb, sdh)
        o = tl.load(o_ptr + offs_m[:, None] * som + offs_d[None, :] * sod,
                    mask=mask, other=0).to(tl.float32)
        do = tl.load(do_ptr + offs_m[:, None] * sdm + offs_d[None, :] * sdd,
                     mask=mask, other=0).to(tl.float32)
        tl.store(delta_ptr + bh * LQ + offs_m, tl.sum(o * do, 1), mask=offs_m < LQ)

    @triton.jit
    def _attn_bwd_dkdv_kernel(
        q_ptr, sqb, sqh, sqm, sqd,          # q [B, H, Lq, Dh]
        k_ptr, skb, skh, skn, skd,          # k [B, H, Lk, Dh]
        v_ptr, svb, svh, svn, svd,          # v [B, H, Lk, Dh]
        do_ptr, sdb, sdh, sdm, sdd,         # grad of out [B, H, Lq, Dh]
        lse_ptr, delta_ptr,                 # [B, H, Lq] fp32, contiguous
        dk_ptr, dv_ptr,                     # [B, H, Lk, Dh], contiguous
        H, LQ, LK, scale, qk_scale,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IN_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16 and BLOCK_D >= 16)
        bh = tl.program_id(0).to(tl.int64)
        pid_n = tl.program_id(1)
        q_ptr += _head(bh, H, sqb, sqh)
        k_ptr += _head(bh, H, skb, skh)
        v_ptr += _head(bh, H, svb, svh)
        do_ptr += _head(bh, H, sdb, sdh)
        lse_ptr += bh * LQ
        delta_ptr += bh * LQ

        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        mask_n = offs_n < LK
        mask_d = offs_d < HEAD_DIM
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(k_ptr + offs_n[:, None] * skn + offs_d[None, :] * skd, mask=kv_mask, other=0)
        v = tl.load(v_ptr + offs_n[:, None] * svn + offs_d[None, :] * svd, mask=kv_mask, other=0)

        dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        for m0 in range(0, LQ, BLOCK_M):
            rows = m0 + offs_m
            mask_m = rows < LQ
            q_mask = mask_m[:, None] & mask_d[None, :]
            q = tl.load(q_ptr + rows[:, None] * sqm + offs_d[None, :] * sqd, mask=q_mask, other=0)
            do = tl.load(do_ptr + rows[:, None] * sdm + offs_d[None, :] * sdd, mask=q_mask,
                         other=0)
            lse = tl.load(lse_ptr + rows, mask=mask_m, other=0)
            delta = tl.load(delta_ptr + rows, mask=mask_m, other=0)
            # transposed scores: [BLOCK_N keys, BLOCK_M queries]
            st = tl.dot(k, tl.trans(q), input_precision=IN_PRECISION) * qk_scale
            pt = tl.exp2(st - lse[None, :])
            # padded query rows have q = do = 0, so they add nothing anyway; kept defensive
            pt = tl.where(mask_m[None, :], pt, 0.0)
            dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=IN_PRECISION)
            dpt = tl.dot(v, tl.trans(do), input_precision=IN_PRECISION)
            dst = pt * (dpt - delta[None, :])
            dk = tl.dot(dst.to(q.dtype), q, dk, input_precision=IN_PRECISION)

        dk = dk * scale
        out_off = bh * LK * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
        tl.store(dk_ptr + out_off, dk.to(dk_ptr.dtype.element_ty), mask=kv_mask)
        tl.store(dv_ptr + out_off, dv.to(dv_ptr.dtype.element_ty), mask=kv_mask)

    @triton.jit
    def _attn_bwd_dq_kernel(
        q_ptr, sqb, sqh, sqm, sqd,          # q [B, H, Lq, Dh]
        k_ptr, skb, skh, skn, skd,          # k [B, H, Lk, Dh]
        v_ptr, svb, svh, svn, svd,          # v [B, H, Lk, Dh]
        do_ptr, sdb, sdh, sdm, sdd,         # grad of out [B, H, Lq, Dh]
        lse_ptr, delta_ptr,                 # [B, H, Lq] fp32, contiguous
        dq_ptr,                             # [B, H, Lq, Dh], contiguous
        H, LQ, LK, scale, qk_scale,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IN_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16 and BLOCK_D >= 16)
        bh = tl.program_id(0).to(tl.int64)  # batch*head on axis 0: no 65535 limit
        pid_m = tl.program_id(1)
        q_ptr += _head(bh, H, sqb, sqh)
        k_ptr += _head(bh, H, skb, skh)
        v_ptr += _head(bh, H, svb, svh)
        do_ptr += _head(bh, H, sdb, sdh)

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        mask_m = offs_m < LQ
        mask_d = offs_d < HEAD_DIM
        q_mask = mask_m[:, None] & mask_d[None, :]
        q = tl.load(q_ptr + offs_m[:, None] * sqm + offs_d[None, :] * sqd, mask=q_mask, other=0)
        do = tl.load(do_ptr + offs_m[:, None] * sdm + offs_d[None, :] * sdd, mask=q_mask, other=0)
        lse = tl.load(lse_ptr + bh * LQ + offs_m, mask=mask_m, other=0)
        delta = tl.load(delta_ptr + bh * LQ + offs_m, mask=mask_m, other=0)

        dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
        for n0 in range(0, LK, BLOCK_N):
            cols = n0 + offs_n
            mask_n = cols < LK
            kv_mask = mask_d[:, None] & mask_n[None, :]
            kt = tl.load(k_ptr + cols[None, :] * skn + offs_d[:, None] * skd, mask=kv_mask, other=0)
            vt = tl.load(v_ptr + cols[None, :] * svn + offs_d[:, None] * svd, mask=kv_mask, other=0)
            s = tl.dot(q, kt, input_precision=IN_PRECISION) * qk_scale
            p = tl.exp2(s - lse[:, None])
            # padded key columns have k = 0, so they add nothing to dq anyway; kept defensive
            p = tl.where(mask_n[None, :], p, 0.0)
            dp = tl.dot(do, vt, input_precision=IN_PRECISION)
            ds = p * (dp - delta[:, None])
            dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq, input_precision=IN_PRECISION)

        dq = dq * scale
        out_off = bh * LQ * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
        tl.store(dq_ptr + out_off, dq.to(dq_ptr.dtype.element_ty), mask=q_mask)

    _KEY = ["LQ", "LK", "HEAD_DIM"]
    _attn_fwd_tuned = {
        kind: triton.autotune(cfgs, key=_KEY)(_attn_fwd_kernel)
        for kind, cfgs in _FWD_CONFIGS.items()}
    _attn_bwd_dkdv_tuned = {kind: triton.autotune(cfgs, key=_KEY)(_attn_bwd_dkdv_kernel)
                            for kind, cfgs in _DKDV_CONFIGS.items()}
    _attn_bwd_dq_tuned = {kind: triton.autotune(cfgs, key=_KEY)(_attn_bwd_dq_kernel)
                          for kind, cfgs in _DQ_CONFIGS.items()}



# fixed blocks for the CPU interpreter (autotuning there would only cost time)
_INTERP = {"BLOCK_M": 16, "BLOCK_N": 32}


# --------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------


def _block_d(dh):
    return max(16, triton.next_power_of_2(dh))


def _resolve_scale(q, scale):
    return q.shape[-1] ** -0.5 if scale is None else float(scale)


def attention_fwd(q, k, v, scale=None):
    """Launch the forward kernel; returns (out [B, H, Lq, Dh] with [B, Lq, H, Dh] memory layout,
    lse2 [B, H, Lq] fp32)."""
    b, h, lq, lk, dh = check_args(q, k, v)
    scale = _resolve_scale(q, scale)
    # [B, Lq, H, Dh] in memory: the model's merge of the heads, out.transpose(1, 2).reshape(
    # B, Lq, H * Dh), is then a view instead of a copy of the whole activation
    out = torch.empty((b, lq, h, dh), device=q.device, dtype=q.dtype).transpose(1, 2)
    lse = torch.empty((b, h, lq), device=q.device, dtype=torch.float32)
    args = (q, *q.stride(), k, *k.stride(), v, *v.stride(), out, *out.stride(), lse,
            h, lq, lk, scale * LOG2E)
    consts = dict(HEAD_DIM=dh, BLOCK_D=_block_d(dh), IN_PRECISION=dot_precision(q.dtype))
    if interpret_for(q):
        grid = (b * h, triton.cdiv(lq, _INTERP["BLOCK_M"]))
        interpreted(_attn_fwd_kernel)[grid](*args, **consts, **_INTERP)
    else:
        def grid(meta):
            return (b * h, triton.cdiv(lq, meta["BLOCK_M"]))
        launcher(_attn_fwd_tuned[config_kind(q.dtype)])[grid](*args, **consts)
    return out, lse


def attention_bwd(do, q, k, v, out, lse, scale=None):
    """Launch the backward kernels; returns (dq, dk, dv), contiguous, in q.dtype."""
    b, h, lq, lk, dh = check_args(q, k, v)
    if tuple(do.shape) != (b, h, lq, dh) or tuple(out.shape) != (b, h, lq, dh):
        raise ValueError(f"attention_bwd: grad/out must be [{b}, {h}, {lq}, {dh}], "
                         f"got {tuple(do.shape)} and {tuple(out.shape)}")
    scale = _resolve_scale(q, scale)
    do = do.to(q.dtype)
    lse = lse.contiguous()
    dq = torch.empty((b, h, lq, dh), device=q.device, dtype=q.dtype)
    dk = torch.empty((b, h, lk, dh), device=q.device, dtype=q.dtype)
    dv = torch.empty((b, h, lk, dh), device=q.device, dtype=q.dtype)
    delta = torch.empty((b, h, lq), device=q.device, dtype=torch.float32)
    block_d = _block_d(dh)
    interp = interpret_for(q)
    run = interpreted if interp else launcher

    delta_block = 16 if interp else 64
    run(_attn_bwd_delta_kernel)[(b * h, triton.cdiv(lq, delta_block))](
        out, *out.stride(), do, *do.stride(), delta, h, lq,
        HEAD_DIM=dh, BLOCK_D=block_d, BLOCK_M=delta_block)

    args = (q, *q.stride(), k, *k.stride(), v, *v.stride(), do, *do.stride(), lse, delta)
    sizes = (h, lq, lk, scale, scale * LOG2E)
    consts = dict(HEAD_DIM=dh, BLOCK_D=block_d, IN_PRECISION=dot_precision(q.dtype))
    if interp:
        interpreted(_attn_bwd_dkdv_kernel)[(b * h, triton.cdiv(lk, _INTERP["BLOCK_N"]))](
            *args, dk, dv, *sizes, **consts, **_INTERP)
        interpreted(_attn_bwd_dq_kernel)[(b * h, triton.cdiv(lq, _INTERP["BLOCK_M"]))](
            *args, dq, *sizes, **consts, **_INTERP)
    else:
        def grid_kv(meta):
            return (b * h, triton.cdiv(lk, meta["BLOCK_N"]))

        def grid_q(meta):
            return (b * h, triton.cdiv(lq, meta["BLOCK_M"]))
        kind = config_kind(q.dtype)
        launcher(_attn_bwd_dkdv_tuned[kind])[grid_kv](*args, dk, dv, *sizes, **consts)
        launcher(_attn_bwd_dq_tuned[kind])[grid_q](*args, dq, *sizes, **consts)
    return dq, dk, dv


# --------------------------------------------------------------------------------------------
# custom ops
# --------------------------------------------------------------------------------------------

_FWD = "clippo::attention_fwd"
_BWD = "clippo::attention_bwd"


def _attention_fwd_cpu(q, k, v, scale):
    check_args(q, k, v)
    return _fwd_math(q, k, v, scale)


def _attention_bwd_cpu(grad, q, k, v, out, lse, scale):
    check_args(q, k, v)
    dq, dk, dv = _bwd_math(grad, q, k, v, out, lse, scale)
    return dq.contiguous(), dk.contiguous(), dv.contiguous()


if HAS_TRITON:
    @torch.library.triton_op(_FWD, mutates_args=())
    def _attention_fwd_op(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tuple[Tensor, Tensor]:
        # torch.compile decomposes a triton_op into this body whatever the device, so the
        # CPU branch is needed here as well as in the registered CPU kernel
        if q.device.type != "cuda":
            return _attention_fwd_cpu(q, k, v, scale)
        return attention_fwd(q, k, v, scale)

    @torch.library.triton_op(_BWD, mutates_args=())
    def _attention_bwd_op(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                          lse: Tensor, scale: float) -> Tuple[Tensor, Tensor, Tensor]:
        if q.device.type != "cuda":
            return _attention_bwd_cpu(grad, q, k, v, out, lse, scale)
        return attention_bwd(grad, q, k, v, out, lse, scale)
else:  # no triton: the ops exist with CPU kernels only
    @torch.library.custom_op(_FWD, mutates_args=(), device_types="cpu")
    def _attention_fwd_op(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tuple[Tensor, Tensor]:
        raise AssertionError("unreachable: replaced by the CPU kernel below")

    @torch.library.custom_op(_BWD, mutates_args=(), device_types="cpu")
    def _attention_bwd_op(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                          lse: Tensor, scale: float) -> Tuple[Tensor, Tensor, Tensor]:
        raise AssertionError("unreachable: replaced by the CPU kernel below")

    @_attention_fwd_op.register_fake
    def _(q, k, v, scale):
        b, h, lq, lk, dh = check_args(q, k, v)
        return q.new_empty((b, h, lq, dh)), q.new_empty((b, h, lq), dtype=torch.float32)

    @_attention_bwd_op.register_fake
    def _(grad, q, k, v, out, lse, scale):
        return (q.new_empty(q.shape), q.new_empty(k.shape), q.new_empty(v.shape))


torch.library.register_kernel(_FWD, "cpu", _attention_fwd_cpu)
torch.library.register_kernel(_BWD, "cpu", _attention_bwd_cpu)


def _setup_context(ctx, inputs, output):
    q, k, v, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.scale = scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, grad_lse):
    # lse is an auxiliary output for the backward: it is marked non-differentiable
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = torch.ops.clippo.attention_bwd(grad_out, q, k, v, out, lse, ctx.scale)
    return dq, dk, dv, None


torch.library.register_autograd(_FWD, _backward, setup_context=_setup_context)


def attention_op(q, k, v, scale=None):
    """torch.ops.clippo.attention_fwd, output only: Triton on CUDA, torch on the CPU."""
    return torch.ops.clippo.attention_fwd(q, k, v, _resolve_scale(q, scale))[0]
