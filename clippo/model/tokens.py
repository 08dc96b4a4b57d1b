"""Variable token sets: which patches of an image the ViT encodes.

A `keep` mask, bool [B, N] over the N patches of each image in row-major order (True = the
patch becomes a token), says which tokens each image gets; the ViT then runs on those tokens
only, each with its own position embedding. Two uses:

  * ink tokens (`text_tokens="ink"`): a rendered text is encoded from the patches that hold
    ink; the others are pure background and are dropped;
  * patch dropout (FLIP, OpenCLIP's --force-patch-dropout): a random subset of a photo's
    patches during training.

Images with different token counts are batched by padding: `keep_index` turns the mask into
`patch_index` int64 [B, L] (the kept patches first, in raster order, then -1 padding) and
`lengths` int64 [B]; attention masks the padded keys, the MAP head pools over the kept tokens
only. An image with nothing kept (the empty string renders no ink) keeps one token, patch 0
(the top-left patch, which for a text holds only background): its embedding is that of a
blank page, not undefined.
"""
import torch

from clippo.kernels.patch_embed import _normalise

EMPTY_KEEPS = 0  # the patch an image with nothing kept keeps: one token, not none


def pixel_ink(images, patch_size, background):
    """bool [B, N]: which patches of rendered texts hold any pixel other than `background`.

    images: [B, C, H, W] uint8, or float in [-1, 1] (the uint8 pixels x / 255 * 2 - 1, which
    round back exactly). The reference for the renderer's layout masks and the fallback for
    text images rendered elsewhere.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
    if images.is_floating_point():
        images = ((images.float() + 1.0) * (255.0 / 2.0)).round().clamp(0, 255).to(torch.uint8)
    b, _, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image of size {h}x{w} is not a multiple of patch size {p}")
    ink = images != background  # [B, C, H, W]
    ink = ink.any(1).view(b, h // p, p, w // p, p).any(4).any(2)
    return ink.reshape(b, -1)


def keep_index(keep):
    """bool [B, N] -> (patch_index int64 [B, L], lengths int64 [B]), L = the longest row.

    Each row lists its kept patches in raster order, then -1; a row with nothing kept keeps
    patch EMPTY_KEEPS (length 1).
    """
    if keep.dim() != 2 or keep.dtype != torch.bool:
        raise ValueError(f"keep must be a bool mask [B, N], got {keep.dtype} "
                         f"{tuple(keep.shape)}")
    keep = keep.clone()
    keep[~keep.any(1), EMPTY_KEEPS] = True
    lengths = keep.sum(1)
    longest = int(lengths.max()) if keep.shape[0] else 1
    # stable sort of "not kept": the kept patches move to the front in their raster order
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :longest]
    slots = torch.arange(longest, device=keep.device)
    patch_index = torch.where(slots < lengths[:, None], order, torch.full_like(order, -1))
    return patch_index, lengths


def patch_embed_kept(images, weight, bias, pos_embed, patch_index):
    """Tokens of the indexed patches only: [B, L, D] in weight.dtype, zero where index = -1.

    The torch reference of the patch embedding with an index: each kept patch's pixels are
    gathered (uint8 normalised as x / 255 * 2 - 1, as clippo.kernels.patch_embed), projected
    with the conv kernel, and given its own position embedding.
    """
    b, c, h, w = images.shape
    d, _, p, _ = weight.shape
    grid_w = w // p
    valid = patch_index >= 0
    index = patch_index.clamp(min=0)
    rows, cols = index // grid_w, index % grid_w
    patches = images.unfold(2, p, p).unfold(3, p, p)  # [B, C, H/p, W/p, p, p], a view
    batch = torch.arange(b, device=images.device)[:, None]
    pixels = patches[batch, :, rows, cols]  # [B, L, C, p, p]
    x = _normalise(pixels, weight.dtype).reshape(b, index.shape[1], c * p * p)
    x = torch.nn.functional.linear(x, weight.reshape(d, -1),
                                   None if bias is None else bias.to(weight.dtype))
    if pos_embed is not None:
        x = x + pos_embed.reshape(-1, d).to(x.dtype)[index]
    return x.masked_fill(~valid[..., None], 0)


def random_keep(rows, num_patches, fraction_dropped, device=None):
    """Patch dropout: bool [rows, num_patches] with the same number of patches kept in each
    row, max(1, int(num_patches * (1 - fraction_dropped))) as OpenCLIP's PatchDropout, chosen
    uniformly with torch's default generator (the training step's RNG)."""
    if not 0.0 <= fraction_dropped < 1.0:
        raise ValueError(f"patch dropout must be in [0, 1), got {fraction_dropped}")
    kept = max(1, int(num_patches * (1.0 - fraction_dropped)))
    scores = torch.rand(rows, num_patches, device=device)
    chosen = scores.topk(kept, dim=1).indices
    keep = torch.zeros(rows, num_patches, dtype=torch.bool, device=device)
    return keep.scatter_(1, chosen, True)
