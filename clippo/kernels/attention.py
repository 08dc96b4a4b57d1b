"""Flash-style non-causal attention (forward and backward) in Triton.

out = softmax(scale * q @ k^T) @ v, q [B, H, Lq, Dh], k and v [B, H, Lk, Dh], any strides.
With `lengths` (int [B], each in 1..Lk) only the first lengths[b] keys of batch row b are
attended to (a key-padding mask: sequences of different lengths padded at the end); the
padded keys get zero dk and dv, and padded query rows still attend to the valid keys, so they
stay finite (the model discards them).

Forward: one program per (batch*head, BLOCK_M query rows) (batch*head on grid axis 0, which
has no 65535 limit); it streams K/V in BLOCK_N blocks with the online softmax (exp2, fp32
running max / sum / accumulator) and stores the output plus the row log-sum-exp in base 2
(`lse2 = log2 sum_j 2^(s_ij)` with s = scale*log2(e)*q.k), which the backward uses to
recompute the probabilities. Backward: a small kernel for delta = rowsum(dO * O), one kernel
for dK/dV (a program per key block loops over the query blocks) and one for dQ (a program per
query block loops over the key blocks); no atomics.

Supported: fp32/fp16/bf16 (q, k, v of one dtype), head dim 1..128 (64 and 128 are the tuned
cases; other sizes are padded inside the kernel to the next power of two >= 16 by masked
loads), any Lq >= 1 and Lk >= 1 (ragged last blocks are masked; Lq = 1 is the MAP head).
The launchers raise ValueError otherwise; `clippo.kernels.attention` falls back to
F.scaled_dot_product_attention for head dims above 128.

Layout: the torch references (`attention_fwd_ref`, `attention_bwd_ref`), the Triton kernels,
the launchers (`attention_fwd`, `attention_bwd`), the ops torch.ops.clippo.attention_fwd /
attention_bwd with autograd, then `attention_op()`.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from ._backend import HAS_TRITON
from ._triton import Kernel, define_op, dot_precision, tl, triton

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 128
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------------------------
# torch references (the ops' CPU kernels)
# --------------------------------------------------------------------------------------------


def check_args(q, k, v, kernel=True):
    """Validate shapes/dtypes, for the Triton kernels or (kernel=False: fp64 too, any head dim)
    the reference; returns (B, H, Lq, Lk, Dh). Raises ValueError naming the issue."""
    dtypes = KERNEL_DTYPES if kernel else KERNEL_DTYPES + (torch.float64,)
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
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in dtypes:
        names = "/".join(str(d).split(".")[-1] for d in dtypes)
        raise ValueError(f"attention: q, k, v must share one of {names}, got "
                         f"{q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError("attention: q, k, v are on different devices")
    if lq < 1 or lk < 1:
        raise ValueError(f"attention: empty sequence (Lq={lq}, Lk={lk})")
    if kernel and not 1 <= dh <= MAX_HEAD_DIM:
        raise ValueError(f"attention: head dim {dh} is not supported by the Triton kernel "
                         f"(1..{MAX_HEAD_DIM}; 64 and 128 are tuned)")
    return b, h, lq, lk, dh


def key_padding(k, lengths):
    """bool [B, 1, 1, Lk]: True for the keys within each row's length (None: no lengths)."""
    if lengths is None:
        return None
    cols = torch.arange(k.shape[2], device=k.device)
    return (cols < lengths.to(k.device)[:, None])[:, None, None, :]


