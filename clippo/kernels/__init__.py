"""Fused kernels for the CLIPPO ViT, each with a PyTorch fallback.

Public functions (stable signatures; the model calls only these):

    patch_embed(images, weight, bias, pos_embed=None, patch_index=None) -> tokens [B, N, D]
        images: [B, C, H, W] float (already in [-1, 1]) or uint8 in [0, 255], normalised
        on the fly as x / 255 * 2 - 1 (big_vision's value_range(-1, 1)); any strides, including
        the renderer's stride-0 channel view; weight: [D, C, P, P] (nn.Conv2d layout),
        bias: [D] or None, pos_embed: [N, D] or [1, N, D] or None. Output dtype = weight dtype.
        Differentiable in weight, bias, pos_embed and float images. Under torch.autocast the
        float inputs are cast to the autocast dtype (as conv2d would be).
        patch_index: int32/int64 [B, L] of row-major patch numbers (negative = padding):
        tokens [B, L, D] of those patches only, each with its own position embedding, read
        straight from the (uint8) images; a padding slot's token is zero.
    ink_index(ink, *, min_length=0, multiple_of=1) -> (patch_index [B, L] int32, lengths [B])
        the renderer's bool ink mask [B, N] as a patch_index: each row's ink patches first, in
        row-major order, -1 after; L = the longest row (at least min_length, rounded up).
    attention(q, k, v, scale=None, lengths=None) -> [B, H, Lq, Dh]
        non-causal softmax attention, the semantics of F.scaled_dot_product_attention
        (scale defaults to 1/sqrt(Dh)). Differentiable in q, k, v. lengths: int [B], each
        in 1..Lk, or None: row b attends to its first lengths[b] keys only (a key-padding
        mask; sequences of different lengths padded at the end).

Optional kernels (the model calls them; under "auto" they run in Triton only when enabled,
since no GPU profile has yet shown that they pay; see "Backends"):

    layer_norm(x, weight, bias, eps=1e-6) -> like x
        LayerNorm over the last dim, statistics in fp32; Triton forward and backward
        (F.layer_norm under torch.autocast, which runs it in fp32).
    linear(x, weight, bias=None, *, activation=None, residual=None) -> [..., N]
        act(x @ weight^T + bias) + residual in one Triton GEMM, activation None or "gelu"
        (tanh approximation); the epilogue replaces the separate GELU and residual-add passes.
        Differentiable in all tensors.

Backends ("auto", "triton", "torch"): the initial one comes from the environment variable
CLIPPO_KERNELS (default "auto"); set_backend(name) changes it, and in a `with` statement
(`with set_backend("torch"): ...`, or its alias use_backend) puts the previous one back after.
    auto    Triton ops for CUDA tensors when triton imports, plain torch otherwise.
    triton  always the registered ops torch.ops.clippo.* (Triton on CUDA; on the CPU their
            kernels are the torch references); RuntimeError if triton is missing.
    torch   conv2d / F.scaled_dot_product_attention / F.layer_norm / F.linear.
Optional kernels: "auto" runs them in Triton only when enabled with CLIPPO_FUSE=layer_norm,linear
(or "all") or set_fusions(...) (also a context manager; alias use_fusions); "triton" always,
"torch" never. Inputs the Triton kernels do not take go to the torch path whatever the backend:
attention with a head dim above 128 or v's head dim != q's, and float64.

Registered ops (torch.library, with autograd where marked, fake and CPU kernels; the CPU
kernel of each is its torch reference, `<module>.<op>_ref`):
    clippo::patch_embed(images, weight, bias?, pos_embed?, patch_index?) -> tokens (autograd)
    clippo::patch_embed_grad_weight(images, grad_out, patch, patch_index?) -> grad weight
    clippo::attention_fwd(q, k, v, scale, lengths?) -> (out, lse2)               (autograd)
    clippo::attention_bwd(grad, q, k, v, out, lse2, scale, lengths?) -> (dq, dk, dv)
    clippo::layer_norm_fwd(x, weight, bias, eps) -> (y, mean, rstd)              (autograd)
    clippo::layer_norm_bwd(grad, x, weight, mean, rstd) -> (dx, dweight, dbias)
    clippo::linear(x, weight, bias?, residual?, activation?, save_pre) -> (y, pre-activation)
                                                                                 (autograd)

On CUDA the Triton kernels run on the tensors' device, whichever device is current. In fp32
their products follow torch's TF32 settings for the op they replace (matmul: linear and
attention; cuDNN conv: patch embedding). Autotuning keys on the shapes and on the bucket of the
row count, so small-row launches (the MAP head) tune apart with tiles that fit them.
CLIPPO_AUTOTUNE=0 (read at launch) turns autotuning off: each kernel uses the first config of
its table that fits (quick GPU test runs). Supported triton: TRITON_VERSIONS, oldest to newest.
"""
import importlib

