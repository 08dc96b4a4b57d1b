"""CLIPPO's training losses: the symmetric softmax contrastive loss and SigLIP's sigmoid loss.

Softmax (the reference's loss):

    logits = exp(t) * zimg @ ztxt.T,  labels = arange(B),
    loss = (CE(logits, labels) + CE(logits.T, labels)) / 2

Sigmoid (SigLIP, `--loss sigmoid`), with a learned bias b (init -10):

    loss = -1/B * sum_ij log sigmoid(y_ij * (exp(t) * zimg_i . ztxt_j + b)),  y_ii = 1, else -1

Pass `model.temperature` (already exp(t)) as `logit_scale`.

Data parallel training (torch.distributed initialised, world size > 1). Both losses are taken
over the GLOBAL batch of B = sum of the local sizes. Each rank all-gathers both embeddings with
gradient and computes only its own rows against the gathered columns ("local loss": memory
linear in the local batch). The local batch sizes may differ (skipped samples): the sizes are
gathered first, the embeddings padded to the largest and the padding dropped after the gather.

Normalisation: DDP averages the parameter gradients over the W ranks, i.e. it optimises the
mean of the per-rank losses. Each rank therefore returns

    loss_r = W / B * (sum of its rows' terms)

(softmax: its rows' image->text and text->image cross-entropies, halved; sigmoid: the terms of
its image rows against all text columns), so that mean_r loss_r equals the global-batch loss
and the DDP-averaged gradient equals the single-process gradient of the global batch, for any
local sizes. With equal local sizes loss_r is the plain mean over the rank's rows (open_clip's
local loss). The all-gather's backward sums the gradients that every rank's loss sends to a
rank's embeddings, which is what makes the gathered columns' gradients exact.

Parameters held by the loss (SigLipLoss.logit_bias) are not inside the DDP-wrapped model: call
`sync_loss_gradients(loss)` after backward (or wrap them into the DDP module) so that every rank
steps them with the averaged gradient.
"""
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["clip_loss", "get_logits", "siglip_loss", "ClipLoss", "SigLipLoss", "create_loss",
           "gather_features", "sync_loss_gradients", "LOSSES"]


def _check(zimg, ztxt, logit_scale, *, allow_empty=False):
    if zimg.dim() != 2 or ztxt.dim() != 2 or zimg.shape != ztxt.shape:
        raise ValueError(f"zimg and ztxt must both be [B, D] with the same shape, got "
                         f"{tuple(zimg.shape)} and {tuple(ztxt.shape)}")
    if zimg.shape[0] == 0 and not allow_empty:
        raise ValueError("contrastive loss needs a batch of at least one pair")
    n = torch.as_tensor(logit_scale).numel()
    if n != 1:
        raise ValueError(f"logit_scale must be a scalar, got {n} values")


def _scalar(value, like, dtype=None):
    """A 0-d tensor of `value` in like's dtype (or dtype) and device; keeps autograd."""
    dtype = like.dtype if dtype is None else dtype
    if isinstance(value, torch.Tensor):
        return value.to(dtype=dtype, device=like.device).reshape(())
    return torch.tensor(value, dtype=dtype, device=like.device)


def get_logits(zimg, ztxt, logit_scale):
    """(image->text logits [B, B], text->image logits [B, B])."""
    logits = _scalar(logit_scale, zimg) * zimg @ ztxt.t()
    return logits, logits.t()


def clip_loss(zimg, ztxt, logit_scale, *, return_parts=False):
    """Mean of the image->text and text->image cross-entropies; pairs are (zimg[i], ztxt[i])."""
    _check(zimg, ztxt, logit_scale)
    logits_i2t, logits_t2i = get_logits(zimg, ztxt, logit_scale)
    labels = torch.arange(zimg.shape[0], device=zimg.device)
    if logits_i2t.dtype in (torch.float16, torch.bfloat16):
        # softmax in float32: half-precision logits lose the margin between pairs
        logits_i2t, logits_t2i = logits_i2t.float(), logits_t2i.float()
    l_i2t = F.cross_entropy(logits_i2t, labels)
    l_t2i = F.cross_entropy(logits_t2i, labels)
    loss = (l_i2t + l_t2i) / 2
    if return_parts:
        return loss, {"img2txt": l_i2t, "txt2img": l_t2i}
    return loss


