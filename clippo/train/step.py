"""The training step: text rendered on the training device, one contrastive loss, an update.

A batch is {"images": uint8 [n, 3, S, S], "texts": [n str], "skipped": int} and, with text-pair
co-training, also {"texts_a": [m str], "texts_b": [m str]}. The step renders the strings on
the device (the model's renderer, no gradient) and forms the two sides of the loss:

    left  = cat(images, render(texts_a))          photos, then the first sentences
    right = render(cat(texts, texts_b))           captions, then the next sentences

so image-text and sentence pairs share one softmax over the combined batch (the paper's
"+25% C4"). Both sides go through the one tower in a single encode call.

Which tokens each row is encoded from travels as `keep`, a pair of bool [rows, N] masks (None:
every patch of every row): with the model's text_tokens="ink" the rendered texts (captions and
both sentences of a pair) keep their ink patches; with patch dropout (FLIP) the photos keep a
random subset drawn from torch's RNG in the step, in training mode only.

Gradient accumulation (accum_freq k > 1) follows open_clip: the embeddings of all k
micro-batches are computed without gradient, then each micro-batch is encoded again with
gradient and its embeddings replace its slots among the cached ones, so each backward pass is
of the loss over the whole batch. Summed over the micro-batches this is the whole batch's
gradient for the tower; the temperature (and the sigmoid loss's bias), which enter every one
of the k losses directly, are divided by k afterwards.
"""
import contextlib

import torch
from torch import nn

from clippo.train.nonfinite import guarded_step


class ContrastiveTask(nn.Module):
    """The model and the loss in one module, so that DDP averages the gradients of both (the
    sigmoid loss holds a learned bias).

    forward(left, right) -> loss; forward(left, right, encode_only=True) -> (zl, zr);
    forward(left, right, cached=(zls, zrs), index=j) -> the loss with micro-batch j's
    embeddings computed here and the others taken from `cached`.
    """

    def __init__(self, model, loss, patch_dropout=0.0):
        super().__init__()
        if not 0.0 <= patch_dropout < 1.0:
            raise ValueError(f"patch dropout must be in [0, 1), got {patch_dropout}")
        self.model = model
        self.loss = loss
        self.patch_dropout = float(patch_dropout)  # photos, in training mode only

    def encode(self, left, right, keep=None):
        n = left.shape[0]
        keep = None if keep is None else torch.cat(keep)
        z = self.model.encode_image(torch.cat([left, right]), keep=keep)
        return z[:n], z[n:]

    def forward(self, left, right, cached=None, index=None, encode_only=False, keep=None):
        zl, zr = self.encode(left, right, keep)
        if encode_only:
            return zl, zr
        if cached is not None:
            lefts, rights = list(cached[0]), list(cached[1])
            lefts[index], rights[index] = zl, zr
            zl, zr = torch.cat(lefts), torch.cat(rights)
        # the loss in fp32 whatever the autocast: bf16 logits lose the margins between pairs
        dtype = torch.promote_types(zl.dtype, torch.float32)
        with torch.autocast(zl.device.type, enabled=False):
            return self.loss(zl.to(dtype), zr.to(dtype), self.model.temperature.to(dtype))

    def scale_parameters(self):
        """Parameters that enter the loss directly rather than through the tower."""
        return [self.model.t, *self.loss.parameters()]


def render_sides(task, batch, device):
    """(left, right) uint8 image batches on `device`; the strings are rendered there."""
    return render_batch(task, batch, device)[:2]