import torch
import torch.nn.functional as F

from ._backend import (BACKENDS, HAS_TRITON, OPTIONAL_KERNELS, get_backend,  # noqa: F401
                       get_fusions, set_backend, set_fusions, use_backend, use_fusions, use_ops)
from ._triton import TRITON_VERSIONS  # noqa: F401

# The submodules share names with the public functions below; load them under private names
# (importing a submodule sets the package attribute, so this must come before the defs).
_pe = importlib.import_module(".patch_embed", __name__)
_attn = importlib.import_module(".attention", __name__)
_ln = importlib.import_module(".layer_norm", __name__)
_lin = importlib.import_module(".linear", __name__)

__all__ = ["patch_embed", "ink_index", "attention", "layer_norm", "linear", "get_backend", "set_backend",
           "use_backend", "get_fusions", "set_fusions", "use_fusions", "BACKENDS",
           "OPTIONAL_KERNELS", "HAS_TRITON", "TRITON_VERSIONS"]


_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _autocast(*tensors):
    """Under torch.autocast, cast the float inputs to the autocast dtype, as autocast does for
    conv2d and scaled_dot_product_attention (the custom ops have no autocast rule of their own)."""
    device = tensors[0].device.type
    if not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors)


def patch_embed(images, weight, bias, pos_embed=None, patch_index=None):
    """Patch embedding [B, C, H, W] -> [B, N, D] (with patch_index [B, L]: [B, L, D]); see
    the module docstring."""
    if weight.dtype in _KERNEL_DTYPES and use_ops(images, weight):
        return _pe.patch_embed_op(*_autocast(images, weight, bias, pos_embed), patch_index)
    return _pe.patch_embed_ref(images, weight, bias, pos_embed, patch_index)


ink_index = _pe.ink_index


def attention(q, k, v, scale=None, lengths=None):
    """Non-causal attention [B, H, L, Dh], keys masked past `lengths`; see the module
    docstring."""
    if (q.shape[-1] <= _attn.MAX_HEAD_DIM and v.shape[-1] == q.shape[-1]
            and q.dtype in _KERNEL_DTYPES and use_ops(q, k, v)):
        return _attn.attention_op(*_autocast(q, k, v), scale, lengths)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=_attn.key_padding(k, lengths),
                                          scale=scale)


def layer_norm(x, weight, bias, eps=1e-6):
    """LayerNorm over the last dim (flax's default eps 1e-6): Triton fwd/bwd on CUDA."""
    # under autocast torch runs layer_norm in fp32 (fp32 output): keep exactly that behaviour
    if (x.dtype in _KERNEL_DTYPES and x.shape[-1] <= _ln.MAX_WIDTH and x.numel()
            and not torch.is_autocast_enabled(x.device.type)
            and use_ops(x, weight, bias, optional="layer_norm")):
        return _ln.layer_norm_op(x, weight, bias, eps)
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


def linear(x, weight, bias=None, *, activation=None, residual=None):
    """act(x @ weight^T + bias) + residual; activation None or "gelu" (tanh approximation)."""
    if activation not in _lin.ACTIVATIONS:
        raise ValueError(f"linear: activation must be one of {_lin.ACTIVATIONS}, "
                         f"got {activation!r}")
    if x.dtype in _KERNEL_DTYPES and use_ops(x, weight, bias, residual, optional="linear"):
        args = _autocast(x, weight, bias, residual)
        # under autocast torch adds an fp32 residual in fp32: leave that case to torch
        if residual is None or args[3].dtype == residual.dtype:
            if len({t.dtype for t in args if t is not None}) == 1:
                return _lin.linear_op(*args, activation)
    return _lin.linear_ref(x, weight, bias, residual, activation)[0]
