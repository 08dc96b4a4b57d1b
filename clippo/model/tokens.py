"""Variable token sets: which patches of an image the ViT encodes.

A `keep` mask, bool [B, N] over the N patches of each image in row-major order (True = the
patch becomes a token), says which tokens each image gets; the ViT then runs on those tokens
only, each with its own position embedding. Two uses:

  * ink tokens (`text_tokens="ink"`): a rendered text is encoded from the patches that hold
    ink; the others are pure background and are dropped;
  * patch dropout (FLIP, OpenCLIP's --force-patch-dropout): a random subset of a photo's
    patches during training.

Images with different token counts: `keep_index` turns the mask into `patch_index` [B, L]
(the kept patches first, in raster order, then -1 padding) and `lengths` [B];
clippo.kernels.patch_embed embeds the indexed patches straight from the (uint8) images. The
tokens are then packed (`Packing`): the T = sum(lengths) kept tokens end to end, [T, D], so
that the GEMMs, LayerNorms and MLPs, most of a step, cost the kept tokens only; attention
alone sees them padded to [B, L] with the padded keys masked, and the MAP head pools over the
kept tokens only. Rows that keep every patch (photos) join the packed rows (texts) in one
token stream (`TokenGroups`): each GEMM runs once on all the batch's tokens, and attention
on each group apart. An image with nothing kept (the empty string renders no ink) keeps one
token, patch 0 (the top-left patch, which for a text holds only background): its embedding is
that of a blank page, not undefined.
"""
import torch

from clippo import kernels

EMPTY_KEEPS = 0  # the patch an image with nothing kept keeps: one token, not none


def pixel_ink(images, patch_size, background):
    """bool [B, N]: which patches of rendered texts hold any pixel other than `background`.

    images: [B, C, H, W] uint8, or float in [-1, 1] (the uint8 pixels x / 255 * 2 - 1, which
    round back exactly). For text images rendered elsewhere (strings get the renderer's
    layout masks, which equal this scan).
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
    """bool [B, N] -> (patch_index int32 [B, L], lengths int32 [B]), L = the longest row:
    clippo.kernels.ink_index, except that a row with nothing kept keeps patch EMPTY_KEEPS
    (length 1), so that every image has a token to pool."""
    if keep.dim() != 2 or keep.dtype != torch.bool:
        raise ValueError(f"keep must be a bool mask [B, N], got {keep.dtype} "
                         f"{tuple(keep.shape)}")
    keep = keep.clone()
    keep[~keep.any(1), EMPTY_KEEPS] = True
    return kernels.ink_index(keep)


class Packing:
    """Sequences of different lengths packed end to end.

    lengths: int [B] (each in 1..L); padded_length: L. A padded batch [B, L, ...] whose row b
    holds lengths[b] tokens, then padding, packs to [T, ...], T = sum(lengths), rows in
    order; `unpack` is the way back, zeros in the padding. Both are index_select gathers, so
    gradients flow through them. Building one reads T back to the host (nonzero): on CUDA one
    synchronisation per batch, as `keep_index` already has.
    """

    def __init__(self, lengths, padded_length):
        if lengths.dim() != 1:
            raise ValueError(f"lengths must be [B], got shape {tuple(lengths.shape)}")
        self.lengths = lengths
        self.batch, self.padded_length = lengths.shape[0], int(padded_length)
        slots = torch.arange(self.padded_length, device=lengths.device)
        valid = (slots < lengths[:, None]).reshape(-1)
        # the kept slots of the flattened [B * L] padded batch, in order
        self.index = valid.nonzero()[:, 0]
        # for each padded slot its packed row, or T (a zero row appended) for padding
        self.source = torch.where(valid, valid.cumsum(0) - 1, self.index.shape[0])

    @property
    def tokens(self):
        return self.index.shape[0]

    def pack(self, x):
        """[B, L, ...] -> [T, ...]."""
        if tuple(x.shape[:2]) != (self.batch, self.padded_length):
            raise ValueError(f"pack: expected [{self.batch}, {self.padded_length}, ...], got "
                             f"{tuple(x.shape)}")
        return x.reshape(self.batch * self.padded_length, *x.shape[2:]).index_select(
            0, self.index)

    def unpack(self, t, zeros=True):
        """[T, ...] -> [B, L, ...], zeros past each row's length; zeros=False: the padding
        repeats some kept token instead and its gradient is dropped (one copy less each way;
        for attention, which masks those keys and whose padded queries' outputs are dropped)."""
        if t.shape[0] != self.tokens:
            raise ValueError(f"unpack: expected {self.tokens} packed tokens, got {t.shape[0]}")
        if zeros:
            t = torch.cat([t, t.new_zeros(1, *t.shape[1:])])
            padded = t.index_select(0, self.source)
        else:
            padded = _SpreadForAttention.apply(t, self.source.clamp(max=self.tokens - 1),
                                               self.index)
        return padded.view(self.batch, self.padded_length, *t.shape[1:])

    def split(self, t, zeros=True):
        """[T, ...] -> [([B, L, ...] padded, lengths)]: the groups attention runs on."""
        return [(self.unpack(t, zeros), self.lengths)]

    def join(self, parts):
        """The inverse of split: [[B, L, ...]] -> [T, ...]."""
        return self.pack(parts[0])


class _SpreadForAttention(torch.autograd.Function):
    """unpack(zeros=False): t [T, ...] -> [B * L, ...] by `source` (padding slots repeat a
    kept token). Backward: the kept slots' gradients gathered back by `index` (each token
    sits in one kept slot), the padding slots' dropped: attention, the only user, masks the
    padded keys and its caller drops the padded queries' outputs, so theirs is zero anyway.
    One gather instead of index_select's zero fill and scatter-add."""

    @staticmethod
    def forward(ctx, t, source, index):
        ctx.save_for_backward(index)
        return t.index_select(0, source)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return grad.index_select(0, index), None, None


class TokenGroups:
    """Rows that keep every patch (photos) and rows packed by `Packing` (texts) as one token
    stream: [R * N + T, ...], the R dense rows' tokens first. Every per-token layer (GEMMs,
    LayerNorms, MLPs) runs on the stream once; attention runs on each group as its own batch
    (`split`, `join`): the dense rows unpadded and unmasked, the packed ones padded to their
    longest. Row order: the dense rows, then the packed ones."""

    def __init__(self, dense_rows, dense_length, packing):
        self.dense_rows, self.dense_length, self.packing = dense_rows, dense_length, packing
        self.dense_tokens = dense_rows * dense_length
        self.batch = dense_rows + packing.batch

    def split(self, t, zeros=True):
        # torch.split, not two slices: its backward is one cat (two slices' would be two
        # zero-filled copies of the whole stream's gradient, then their sum)
        dense, packed = t.split([self.dense_tokens, t.shape[0] - self.dense_tokens])
        dense = dense.view(self.dense_rows, self.dense_length, *t.shape[1:])
        return [(dense, None)] + self.packing.split(packed, zeros)

    def join(self, parts):
        dense = parts[0].reshape(self.dense_tokens, *parts[0].shape[2:])
        return torch.cat([dense, self.packing.join(parts[1:])])


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
