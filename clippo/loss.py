"""The CLIPPO training loss: symmetric softmax contrastive loss over the batch.

    logits = exp(t) * zimg @ ztxt.T,  labels = arange(B),
    loss = (CE(logits, labels) + CE(logits.T, labels)) / 2

Pass `model.temperature` (already exp(t)) as logit_scale. The reference computes this over
the global batch; with data parallelism, all-gather the embeddings before calling this.
"""
import torch
import torch.nn.functional as F
from torch import nn


def _check(zimg, ztxt, logit_scale):
    if zimg.dim() != 2 or ztxt.dim() != 2 or zimg.shape != ztxt.shape:
        raise ValueError(f"zimg and ztxt must both be [B, D] with the same shape, got "
                         f"{tuple(zimg.shape)} and {tuple(ztxt.shape)}")
    if zimg.shape[0] == 0:
        raise ValueError("contrastive loss needs a batch of at least one pair")
    n = torch.as_tensor(logit_scale).numel()
    if n != 1:
        raise ValueError(f"logit_scale must be a scalar, got {n} values")


def get_logits(zimg, ztxt, logit_scale):
    """(image->text logits [B, B], text->image logits [B, B])."""
    scale = torch.as_tensor(logit_scale, dtype=zimg.dtype, device=zimg.device).reshape(())
    logits = scale * zimg @ ztxt.t()
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


class ClipLoss(nn.Module):
    """Module form of `clip_loss`: loss(zimg, ztxt, logit_scale) -> scalar."""

    def get_ground_truth(self, batch_size, device=None):
        return torch.arange(batch_size, device=device)

    def get_logits(self, zimg, ztxt, logit_scale):
        return get_logits(zimg, ztxt, logit_scale)

    def forward(self, zimg, ztxt, logit_scale, output_dict=False):
        loss = clip_loss(zimg, ztxt, logit_scale)
        return {"contrastive_loss": loss} if output_dict else loss
