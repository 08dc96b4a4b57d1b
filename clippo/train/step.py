"""The training step: text rendered on the training device, one contrastive loss, an update.

A batch is {"images": uint8 [n, 3, S, S], "texts": [n str], "skipped": int} and, with text-pair
co-training, also {"texts_a": [m str], "texts_b": [m str]}. The step renders the strings on
the device (the model's renderer, no gradient) and forms the two sides of the loss:

    left  = cat(images, render(texts_a))          photos, then the first sentences
    right = render(cat(texts, texts_b))           captions, then the next sentences

so image-text and sentence pairs share one softmax over the combined batch (the paper's
"+25% C4"). Both sides go through the one tower in a single encode call.

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

    def __init__(self, model, loss):
        super().__init__()
        self.model = model
        self.loss = loss

    def encode(self, left, right):
        n = left.shape[0]
        z = self.model.encode_image(torch.cat([left, right]))
        return z[:n], z[n:]

    def forward(self, left, right, cached=None, index=None, encode_only=False):
        zl, zr = self.encode(left, right)
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
    images = batch["images"]
    if images.shape[0] == 0:  # every photo of the batch was skipped: [0, 3, 0, 0]
        size = task.model.render_config.image_size
        images = torch.empty((0, 3, size, size), dtype=torch.uint8)
    images = images.to(device, non_blocking=True)
    texts = list(batch["texts"])
    texts_a, texts_b = list(batch.get("texts_a") or []), list(batch.get("texts_b") or [])
    with torch.no_grad():
        render = task.model.renderer(device)
        right = render(texts + texts_b)
        left = torch.cat([images, render(texts_a)]) if texts_a else images
    return left, right


def forward_backward(module, task, micro_batches, autocast=None):
    """Gradients of the loss over all micro-batches into the parameters' .grad (added to what
    is there). micro_batches: [(left, right)] uint8 image batches, any of them empty.

    module: `task` or its DDP wrapper. Returns the loss (detached).
    """
    autocast = autocast or contextlib.nullcontext
    k = len(micro_batches)
    if k == 1:
        with autocast():
            loss = module(*micro_batches[0])
        loss.backward()
        return loss.detach()
    with torch.no_grad(), autocast():
        cached = [module(l, r, encode_only=True) for l, r in micro_batches]
    cached = ([z[0] for z in cached], [z[1] for z in cached])
    no_sync = getattr(module, "no_sync", None)
    for j, (l, r) in enumerate(micro_batches):
        last = j == k - 1
        sync = contextlib.nullcontext() if last or no_sync is None else no_sync()
        with sync:
            with autocast():
                loss = module(l, r, cached=cached, index=j)
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
    sides = [render_sides(task, b, device) for b in batches]
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
    return {"loss": loss, "n": sum(left.shape[0] for left, _ in sides),
            "grad_norm": grad_norm.detach(), "finite": finite}