def render_batch(task, batch, device):
    """(left, right, keep): the image batches of render_sides and which patches each row is
    encoded from (None: all of them)."""
    images = batch["images"]
    if images.shape[0] == 0:  # every photo of the batch was skipped: [0, 3, 0, 0]
        size = task.model.render_config.image_size
        images = torch.empty((0, 3, size, size), dtype=torch.uint8)
    images = images.to(device, non_blocking=True)
    texts = list(batch["texts"])
    texts_a, texts_b = list(batch.get("texts_a") or []), list(batch.get("texts_b") or [])
    model = task.model
    with torch.no_grad():
        right, right_keep = model.render_texts(texts + texts_b, device)
        left, left_keep = images, None
        if texts_a:
            rendered_a, keep_a = model.render_texts(texts_a, device)
            left = torch.cat([images, rendered_a])
        dropout = task.patch_dropout if task.training else 0.0
        if right_keep is None and not dropout:
            return left, right, None
        n_patches = model.img.num_patches
        photos = (_random_keep(images.shape[0], n_patches, dropout, device) if dropout else
                  torch.ones(images.shape[0], n_patches, dtype=torch.bool, device=device))
        if right_keep is None:  # text_tokens "all": every text patch
            right_keep = torch.ones(right.shape[0], n_patches, dtype=torch.bool, device=device)
            keep_a = torch.ones(len(texts_a), n_patches, dtype=torch.bool, device=device)
        left_keep = torch.cat([photos, keep_a]) if texts_a else photos
    return left, right, (left_keep, right_keep)


def _random_keep(rows, num_patches, fraction, device):
    from clippo.model.tokens import random_keep
    return random_keep(rows, num_patches, fraction, device)


def micro_batch_sizes(n, parts):
    """n split into `parts` near-equal sizes (larger first); zero-sized parts dropped."""
    base, extra = divmod(n, parts)
    return [base + (i < extra) for i in range(parts) if base + (i < extra) > 0]


def forward_backward(module, task, left, right, accum_freq=1, autocast=None, keep=None):
    """Gradients of the batch's loss into the parameters' .grad (added to what is there).

    module: `task` or its DDP wrapper; keep: render_batch's masks. Returns the loss (detached).
    """
    autocast = autocast or contextlib.nullcontext
    n = left.shape[0]
    sizes = micro_batch_sizes(n, accum_freq)
    if len(sizes) <= 1:
        with autocast():
            loss = module(left, right, keep=keep)
        loss.backward()
        return loss.detach()
    lefts, rights = left.split(sizes), right.split(sizes)
    keeps = ([None] * len(sizes) if keep is None
             else list(zip(keep[0].split(sizes), keep[1].split(sizes))))
    with torch.no_grad(), autocast():
        cached = [module(l, r, encode_only=True, keep=kp)
                  for l, r, kp in zip(lefts, rights, keeps)]
    cached = ([z[0] for z in cached], [z[1] for z in cached])
    no_sync = getattr(module, "no_sync", None)
    for j, (l, r) in enumerate(zip(lefts, rights)):
        last = j == len(sizes) - 1
        sync = contextlib.nullcontext() if last or no_sync is None else no_sync()
        with sync:
            with autocast():
                loss = module(l, r, cached=cached, index=j, keep=keeps[j])
            loss.backward()
    k = len(sizes)
    for p in task.scale_parameters():
        if p.grad is not None:
            p.grad.div_(k)
    return loss.detach()


def train_step(module, task, optimizer, batch, *, device, accum_freq=1, grad_clip_norm=None,
               autocast=None):
    """One update (none when the gradient norm is NaN/Inf). Returns
    {loss, n (rows in the loss), grad_norm, finite (whether the update was made)}, tensors on
    the device."""
    left, right, keep = render_batch(task, batch, device)
    optimizer.zero_grad(set_to_none=True)
    loss = forward_backward(module, task, left, right, accum_freq, autocast, keep)
    params = [p for p in task.parameters() if p.grad is not None]
    if grad_clip_norm:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip_norm)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    # a NaN/Inf gradient skips the update: the weights and moments stay as they were (the
    # norm is of the all-reduced gradient, so every rank decides alike)
    finite = torch.isfinite(grad_norm)
    guarded_step(optimizer, finite)
    return {"loss": loss, "n": left.shape[0], "grad_norm": grad_norm.detach(), "finite": finite}
