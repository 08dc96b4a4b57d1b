"""Fused kernels for the CLIPPO ViT, each with a PyTorch fallback.

Public functions (stable signatures; the model calls only these):

    patch_embed(images, weight, bias, pos_embed=None) -> tokens [B, N, D]
        images: [B, C, H, W] float (already in [-1, 1]) or uint8 in [0, 255], normalised
        on the fly as x / 255 * 2 - 1 (big_vision's value_range(-1, 1));
        weight: [D, C, P, P] (nn.Conv2d layout), bias: [D], pos_embed: [N, D] or [1, N, D].
    attention(q, k, v, scale=None) -> [B, H, Lq, Dh]
        non-causal softmax attention, the semantics of F.scaled_dot_product_attention.

The backend ("auto", "triton", "torch") comes from CLIPPO_KERNELS or set_backend(); "auto"
uses Triton for CUDA tensors when triton imports, torch otherwise.

NOTE: this file is a placeholder with the torch references only; the Triton kernels land in
clippo/kernels/patch_embed.py and clippo/kernels/attention.py.
"""
import torch
import torch.nn.functional as F


def patch_embed(images, weight, bias, pos_embed=None):
    if images.dtype == torch.uint8:
        images = images.to(torch.float32) / 255.0 * 2.0 - 1.0
    p = weight.shape[-1]
    x = F.conv2d(images.to(weight.dtype), weight, bias, stride=p)
    x = x.flatten(2).transpose(1, 2)
    if pos_embed is not None:
        x = x + pos_embed.reshape(1, -1, x.shape[-1])
    return x


def attention(q, k, v, scale=None):
    return F.scaled_dot_product_attention(q, k, v, scale=scale)
