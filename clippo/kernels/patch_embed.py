"""Fused patch embedding: normalise + patchify + matmul + bias + position embedding.

tokens[b, n, d] = sum_k A[b*N + n, k] * W[d, k] + bias[d] + pos[n, d]

where A is the patchified image (row = one P x P patch, column k = (c, py, px), the nn.Conv2d
weight order) read straight from `images` through its strides. uint8 images are normalised
in-kernel as x / 255 * 2 - 1 (big_vision's value_range(-1, 1)), so the text renderer's
[B, 3, H, W] uint8 expanded view of one grey plane (stride 0 over channels) is read as is,
never copied. Pixels past the last whole patch (H or W not a multiple of P) are ignored, as
by a VALID conv.

With `patch_index` (int32/int64 [B, L], row-major patch numbers; negative = padding), only
the listed patches are read and embedded: tokens[b, l] = A[b*N + patch_index[b, l]] @ W^T + bias
+ pos[patch_index[b, l]], and a padding slot's token is all zeros (no bias, no position
embedding; it has no gradient). Entries >= N are an error. `ink_index` turns the renderer's
ink mask into such an index.

Output dtype = weight dtype; products in that dtype (fp32: TF32 or exact, as torch's conv2d
is set), accumulation in fp32; bias and position embedding are added in fp32 before the one
rounding at the store.

Layout: the torch references (`patch_embed_ref`, `patch_embed_grad_weight_ref`), the Triton
kernels, the launchers (`patch_embed_fwd`, `patch_embed_grad_weight`), the ops
torch.ops.clippo.patch_embed (with autograd) / patch_embed_grad_weight, then `patch_embed_op()`.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._backend import HAS_TRITON
from ._triton import Kernel, define_op, dot_precision, num_sms, tl, triton

if HAS_TRITON:
    from ._triton import gemm_tile

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------------------------
# torch references (the ops' CPU kernels)
# --------------------------------------------------------------------------------------------


def _concrete(t):
    """Whether t holds real values (not a fake, functional or meta tensor of tracing)."""
    from torch._guards import detect_fake_mode
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor
    return not (isinstance(t, (FakeTensor, FunctionalTensor)) or t.device.type == "meta"
                or torch.compiler.is_compiling() or detect_fake_mode((t,)) is not None)


def check_patch_index(patch_index, b, n, device):
    """ValueError unless patch_index is an int32/int64 [B, L] tensor on `device` with entries
    < N (checked on CPU values; on CUDA asynchronously, by a device-side assert)."""
    if patch_index is None:
        return
    if patch_index.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"patch_embed: patch_index must be int32 or int64, got {patch_index.dtype}")
    if patch_index.dim() != 2 or patch_index.shape[0] != b:
        raise ValueError(f"patch_embed: patch_index must be [B={b}, L], "
                         f"got {tuple(patch_index.shape)}")
    if patch_index.device != device:
        raise ValueError(f"patch_embed: patch_index is on {patch_index.device}, images on {device}")
    if patch_index.numel() and _concrete(patch_index):
        if patch_index.device.type == "cpu":
            top = int(patch_index.max())
            if top >= n:
                raise ValueError(f"patch_embed: patch_index holds {top}; images have {n} patches")
        else:
            torch._assert_async((patch_index < n).all(), "patch_embed: patch_index >= N")


def check_args(images, weight, bias, pos_embed, kernel=True, patch_index=None):
    """Validate the arguments, for the Triton kernel or (kernel=False: an fp64 weight too) the
    reference; returns (B, C, H, W, D, P, N). Raises ValueError naming the issue."""
    if images.dim() != 4:
        raise ValueError(
            f"patch_embed: images must be [B, C, H, W], got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.dtype.is_floating_point:
        raise ValueError(f"patch_embed: images must be uint8 or floating point, got {images.dtype}")
    if weight.dim() != 4 or weight.shape[-1] != weight.shape[-2]:
        raise ValueError(f"patch_embed: weight must be [D, C, P, P], got {tuple(weight.shape)}")
    if weight.dtype not in KERNEL_DTYPES + (() if kernel else (torch.float64,)):
        raise ValueError(f"patch_embed: weight dtype must be fp32/fp16/bf16, got {weight.dtype}")
    d, c, p, _ = weight.shape
    b, ci, h, w = images.shape
    if ci != c:
        raise ValueError(f"patch_embed: images have {ci} channels, weight expects {c}")
    if h < p or w < p:
        raise ValueError(f"patch_embed: image {h}x{w} is smaller than one {p}x{p} patch")
    n = (h // p) * (w // p)
    if bias is not None and tuple(bias.shape) != (d,):
        raise ValueError(f"patch_embed: bias must be [{d}], got {tuple(bias.shape)}")
    if pos_embed is not None and pos_embed.numel() != n * d:
        raise ValueError(f"patch_embed: pos_embed must hold [{n}, {d}] (N patches x D), "
                         f"got {tuple(pos_embed.shape)}")
    for name, t in (("weight", weight), ("bias", bias), ("pos_embed", pos_embed)):
        if t is not None and t.device != images.device:
            raise ValueError(f"patch_embed: {name} is on {t.device}, images on {images.device}")
    check_patch_index(patch_index, b, n, images.device)
    return b, c, h, w, d, p, n


def _normalise(images, dtype):
    if images.dtype == torch.uint8:  # x / 255 * 2 - 1, in place on the new float copy
        images = images.to(torch.float32).div_(255.0).mul_(2.0).sub_(1.0)
    return images.to(dtype)


def _as_words(t, run):
    """t with runs of `run` elements along its last dim read as wider integers (a view), so
    that a gather copies 8-byte words, not single bytes; (t, 1) where no such view exists
    (or t needs a gradient, which a dtype view does not carry)."""
    if t.requires_grad:
        return t, 1
    for word in (torch.int64, torch.int32, torch.int16):
        n = word.itemsize // t.element_size()
        if n > 1 and run % n == 0 and t.shape[-1] % n == 0:
            try:
                return t.view(word), n
            except RuntimeError:  # strides or offset not aligned to the word
                pass
    return t, 1


def _gather_patches(images, patch, patch_index, dtype):
    """The listed patches of [B, C, H, W] as rows [B, L, C*P*P] (conv weight order) in dtype,
    read straight from the images (strided views, no full copy). A padding slot holds patch
    0: callers mask it out."""
    b, c, h, w = images.shape
    gh, gw = h // patch, w // patch
    src, n = _as_words(images[:, :, :gh * patch, :gw * patch], patch)
    grid = src.unflatten(3, (gw, patch // n)).unflatten(2, (gh, patch))
    keep = patch_index >= 0
    tok = patch_index.clamp(min=0).long()
    rows = torch.arange(b, device=images.device)[:, None]
    x = grid[rows, :, tok // gw, :, tok % gw, :]          # [B, L, C, P, P // n]
    if n > 1:  # (through 1-D: a gather of nothing may have any strides)
        x = x.reshape(-1).view(images.dtype).view(*x.shape[:-1], patch)
    return _normalise(x, dtype).reshape(b, patch_index.shape[1], c * patch * patch), keep, tok


def patch_embed_ref(images, weight, bias=None, pos_embed=None, patch_index=None):
    """conv2d: [B, C, H, W] (uint8 or float) -> [B, N, D] in weight.dtype; with patch_index,
    a matmul over the listed patches only -> [B, L, D] (zero rows for padding)."""
    check_args(images, weight, bias, pos_embed, kernel=False, patch_index=patch_index)
    p = weight.shape[-1]
    if patch_index is not None:
        d = weight.shape[0]
        a, keep, tok = _gather_patches(images, p, patch_index, weight.dtype)
        x = a @ weight.reshape(d, -1).t()
        if bias is not None:
            x = x + bias.to(weight.dtype)
        if pos_embed is not None:
            # index_select: its backward is an index_add, not advanced indexing's index_put
            pos = pos_embed.reshape(-1, d).to(weight.dtype).index_select(0, tok.flatten())
            x = x + pos.view(*tok.shape, d)
        return (x * keep[..., None].to(x.dtype)).contiguous()
    x = F.conv2d(_normalise(images, weight.dtype), weight,
                 None if bias is None else bias.to(weight.dtype), stride=p)
    x = x.flatten(2).transpose(1, 2)
    if pos_embed is not None:
        x = x + pos_embed.reshape(1, -1, x.shape[-1]).to(x.dtype)
    return x.contiguous()


def _patchify(images, patch, dtype):
    """[B, C, H, W] -> [B*N, C*P*P] (rows in raster order, columns in conv weight order)."""
    b, c, h, w = images.shape
    gh, gw = h // patch, w // patch
    x = _normalise(images[:, :, :gh * patch, :gw * patch], dtype)
    x = x.reshape(b, c, gh, patch, gw, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b * gh * gw, c * patch * patch)


def check_grad_weight_args(images, grad_out, patch, patch_index=None):
    """Returns (B, C, H, W, D, N); ValueError unless grad_out is [B, N, D] (with patch_index:
    [B, L, D]) for these images."""
    b, c, h, w = images.shape
    d = grad_out.shape[-1]
    n = (h // patch) * (w // patch)
    check_patch_index(patch_index, b, n, images.device)
    tokens = n if patch_index is None else patch_index.shape[1]
    if tuple(grad_out.shape) != (b, tokens, d):
        raise ValueError(f"patch_embed_grad_weight: grad_out must be [{b}, {tokens}, D], "
                         f"got {tuple(grad_out.shape)}")
    return b, c, h, w, d, n


def patch_embed_grad_weight_ref(images, grad_out, patch, patch_index=None):
    """d tokens / d weight: grad_out[B, N, D]^T @ patchify(images) -> [D, C, P, P] (fp32 sum;
    fp64 for fp64 grad_out); with patch_index over the listed patches (padding adds nothing)."""
    _, c, _, _, d, _ = check_grad_weight_args(images, grad_out, patch, patch_index)
    acc = torch.promote_types(grad_out.dtype, torch.float32)
    if patch_index is not None:
        a, keep, _ = _gather_patches(images, patch, patch_index, grad_out.dtype)
        a = a.to(acc).flatten(0, 1)
        grad_out = grad_out * keep[..., None].to(grad_out.dtype)  # padding adds nothing
    else:
        a = _patchify(images, patch, grad_out.dtype).to(acc)
    gw = grad_out.reshape(-1, d).to(acc).t() @ a
    return gw.reshape(d, c, patch, patch).to(grad_out.dtype)


# --------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------

if HAS_TRITON:
    @triton.jit
    def _patch_rows(offs_m, mask_m, L, N, GW, P: tl.constexpr, sb, sh, sw, idx_ptr, sib, sil,
                    HAS_INDEX: tl.constexpr):
        """Token rows (image * L + slot) -> (image, slot, patch, keep, offset of the patch's
        top-left pixel) for image strides (sb, sh, sw). The patch (row-major over a GW-wide
        grid of N) is the slot itself, or with HAS_INDEX idx[image, slot]; keep is False for
        rows past the end and for padding (a negative index; also >= N, never read)."""
        if HAS_INDEX:
            # int32 rows and patch numbers (B * L and N < 2^31, checked at launch): 32-bit
            # divisions, not the 64-bit division routine (which costs stack on the GPU)
            row = offs_m.to(tl.int32)
            img = (row // L).to(tl.int64)
            slot = (row % L).to(tl.int64)
            tok = tl.load(idx_ptr + img * sib + slot * sil, mask=mask_m, other=-1).to(tl.int32)
            keep = mask_m & (tok >= 0) & (tok < N)
            tok = tl.where(keep, tok, 0)
            py = (tok // GW).to(tl.int64)
            px = (tok % GW).to(tl.int64)
            tok = tok.to(tl.int64)
        else:
            img = offs_m // L
            slot = offs_m % L
            tok = slot
            keep = mask_m
            py = tok // GW
            px = tok % GW
        return img, slot, tok, keep, img * sb + py * (P * sh) + px * (P * sw)

    @triton.jit
    def _patch_cols(offs_k, P: tl.constexpr, sc, sh, sw):
        """Patch columns (channel, y, x flattened, conv2d's weight order) -> offset inside a
        patch for strides (sc, sh, sw): the same order indexes images and weights."""
        return (offs_k // (P * P)) * sc + ((offs_k // P) % P) * sh + (offs_k % P) * sw

    @triton.jit
    def _patch_embed_fwd_kernel(
        x_ptr, sxb, sxc, sxh, sxw,          # images [B, C, H, W], any strides (0 allowed)
        w_ptr, swd, swc, swh, sww,          # weight [D, C, P, P]
        b_ptr,                              # bias [D] (unused without HAS_BIAS)
        pos_ptr, spn, spd,                  # pos embed [N, D] (unused without HAS_POS)
        idx_ptr, sib, sil,                  # patch index [B, L] (unused without HAS_INDEX)
        o_ptr, sob, son, sod,               # tokens [B, L, D]
        M, L, N, D, K, GW,                  # M = B * L rows (L = N without an index),
                                            # K = C * P * P, GW patches per row
        P: tl.constexpr, IS_UINT8: tl.constexpr, HAS_BIAS: tl.constexpr,
        HAS_POS: tl.constexpr, HAS_INDEX: tl.constexpr, IN_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):
        tl.static_assert(BLOCK_K >= 16)
        offs_m, mask_m, offs_n, mask_n = gemm_tile(M, D, BLOCK_M, BLOCK_N, GROUP_M)
        img, slot, tok, keep, row_off = _patch_rows(offs_m, mask_m, L, N, GW, P, sxb, sxh, sxw,
                                                    idx_ptr, sib, sil, HAS_INDEX)
        # one offset per row for the epilogue's reads and writes: fewer registers held
        # through the K loop than (image, slot, patch)
        out_row = img * sob + slot * son
        pos_row = tok * spn
        w_row = offs_n.to(tl.int64) * swd

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < K
            x_col = _patch_cols(offs_k, P, sxc, sxh, sxw)
            a = tl.load(x_ptr + row_off[:, None] + x_col[None, :],
                        mask=keep[:, None] & mask_k[None, :], other=0)
            if IS_UINT8:
                a = a.to(tl.float32) / 255.0 * 2.0 - 1.0
            a = a.to(w_ptr.dtype.element_ty)
            w_col = _patch_cols(offs_k, P, swc, swh, sww)
            w = tl.load(w_ptr + w_row[None, :] + w_col[:, None],
                        mask=mask_k[:, None] & mask_n[None, :], other=0)
            acc = tl.dot(a, w, acc, input_precision=IN_PRECISION)

        if HAS_BIAS:
            bias = tl.load(b_ptr + offs_n, mask=mask_n, other=0).to(tl.float32)
            acc += bias[None, :]
        if HAS_POS:
            pos = tl.load(pos_ptr + pos_row[:, None] + offs_n[None, :] * spd,
                          mask=keep[:, None] & mask_n[None, :], other=0)
            acc += pos.to(tl.float32)
        if HAS_INDEX:  # padding slots are zero tokens
            acc = tl.where(keep[:, None], acc, 0.0)
        o = o_ptr + out_row[:, None] + offs_n[None, :] * sod
        tl.store(o, acc.to(o_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])

    @triton.jit
    def _patch_embed_grad_weight_kernel(
        x_ptr, sxb, sxc, sxh, sxw,          # images [B, C, H, W], any strides
        g_ptr, sgb, sgn, sgd,               # grad of tokens [B, L, D]
        idx_ptr, sib, sil,                  # patch index [B, L] (unused without HAS_INDEX)
        part_ptr,                           # fp32 partial sums [SPLIT, D, K], contiguous
        M, L, N, D, K, GW, CHUNK,           # program (.., s) sums rows [s*CHUNK, (s+1)*CHUNK)
        P: tl.constexpr, IS_UINT8: tl.constexpr, HAS_INDEX: tl.constexpr,
        IN_PRECISION: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr,
    ):
        tl.static_assert(BLOCK_M >= 16 and BLOCK_D >= 16 and BLOCK_K >= 16)
        tiles_k = (K + BLOCK_K - 1) // BLOCK_K
        pid_d = tl.program_id(0) // tiles_k
        pid_k = tl.program_id(0) % tiles_k
        split = tl.program_id(1)

        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_d = offs_d < D
        mask_k = offs_k < K
        x_col = _patch_cols(offs_k, P, sxc, sxh, sxw)

        start = split.to(tl.int64) * CHUNK
        end = tl.minimum(start + CHUNK, M)
        acc = tl.zeros((BLOCK_D, BLOCK_K), dtype=tl.float32)
        for m0 in range(0, CHUNK, BLOCK_M):
            offs_m = start + m0 + tl.arange(0, BLOCK_M)
            mask_m = offs_m < end
            img, slot, tok, keep, row_off = _patch_rows(offs_m, mask_m, L, N, GW, P, sxb, sxh,
                                                        sxw, idx_ptr, sib, sil, HAS_INDEX)
            a_mask = keep[:, None] & mask_k[None, :]   # padding rows add nothing
            a = tl.load(x_ptr + row_off[:, None] + x_col[None, :], mask=a_mask, other=0)
            if IS_UINT8:
                a = tl.where(a_mask, a.to(tl.float32) / 255.0 * 2.0 - 1.0, 0.0)
            a = a.to(g_ptr.dtype.element_ty)
            gt = tl.load(g_ptr + img[None, :] * sgb + slot[None, :] * sgn + offs_d[:, None] * sgd,
                         mask=mask_d[:, None] & mask_m[None, :], other=0)
            acc = tl.dot(gt, a, acc, input_precision=IN_PRECISION)

        out = (part_ptr + split.to(tl.int64) * D * K
               + offs_d[:, None].to(tl.int64) * K + offs_k[None, :])
        tl.store(out, acc, mask=mask_d[:, None] & mask_k[None, :])

    # Tables: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages), then (BLOCK_D, BLOCK_K,
    # BLOCK_M, ...) for the weight gradient. "fp32" tiles are smaller: fp32 operands need
    # twice the registers and shared memory. Every row compiles for sm_80 and sm_90 within
    # shared memory and without register spills (tests/test_kernel_compile.py).
    _patch_embed_fwd = Kernel(
        _patch_embed_fwd_kernel, names=("BLOCK_M", "BLOCK_N", "BLOCK_K"),
        key=["N", "D", "K", "P", "IS_UINT8", "HAS_INDEX"],
        interpret={"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32}, tables={
            "half": [(128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (64, 128, 64, 4, 4),
                     (128, 64, 64, 4, 4)],
            "fp32": [(64, 64, 32, 4, 2), (64, 32, 32, 4, 2), (32, 64, 32, 4, 2)]})
    _patch_embed_grad_weight = Kernel(
        _patch_embed_grad_weight_kernel, names=("BLOCK_D", "BLOCK_K", "BLOCK_M"),
        key=["D", "K", "P", "IS_UINT8", "HAS_INDEX", "CHUNK"],
        interpret={"BLOCK_D": 32, "BLOCK_K": 32, "BLOCK_M": 32}, tables={
            "half": [(128, 128, 64, 8, 3), (64, 128, 64, 4, 4), (128, 64, 64, 4, 4),
                     (128, 256, 32, 8, 3)],
            "fp32": [(32, 64, 16, 4, 2), (64, 32, 16, 4, 2), (64, 64, 16, 8, 2)]})


# --------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------


def patch_embed_fwd(images: Tensor, weight: Tensor, bias: Optional[Tensor],
                    pos_embed: Optional[Tensor], patch_index: Optional[Tensor] = None) -> Tensor:
    """Launch the forward kernel (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1)."""
    b, c, h, w, d, p, n = check_args(images, weight, bias, pos_embed, patch_index=patch_index)
    tokens = n if patch_index is None else patch_index.shape[1]
    out = torch.empty((b, tokens, d), device=images.device, dtype=weight.dtype)
    pos = pos_embed.reshape(n, d) if pos_embed is not None else None
    m, k = b * tokens, c * p * p
    if m == 0:
        return out
    if patch_index is not None and m >= 2 ** 31:
        raise ValueError(f"patch_embed: B * L = {m} token rows; the kernel takes < 2^31")
    idx = patch_index
    # any tensor serves as the pointer of an absent optional input
    _patch_embed_fwd(
        lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(d, meta["BLOCK_N"]),),
        images, *images.stride(), weight, *weight.stride(), weight if bias is None else bias,
        weight if pos is None else pos, *((0, 0) if pos is None else pos.stride()),
        weight if idx is None else idx, *((0, 0) if idx is None else idx.stride()),
        out, *out.stride(), m, tokens, n, d, k, w // p,
        device=images.device, dtype=weight.dtype, rows=m,
        P=p, IS_UINT8=images.dtype == torch.uint8, HAS_BIAS=bias is not None,
        HAS_POS=pos is not None, HAS_INDEX=idx is not None,
        IN_PRECISION=dot_precision(weight.dtype, "conv"), GROUP_M=8)
    return out


def _split_rows(m, d, k, device):
    """Split the M reduction so that about two waves of programs fill the GPU; the CPU
    interpreter gets several small splits, to exercise the partial sums."""
    if device.type == "cpu":
        return triton.cdiv(m, 64), 64
    tiles = triton.cdiv(d, 128) * triton.cdiv(k, 128)
    sms = num_sms(device.index or 0) if device.type == "cuda" else 4
    split = max(1, min(triton.cdiv(m, 512), triton.cdiv(2 * sms, tiles)))
    chunk = triton.cdiv(triton.cdiv(m, split), 128) * 128
    return triton.cdiv(m, chunk), chunk


def patch_embed_grad_weight(images: Tensor, grad_out: Tensor, patch: int,
                            patch_index: Optional[Tensor] = None) -> Tensor:
    """d tokens / d weight as [D, C, P, P] in grad_out.dtype (split-M partials, fp32 sum)."""
    b, c, h, w, d, n = check_grad_weight_args(images, grad_out, patch, patch_index)
    tokens = grad_out.shape[1]
    m, k = b * tokens, c * patch * patch
    if m == 0:
        return torch.zeros((d, c, patch, patch), device=images.device, dtype=grad_out.dtype)
    if patch_index is not None and m >= 2 ** 31:
        raise ValueError(f"patch_embed: B * L = {m} token rows; the kernel takes < 2^31")
    split, chunk = _split_rows(m, d, k, images.device)
    part = torch.empty((split, d, k), device=images.device, dtype=torch.float32)
    idx = patch_index
    _patch_embed_grad_weight(
        lambda meta: (triton.cdiv(d, meta["BLOCK_D"]) * triton.cdiv(k, meta["BLOCK_K"]), split),
        images, *images.stride(), grad_out, *grad_out.stride(),
        grad_out if idx is None else idx, *((0, 0) if idx is None else idx.stride()),
        part, m, tokens, n, d, k, w // patch,
        chunk, device=images.device, dtype=grad_out.dtype,
        P=patch, IS_UINT8=images.dtype == torch.uint8, HAS_INDEX=idx is not None,
        IN_PRECISION=dot_precision(grad_out.dtype, "conv"))
    return part.sum(0).reshape(d, c, patch, patch).to(grad_out.dtype)


# --------------------------------------------------------------------------------------------
# ops
# --------------------------------------------------------------------------------------------


def _grad_images(images, weight, grad_out):
    """d tokens / d images for float images (torch: one matmul and a fold; rarely needed)."""
    b, c, h, w = images.shape
    p, d = weight.shape[-1], weight.shape[0]
    gh, gw = h // p, w // p
    ga = grad_out.reshape(-1, d) @ weight.reshape(d, -1).to(grad_out.dtype)
    ga = ga.reshape(b, gh, gw, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, gh * p, gw * p)
    return F.pad(ga, (0, w - gw * p, 0, h - gh * p)).to(images.dtype)


def _scatter_tokens(grad, patch_index, n):
    """[B, L, D] gradients of listed patches -> [B, N, D] (padding slots dropped)."""
    b, _, d = grad.shape
    full = grad.new_zeros((b, n + 1, d))       # row n collects the padding, then is dropped
    tok = torch.where(patch_index >= 0, patch_index.long(), n)
    full.scatter_add_(1, tok.unsqueeze(-1).expand(-1, -1, d), grad)
    return full[:, :n]


def _setup_context(ctx, inputs, output):
    images, weight, bias, pos_embed = inputs[:4]
    patch_index = inputs[4] if len(inputs) > 4 else None
    ctx.save_for_backward(images, weight, patch_index)
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.pos_shape = None if pos_embed is None else pos_embed.shape
    ctx.pos_dtype = None if pos_embed is None else pos_embed.dtype


def _backward(ctx, grad):
    images, weight, patch_index = ctx.saved_tensors
    need_x, need_w, need_b, need_pos = ctx.needs_input_grad[:4]
    gx = gw = gb = gpos = None
    if need_w:
        gw = patch_embed_grad_weight_op(images, grad, weight.shape[-1],
                                        patch_index).to(weight.dtype)
    p = weight.shape[-1]
    n = (images.shape[2] // p) * (images.shape[3] // p)
    if patch_index is not None:  # padding slots are constant zeros: no gradient flows back
        grad = grad * (patch_index >= 0).unsqueeze(-1).to(grad.dtype)
    if need_b and ctx.bias_dtype is not None:
        gb = grad.sum((0, 1), dtype=torch.float32).to(ctx.bias_dtype)
    if need_pos and ctx.pos_shape is not None:
        if patch_index is None:
            gpos = grad.sum(0, dtype=torch.float32)
        else:
            gpos = _scatter_tokens(grad.to(torch.float32), patch_index, n).sum(0)
        gpos = gpos.reshape(ctx.pos_shape).to(ctx.pos_dtype)
    if need_x and images.dtype.is_floating_point:
        full = grad if patch_index is None else _scatter_tokens(grad, patch_index, n)
        gx = _grad_images(images, weight, full)
    return (gx, gw, gb, gpos, None)[:len(ctx.needs_input_grad)]


patch_embed_grad_weight_op = define_op("patch_embed_grad_weight", patch_embed_grad_weight,
                                       patch_embed_grad_weight_ref)
patch_embed_op = define_op("patch_embed", patch_embed_fwd, patch_embed_ref,
                           backward=_backward, setup_context=_setup_context)


def ink_index(ink, *, min_length=0, multiple_of=1):
    """A bool ink mask [B, N] (the renderer's, row-major patches) -> (patch_index, lengths):
    patch_index int32 [B, L] lists each row's True patches first, in row-major order, then -1;
    lengths int32 [B] counts them. L = the longest row's count, at least `min_length`,
    rounded up to a multiple of `multiple_of` (fewer distinct shapes for compiled code).
    On CUDA, L is read back to the host (one synchronisation)."""
    if ink.dtype != torch.bool or ink.dim() != 2:
        raise ValueError(f"ink_index: ink must be a bool tensor [B, N], got {ink.dtype} "
                         f"{tuple(ink.shape)}")
    if min_length < 0 or multiple_of < 1:
        raise ValueError("ink_index: min_length must be >= 0 and multiple_of >= 1")
    b, n = ink.shape
    lengths = ink.sum(1, dtype=torch.int32)
    longest = int(lengths.max()) if b else 0
    size = max(longest, min_length)
    size = -(-size // multiple_of) * multiple_of
    # a stable sort of "not ink" puts the ink patches first, each group in row-major order
    order = torch.sort((~ink).to(torch.uint8), dim=1, stable=True).indices.to(torch.int32)
    if size > n:
        order = torch.cat([order, order.new_full((b, size - n), -1)], 1)
    order = order[:, :size]
    slots = torch.arange(size, device=ink.device, dtype=torch.int32)
    return torch.where(slots < lengths[:, None], order, -1), lengths
