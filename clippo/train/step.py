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

Gradient accumulation (--accum-freq k, as OpenCLIP): a step takes k micro-batches of the
per-rank batch size, so the loss is over batch_size x k x world_size pairs. The embeddings of
all k micro-batches are computed without gradient first; then each micro-batch is encoded
again with gradient and its embeddings replace its slots among the cached ones, so each
backward pass is of the loss over the whole accumulated batch. Summed over the micro-batches
this is the whole batch's gradient for the tower; the temperature (and the sigmoid loss's
bias), which enter every one of the k losses directly, are divided by k afterwards.

Every rank runs the same collectives in the same order whatever its data: the row counts of
all micro-batches are all-reduced first (a step whose every rank is empty is skipped by all
ranks together), then each rank runs all k micro-batches, empty ones included (the tower takes
a batch of 0 rows, and the loss gathers variable-size embeddings by their sizes first).
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


def forward_backward(module, task, micro_batches, autocast=None):
    """Gradients of the loss over all micro-batches into the parameters' .grad (added to what
    is there). micro_batches: [(left, right, keep)] from render_batch, any of them empty.

    module: `task` or its DDP wrapper; keep: render_batch's masks. Returns the loss (detached).
    """
    autocast = autocast or contextlib.nullcontext
    micro_batches = [(*mb, None) if len(mb) == 2 else tuple(mb) for mb in micro_batches]
    k = len(micro_batches)
    if k == 1:
        with autocast():
            loss = module(*micro_batches[0][:2], keep=micro_batches[0][2])
        loss.backward()
        return loss.detach()
    with torch.no_grad(), autocast():
        cached = [module(l, r, encode_only=True, keep=kp) for l, r, kp in micro_batches]
    cached = ([z[0] for z in cached], [z[1] for z in cached])
    no_sync = getattr(module, "no_sync", None)
    for j, (l, r, kp) in enumerate(micro_batches):
        last = j == k - 1
        sync = contextlib.nullcontext() if last or no_sync is None else no_sync()
        with sync:
            with autocast():
                loss = module(l, r, cached=cached, index=j, keep=kp)
            loss.backward()
    for p in task.scale_parameters():
        if p.grad is not None:
            p.grad.div_(k)
    return loss.detach()


def count_rows(batches):
    """Rows that the micro-batches put into the loss (photos and text pairs)."""
    return sum(b["images"].shape[0] + len(b.get("texts_a") or []) for b in batches)


def train_step(module, task, optimizer, batches, *, device, grad_clip_norm=None,
               autocast=None):
    """One update from a list of micro-batches (the accum_freq batches of one step); none
    when the gradient norm is NaN/Inf.

    Returns {loss, n (rows in the loss on this rank), grad_norm, finite (whether the update
    was made)}, tensors on the device. The caller has made sure that some rank holds a row
    (count_rows summed over ranks).
    """
    if isinstance(batches, dict):
        batches = [batches]
    sides = [render_batch(task, b, device) for b in batches]
    optimizer.zero_grad(set_to_none=True)
    loss = forward_backward(module, task, sides, autocast)
    params = [p for p in task.parameters() if p.grad is not None]
    if grad_clip_norm:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip_norm)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    # a NaN/Inf gradient skips the update: the weights and moments stay as they were (the
    # norm is of the all-reduced gradient, so every rank decides alike)
    finite = torch.isfinite(grad_norm)
    guarded_step(optimizer, finite)
    return {"loss": loss, "n": sum(left.shape[0] for left, _, _ in sides),
            "grad_norm": grad_norm.detach(), "finite": finite}