def attention_fwd_ref(q, k, v, scale, lengths=None):
    """(out, lse2) in torch, computed in fp32 (fp64 for fp64 inputs)."""
    check_args(q, k, v, kernel=False)
    acc = torch.promote_types(q.dtype, torch.float32)
    s = (q.to(acc) @ k.to(acc).transpose(-2, -1)) * scale
    if lengths is not None:
        s = s.masked_fill(~key_padding(k, lengths), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    out = torch.exp(s - lse[..., None]) @ v.to(acc)
    return out.to(q.dtype), (lse * LOG2E).float()


def attention_bwd_ref(grad, q, k, v, out, lse2, scale, lengths=None):
    """(dq, dk, dv) in torch from the saved lse2, computed in fp32 (fp64 for fp64 inputs);
    contiguous, in q's dtype."""
    check_args(q, k, v, kernel=False)
    acc = torch.promote_types(q.dtype, torch.float32)
    q32, k32, v32, do32 = q.to(acc), k.to(acc), v.to(acc), grad.to(acc)
    p = torch.exp((q32 @ k32.transpose(-2, -1)) * scale - lse2.to(acc)[..., None] / LOG2E)
    if lengths is not None:
        p = p.masked_fill(~key_padding(k, lengths), 0.0)
    dv = p.transpose(-2, -1) @ do32
    delta = (do32 * out.to(acc)).sum(-1, keepdim=True)
    ds = p * (do32 @ v32.transpose(-2, -1) - delta)
    dq = (ds @ k32) * scale
    dk = (ds.transpose(-2, -1) @ q32) * scale
    return tuple(g.to(q.dtype).contiguous() for g in (dq, dk, dv))


# --------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------

if HAS_TRITON:
    @triton.jit
    def _range(start, end, BLOCK: tl.constexpr):
        """Indices start .. start + BLOCK - 1, and which of them are below `end`."""
        offs = start + tl.arange(0, BLOCK)
        return offs, offs < end

    @triton.jit
    def _tile(ptr, rows, cols, s_row, s_col, mask_rows, mask_cols):
        """The [rows, cols] tile at ptr for these strides; entries outside the masks read 0."""
        return tl.load(ptr + rows[:, None] * s_row + cols[None, :] * s_col,
                       mask=mask_rows[:, None] & mask_cols[None, :], other=0)

    @triton.jit
    def _head(ptr, bh, H, stride_b, stride_h):
        """ptr moved to (batch, head) = divmod(bh, H) of a tensor with these strides."""
        return ptr + (bh // H) * stride_b + (bh % H) * stride_h

    @triton.jit
    def _keys(len_ptr, bh, H, LK, HAS_LENGTHS: tl.constexpr):
        """The keys this batch row attends to: min(lengths[b], Lk) with lengths, else Lk (the
        loops over key blocks stop there, so padding costs no work)."""
        if HAS_LENGTHS:
            LK = tl.minimum(tl.load(len_ptr + bh // H).to(tl.int32), LK)
        return LK

    @triton.jit
    def _query_block(q_ptr, sqb, sqh, sqm, sqd, H, LQ, HEAD_DIM, BLOCK_M: tl.constexpr,
                     BLOCK_D: tl.constexpr):
        """This program's batch*head (grid axis 0, which has no 65535 limit) and query rows
        (axis 1): (bh, rows, row mask, head dims, head-dim mask, the q tile)."""
        bh = tl.program_id(0).to(tl.int64)
        offs_m, mask_m = _range(tl.program_id(1) * BLOCK_M, LQ, BLOCK_M)
        offs_d, mask_d = _range(0, HEAD_DIM, BLOCK_D)
        q = _tile(_head(q_ptr, bh, H, sqb, sqh), offs_m, offs_d, sqm, sqd, mask_m, mask_d)
        return bh, offs_m, mask_m, offs_d, mask_d, q

    @triton.jit
    def _attn_fwd_kernel(
        q_ptr, sqb, sqh, sqm, sqd,          # q [B, H, Lq, Dh]
        k_ptr, skb, skh, skn, skd,          # k [B, H, Lk, Dh]
        v_ptr, svb, svh, svn, svd,          # v [B, H, Lk, Dh]
        o_ptr, sob, soh, som, sod,          # out [B, H, Lq, Dh]
        lse_ptr, H, LQ, LK, qk_scale,       # lse2 [B, H, Lq] fp32; qk_scale = scale * log2(e)
        len_ptr,                            # lengths [B] (read only with HAS_LENGTHS)
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IN_PRECISION: tl.constexpr,
        HAS_LENGTHS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16 and BLOCK_D >= 16)
        bh, offs_m, mask_m, offs_d, mask_d, q = _query_block(
            q_ptr, sqb, sqh, sqm, sqd, H, LQ, HEAD_DIM, BLOCK_M, BLOCK_D)
        k_ptr = _head(k_ptr, bh, H, skb, skh)
        v_ptr = _head(v_ptr, bh, H, svb, svh)
        LK = _keys(len_ptr, bh, H, LK, HAS_LENGTHS)

        m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
        for n0 in range(0, LK, BLOCK_N):
            cols, mask_n = _range(n0, LK, BLOCK_N)
            kt = _tile(k_ptr, offs_d, cols, skd, skn, mask_d, mask_n)
            s = tl.dot(q, kt, input_precision=IN_PRECISION) * qk_scale
            s = tl.where(mask_n[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = _tile(v_ptr, cols, offs_d, svn, svd, mask_n, mask_d)
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=IN_PRECISION)
            m_i = m_new

        acc = acc / l_i[:, None]
        tl.store(_head(o_ptr, bh, H, sob, soh) + offs_m[:, None] * som + offs_d[None, :] * sod,
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
        bh, offs_m, mask_m, offs_d, mask_d, o = _query_block(
            o_ptr, sob, soh, som, sod, H, LQ, HEAD_DIM, BLOCK_M, BLOCK_D)
        do = _tile(_head(do_ptr, bh, H, sdb, sdh), offs_m, offs_d, sdm, sdd, mask_m, mask_d)
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
        tl.store(delta_ptr + bh * LQ + offs_m, delta, mask=mask_m)

    @triton.jit
    def _attn_bwd_dkdv_kernel(
        k_ptr, skb, skh, skn, skd,          # k [B, H, Lk, Dh]
        v_ptr, svb, svh, svn, svd,          # v [B, H, Lk, Dh]
        q_ptr, sqb, sqh, sqm, sqd,          # q [B, H, Lq, Dh]
        do_ptr, sdb, sdh, sdm, sdd,         # grad of out [B, H, Lq, Dh]
        lse_ptr, delta_ptr,                 # [B, H, Lq] fp32, contiguous
        dk_ptr, dv_ptr,                     # [B, H, Lk, Dh], contiguous
        H, LQ, LK, scale, qk_scale,
        len_ptr,                            # lengths [B] (read only with HAS_LENGTHS)
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IN_PRECISION: tl.constexpr,
        HAS_LENGTHS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """A program per (batch*head, key block) loops over the query blocks. (Arguments:
        the tensors of this program's block first, then those it streams.) Padded keys (at
        or past the row's length) get dk = dv = 0 without looping."""
        tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16 and BLOCK_D >= 16)
        bh = tl.program_id(0).to(tl.int64)
        offs_n, mask_n = _range(tl.program_id(1) * BLOCK_N, LK, BLOCK_N)
        keys = _keys(len_ptr, bh, H, LK, HAS_LENGTHS)
        mask_valid = offs_n < keys
        offs_d, mask_d = _range(0, HEAD_DIM, BLOCK_D)
        k = _tile(_head(k_ptr, bh, H, skb, skh), offs_n, offs_d, skn, skd, mask_valid, mask_d)
        v = _tile(_head(v_ptr, bh, H, svb, svh), offs_n, offs_d, svn, svd, mask_valid, mask_d)
        q_ptr = _head(q_ptr, bh, H, sqb, sqh)
        do_ptr = _head(do_ptr, bh, H, sdb, sdh)

        dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        q_end = tl.where(tl.program_id(1) * BLOCK_N < keys, LQ, 0)
        for m0 in range(0, q_end, BLOCK_M):
            rows, mask_m = _range(m0, LQ, BLOCK_M)
            q = _tile(q_ptr, rows, offs_d, sqm, sqd, mask_m, mask_d)
            do = _tile(do_ptr, rows, offs_d, sdm, sdd, mask_m, mask_d)
            lse = tl.load(lse_ptr + bh * LQ + rows, mask=mask_m, other=0)
            delta = tl.load(delta_ptr + bh * LQ + rows, mask=mask_m, other=0)
            # transposed scores: [BLOCK_N keys, BLOCK_M queries]
            pt = tl.exp2(tl.dot(k, tl.trans(q), input_precision=IN_PRECISION) * qk_scale
                         - lse[None, :])
            # padded query rows have q = do = 0, so they add nothing anyway; kept defensive
            pt = tl.where(mask_valid[:, None] & mask_m[None, :], pt, 0.0)
            dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=IN_PRECISION)
            dpt = tl.dot(v, tl.trans(do), input_precision=IN_PRECISION)
            dk = tl.dot((pt * (dpt - delta[None, :])).to(q.dtype), q, dk,
                        input_precision=IN_PRECISION)

        out_off = bh * LK * HEAD_DIM + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
        kv_mask = mask_n[:, None] & mask_d[None, :]
        tl.store(dk_ptr + out_off, (dk * scale).to(dk_ptr.dtype.element_ty), mask=kv_mask)
        tl.store(dv_ptr + out_off, dv.to(dv_ptr.dtype.element_ty), mask=kv_mask)

    @triton.jit
    def _attn_bwd_dq_kernel(
        q_ptr, sqb, sqh, sqm, sqd,          # q [B, H, Lq, Dh]
        do_ptr, sdb, sdh, sdm, sdd,         # grad of out [B, H, Lq, Dh]
        lse_ptr, delta_ptr,                 # [B, H, Lq] fp32, contiguous
        k_ptr, skb, skh, skn, skd,          # k [B, H, Lk, Dh]
        v_ptr, svb, svh, svn, svd,          # v [B, H, Lk, Dh]
        dq_ptr,                             # [B, H, Lq, Dh], contiguous
        H, LQ, LK, scale, qk_scale,
        len_ptr,                            # lengths [B] (read only with HAS_LENGTHS)
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IN_PRECISION: tl.constexpr,
        HAS_LENGTHS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """A program per (batch*head, query block) loops over the (valid) key blocks."""
        tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16 and BLOCK_D >= 16)
        bh, offs_m, mask_m, offs_d, mask_d, q = _query_block(
            q_ptr, sqb, sqh, sqm, sqd, H, LQ, HEAD_DIM, BLOCK_M, BLOCK_D)
        do = _tile(_head(do_ptr, bh, H, sdb, sdh), offs_m, offs_d, sdm, sdd, mask_m, mask_d)
        lse = tl.load(lse_ptr + bh * LQ + offs_m, mask=mask_m, other=0)
        delta = tl.load(delta_ptr + bh * LQ + offs_m, mask=mask_m, other=0)
        k_ptr = _head(k_ptr, bh, H, skb, skh)
        v_ptr = _head(v_ptr, bh, H, svb, svh)
        LK = _keys(len_ptr, bh, H, LK, HAS_LENGTHS)

        dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
        for n0 in range(0, LK, BLOCK_N):
            cols, mask_n = _range(n0, LK, BLOCK_N)
            kt = _tile(k_ptr, offs_d, cols, skd, skn, mask_d, mask_n)
            vt = _tile(v_ptr, offs_d, cols, svd, svn, mask_d, mask_n)
            p = tl.exp2(tl.dot(q, kt, input_precision=IN_PRECISION) * qk_scale - lse[:, None])
            # padded key columns have k = 0, so they add nothing to dq anyway; kept defensive
            p = tl.where(mask_n[None, :], p, 0.0)
            dp = tl.dot(do, vt, input_precision=IN_PRECISION)
            dq = tl.dot((p * (dp - delta[:, None])).to(kt.dtype), tl.trans(kt), dq,
                        input_precision=IN_PRECISION)

        out_off = bh * LQ * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
        tl.store(dq_ptr + out_off, (dq * scale).to(dq_ptr.dtype.element_ty),
                 mask=mask_m[:, None] & mask_d[None, :])

    # Tables: (BLOCK_M, BLOCK_N, num_warps, num_stages). "fp32" tiles are smaller (without
    # tensor cores, or with TF32's, the fp32 operands need twice the registers). Each table
    # has a BLOCK_M = 16 row for the MAP head's single query. Every row compiles for sm_80 and
    # sm_90 within shared memory and without register spills (tests/test_kernel_compile.py).
    # The lists are short on purpose: each autotune key (Lq, Lk, head dim, row bucket) times
    # every candidate once.
    _BLOCKS = ("BLOCK_M", "BLOCK_N")
    _KEY = ["LQ", "LK", "HEAD_DIM"]
    _INTERP = {"BLOCK_M": 16, "BLOCK_N": 32}
    _attn_fwd = Kernel(
        _attn_fwd_kernel, names=_BLOCKS, key=_KEY, interpret=_INTERP, tables={
            "half": [(128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 8, 4),
                     (16, 64, 4, 2)],
            "fp32": [(32, 32, 8, 2), (16, 32, 8, 1), (16, 16, 4, 1)]})
    _attn_bwd_delta = Kernel(_attn_bwd_delta_kernel, interpret={"BLOCK_M": 16},
                             fixed={"BLOCK_M": 64})
    _attn_bwd_dkdv = Kernel(
        _attn_bwd_dkdv_kernel, names=_BLOCKS, key=_KEY, interpret=_INTERP, tables={
            "half": [(32, 64, 8, 3), (32, 64, 4, 2), (16, 128, 8, 2), (16, 64, 4, 2)],
            "fp32": [(16, 32, 8, 2), (16, 16, 4, 2)]})
    _attn_bwd_dq = Kernel(
        _attn_bwd_dq_kernel, names=_BLOCKS, key=_KEY, interpret=_INTERP, tables={
            "half": [(64, 32, 4, 3), (64, 64, 8, 3), (32, 64, 4, 3), (16, 64, 4, 2)],
            "fp32": [(32, 16, 4, 2), (32, 32, 4, 2), (16, 32, 8, 2)]})


# --------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------


def _block_d(dh):
    return max(16, triton.next_power_of_2(dh))


def _check_lengths(lengths, b):
    """lengths as a contiguous int32 tensor on the device (or None); shape [B] is required
    (the values, 1..Lk, are not read back to the host: that would sync)."""
    if lengths is None:
        return None
    if tuple(lengths.shape) != (b,) or lengths.is_floating_point() or lengths.is_complex():
        raise ValueError(f"attention: lengths must be an integer tensor [{b}], got "
                         f"{lengths.dtype} {tuple(lengths.shape)}")
    return lengths.to(torch.int32).contiguous()


def attention_fwd(q: Tensor, k: Tensor, v: Tensor, scale: float,
                  lengths: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Launch the forward kernel; returns (out [B, H, Lq, Dh] with [B, Lq, H, Dh] memory layout,
    lse2 [B, H, Lq] fp32)."""
    b, h, lq, lk, dh = check_args(q, k, v)
    lengths = _check_lengths(lengths, b)
    # [B, Lq, H, Dh] in memory: the model's merge of the heads, out.transpose(1, 2).reshape(
    # B, Lq, H * Dh), is then a view instead of a copy of the whole activation
    out = torch.empty((b, lq, h, dh), device=q.device, dtype=q.dtype).transpose(1, 2)
    lse = torch.empty((b, h, lq), device=q.device, dtype=torch.float32)
    _attn_fwd(lambda meta: (b * h, triton.cdiv(lq, meta["BLOCK_M"])),
              q, *q.stride(), k, *k.stride(), v, *v.stride(), out, *out.stride(), lse,
              h, lq, lk, scale * LOG2E, lse if lengths is None else lengths,
              device=q.device, dtype=q.dtype, rows=lq, HEAD_DIM=dh, BLOCK_D=_block_d(dh),
              IN_PRECISION=dot_precision(q.dtype), HAS_LENGTHS=lengths is not None)
    return out, lse


def attention_bwd(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse2: Tensor,
                  scale: float, lengths: Optional[Tensor] = None
                  ) -> Tuple[Tensor, Tensor, Tensor]:
    """Launch the backward kernels; returns (dq, dk, dv), contiguous, in q.dtype."""
    b, h, lq, lk, dh = check_args(q, k, v)
    lengths = _check_lengths(lengths, b)
    if tuple(grad.shape) != (b, h, lq, dh) or tuple(out.shape) != (b, h, lq, dh):
        raise ValueError(f"attention_bwd: grad/out must be [{b}, {h}, {lq}, {dh}], "
                         f"got {tuple(grad.shape)} and {tuple(out.shape)}")
    grad = grad.to(q.dtype)
    lse2 = lse2.contiguous()
    dq = torch.empty((b, h, lq, dh), device=q.device, dtype=q.dtype)
    dk = torch.empty((b, h, lk, dh), device=q.device, dtype=q.dtype)
    dv = torch.empty((b, h, lk, dh), device=q.device, dtype=q.dtype)
    delta = torch.empty((b, h, lq), device=q.device, dtype=torch.float32)
    launch = dict(device=q.device, dtype=q.dtype, rows=lq, HEAD_DIM=dh, BLOCK_D=_block_d(dh))

    def over_queries(meta):
        return (b * h, triton.cdiv(lq, meta["BLOCK_M"]))

    _attn_bwd_delta(over_queries, out, *out.stride(), grad, *grad.stride(), delta, h, lq,
                    **launch)
    keys = (k, *k.stride(), v, *v.stride())
    queries = (q, *q.stride(), grad, *grad.stride(), lse2, delta)
    sizes = (h, lq, lk, scale, scale * LOG2E, lse2 if lengths is None else lengths)
    launch["IN_PRECISION"] = dot_precision(q.dtype)
    launch["HAS_LENGTHS"] = lengths is not None
    _attn_bwd_dkdv(lambda meta: (b * h, triton.cdiv(lk, meta["BLOCK_N"])), *keys, *queries,
                   dk, dv, *sizes, **launch)
    _attn_bwd_dq(over_queries, *queries, *keys, dq, *sizes, **launch)
    return dq, dk, dv


# --------------------------------------------------------------------------------------------
# ops
# --------------------------------------------------------------------------------------------


def _setup_context(ctx, inputs, output):
    q, k, v, scale, lengths = inputs
    out, lse2 = output
    ctx.save_for_backward(q, k, v, out, lse2, lengths)
    ctx.scale = scale
    ctx.mark_non_differentiable(lse2)


def _backward(ctx, grad_out, grad_lse2):
    # lse2 is an auxiliary output for the backward: it is marked non-differentiable
    q, k, v, out, lse2, lengths = ctx.saved_tensors
    dq, dk, dv = attention_bwd_op(grad_out, q, k, v, out, lse2, ctx.scale, lengths)
    return dq, dk, dv, None, None


attention_bwd_op = define_op("attention_bwd", attention_bwd, attention_bwd_ref)
attention_fwd_op = define_op("attention_fwd", attention_fwd, attention_fwd_ref,
                             backward=_backward, setup_context=_setup_context)


def attention_op(q, k, v, scale=None, lengths=None):
    """torch.ops.clippo.attention_fwd, output only: Triton on CUDA, torch on the CPU."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return attention_fwd_op(q, k, v, scale, lengths)[0]