def siglip_loss(zimg, ztxt, logit_scale, logit_bias):
    """SigLIP's pairwise sigmoid loss over one batch, normalised by the batch size B."""
    _check(zimg, ztxt, logit_scale)
    logits = _sigmoid_logits(zimg, ztxt, logit_scale, logit_bias)
    signs = 2 * torch.eye(zimg.shape[0], dtype=logits.dtype, device=logits.device) - 1
    return -F.logsigmoid(signs * logits).sum() / zimg.shape[0]


def _sigmoid_logits(zimg, ztxt, logit_scale, logit_bias):
    logits = _scalar(logit_scale, zimg) * zimg @ ztxt.t()
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return logits + _scalar(logit_bias, logits)


# --- distributed gathering ---------------------------------------------------------------------

def _world(rank, world_size):
    """(rank, world_size): explicit values win, else torch.distributed's, else (0, 1)."""
    initialised = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if world_size > 1 and not initialised:
        raise RuntimeError(f"world_size={world_size} needs torch.distributed to be initialised")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    return rank, world_size


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums, over ranks, the gradients sent to each rank's slice.

    torch.distributed.nn.functional.all_gather needs all_to_all for this on non-NCCL backends,
    which gloo lacks; an all_reduce (or NCCL's reduce_scatter) of the stacked gradient does it
    everywhere.
    """

    @staticmethod
    def forward(ctx, x):
        world, rank = dist.get_world_size(), dist.get_rank()
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x)
        ctx.rank, ctx.world = rank, world
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        if dist.get_backend() == dist.Backend.NCCL:
            out = torch.empty_like(grad[0])
            dist.reduce_scatter_tensor(out, grad)
            return out
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad[ctx.rank]


def _gather_sizes(n_local, device):
    sizes = torch.tensor([n_local], dtype=torch.int64, device=device)
    parts = [torch.empty_like(sizes) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, sizes)
    return [int(p.item()) for p in parts]


def gather_features(zimg, ztxt, *, gather_with_grad=True, rank=None, world_size=None):
    """All-gather [n_r, D] embeddings of every rank into [B, D] (rank order), B = sum n_r.

    Returns (all_zimg, all_ztxt, sizes). With gather_with_grad the gathered tensors carry the
    gradient to every rank's embeddings (exact global gradients); without it only this rank's
    own slice does (open_clip's cheaper approximation).
    """
    rank, world = _world(rank, world_size)
    if world == 1:
        return zimg, ztxt, [zimg.shape[0]]
    sizes = _gather_sizes(zimg.shape[0], zimg.device)
    longest = max(sizes)
    pad = longest - zimg.shape[0]
    # one collective for both embeddings: [n, 2, D] padded to [longest, 2, D]
    local = torch.stack([zimg, ztxt], dim=1)
    if pad:
        local = torch.cat([local, local.new_zeros((pad,) + local.shape[1:])])
    if gather_with_grad:
        gathered = _AllGatherWithGrad.apply(local)
    else:
        with torch.no_grad():
            parts = [torch.empty_like(local) for _ in range(world)]
            dist.all_gather(parts, local.contiguous())
        parts[rank] = local
        gathered = torch.stack(parts)
    keep = torch.cat([torch.arange(n, device=zimg.device) + r * longest
                      for r, n in enumerate(sizes)])
    flat = gathered.reshape(world * longest, 2, -1).index_select(0, keep)
    return flat[:, 0], flat[:, 1], sizes


# --- modules -----------------------------------------------------------------------------------

class ClipLoss(nn.Module):
    """Symmetric softmax contrastive loss over the global batch (see the module docstring).

    local_loss: each rank computes its rows only (memory linear in the local batch); otherwise
    every rank builds the whole [B, B] logits and returns the global loss itself. Both give the
    global-batch gradient after DDP's averaging when gather_with_grad is set.
    """

    def __init__(self, local_loss=True, gather_with_grad=True, rank=None, world_size=None):
        super().__init__()
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.rank, self.world_size = rank, world_size

    def get_ground_truth(self, batch_size, device=None):
        return torch.arange(batch_size, device=device)

    def get_logits(self, zimg, ztxt, logit_scale):
        return get_logits(zimg, ztxt, logit_scale)

    def forward(self, zimg, ztxt, logit_scale, logit_bias=None, output_dict=False):
        rank, world = _world(self.rank, self.world_size)
        if world == 1:
            loss = self._single(zimg, ztxt, logit_scale, logit_bias)
        else:
            loss = self._distributed(zimg, ztxt, logit_scale, logit_bias, rank, world)
        return {"contrastive_loss": loss} if output_dict else loss

    @staticmethod
    def _single(zimg, ztxt, logit_scale, logit_bias):
        if logit_bias is None:
            return clip_loss(zimg, ztxt, logit_scale)
        # a bias shared by every logit cancels in the softmax; kept for open_clip's signature
        _check(zimg, ztxt, logit_scale)
        logits = get_logits(zimg, ztxt, logit_scale)[0]
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        logits = logits + _scalar(logit_bias, logits)
        labels = torch.arange(zimg.shape[0], device=zimg.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2

    def _distributed(self, zimg, ztxt, logit_scale, logit_bias, rank, world):
        _check(zimg, ztxt, logit_scale, allow_empty=True)
        all_img, all_txt, sizes = gather_features(
            zimg, ztxt, gather_with_grad=self.gather_with_grad, rank=rank, world_size=world)
        total = sum(sizes)
        if total == 0:
            raise ValueError("contrastive loss needs a batch of at least one pair (all ranks "
                             "have empty batches)")
        scale = _scalar(logit_scale, zimg)
        if not self.local_loss:
            return self._single(all_img, all_txt, scale, logit_bias)
        start = sum(sizes[:rank])
        labels = torch.arange(zimg.shape[0], device=zimg.device) + start
        logits_i2t = scale * zimg @ all_txt.t()  # my images against every text: [n, B]
        logits_t2i = scale * ztxt @ all_img.t()  # my texts against every image: [n, B]
        if logits_i2t.dtype in (torch.float16, torch.bfloat16):
            logits_i2t, logits_t2i = logits_i2t.float(), logits_t2i.float()
        if logit_bias is not None:
            bias = _scalar(logit_bias, logits_i2t)
            logits_i2t, logits_t2i = logits_i2t + bias, logits_t2i + bias
        summed = (F.cross_entropy(logits_i2t, labels, reduction="sum")
                  + F.cross_entropy(logits_t2i, labels, reduction="sum"))
        return summed * (world / (2 * total))


class SigLipLoss(nn.Module):
    """SigLIP's sigmoid loss with a learnable bias; the scale is the model's exp(t).

    forward(zimg, ztxt, logit_scale) -> scalar. Over the global batch of size B this is
    -1/B * sum over all B*B (image, text) pairs of log sigmoid(+-(scale * zi.zj + bias));
    each rank takes its image rows against all gathered text columns, scaled by W / B as
    described in the module docstring.
    """

    def __init__(self, init_logit_bias=-10.0, rank=None, world_size=None):
        super().__init__()
        self.logit_bias = nn.Parameter(torch.tensor(float(init_logit_bias)))
        self.rank, self.world_size = rank, world_size

    def forward(self, zimg, ztxt, logit_scale, logit_bias=None, output_dict=False):
        bias = self.logit_bias if logit_bias is None else logit_bias
        rank, world = _world(self.rank, self.world_size)
        if world == 1:
            loss = siglip_loss(zimg, ztxt, logit_scale, bias)
        else:
            _check(zimg, ztxt, logit_scale, allow_empty=True)
            # the text embeddings are the only gathered side this loss uses; gathering both
            # keeps one code path (the image half costs one extra all_gather of [n, D])
            _, all_txt, sizes = gather_features(zimg, ztxt, rank=rank, world_size=world)
            total = sum(sizes)
            if total == 0:
                raise ValueError("sigmoid loss needs a batch of at least one pair (all ranks "
                                 "have empty batches)")
            logits = _sigmoid_logits(zimg, all_txt, logit_scale, bias)
            start = sum(sizes[:rank])
            signs = -torch.ones_like(logits)
            rows = torch.arange(zimg.shape[0], device=zimg.device)
            signs[rows, rows + start] = 1.0
            loss = -F.logsigmoid(signs * logits).sum() * (world / total)
        return {"contrastive_loss": loss} if output_dict else loss


LOSSES = {"softmax": ClipLoss, "sigmoid": SigLipLoss}


def create_loss(name="softmax", **kwargs):
    """"softmax" -> ClipLoss(**kwargs), "sigmoid" -> SigLipLoss(**kwargs)."""
    try:
        cls = LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}") from None
    return cls(**kwargs)


@torch.no_grad()
def sync_loss_gradients(loss_module):
    """Average the gradients of the loss's own parameters over ranks, as DDP does for the
    model's. A no-op without torch.distributed or for a loss without parameters."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    for p in loss_module.parameters():
        if p.grad is None:
            # every rank must join the collective: an unused bias contributes zero
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad.div_(world)
