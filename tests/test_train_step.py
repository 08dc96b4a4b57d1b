"""The training step: gradient accumulation gives the whole batch's gradients, text pairs
join the batch as the paper's co-training does, and text is rendered in the step."""
import math

import pytest
import torch

import clippo
from clippo.loss import create_loss
from clippo.train.step import ContrastiveTask, forward_backward, render_sides, train_step

TEXTS = ["a red circle", "ein Kreis in Blau", "круг зелёного цвета", "左边的红色圆形",
         "a star at the top", "a white ring", "ein Stern", "a black cross on the left"]


def _task(loss="softmax", dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    model = clippo.create_model("mu/8", image_size=32, out_dim=16).to(dtype)
    return ContrastiveTask(model, create_loss(loss).to(dtype))


def _grads(task):
    return {n: p.grad.clone() for n, p in task.named_parameters() if p.grad is not None}


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"images": torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
            "texts": TEXTS[:n], "skipped": 0}


def _full_batch_grads(task, left, right):
    """The float64 reference: the loss over the whole batch in one piece, autograd."""
    task.zero_grad(set_to_none=True)
    loss = task(left, right)
    loss.backward()
    grads = _grads(task)
    task.zero_grad(set_to_none=True)
    return loss.detach(), grads


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
@pytest.mark.parametrize("sizes", [[4, 4], [3, 3, 2], [0, 5, 3], [2, 0, 0, 6]])
def test_accumulation_gives_the_whole_batch_gradient(loss, sizes):
    """k micro-batches (empty ones included): the loss and every gradient equal the float64
    full-batch loss's."""
    task = _task(loss)
    left, right = render_sides(task, _batch(), "cpu")
    ref, want = _full_batch_grads(task, left, right)
    micro = list(zip(left.split(sizes), right.split(sizes)))
    got_loss = forward_backward(task, task, micro)
    got = _grads(task)
    assert set(got) == set(want)
    assert "model.t" in got and (loss == "softmax" or "loss.logit_bias" in got)
    assert got_loss.item() == pytest.approx(ref.item(), rel=1e-12)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=1e-12,
                                   msg=lambda m, n=name: f"{n}: {m}")
    assert max(g.abs().max().item() for g in want.values()) > 1e-3  # gradients are not ~0


def test_train_step_takes_every_micro_batch():
    """A step of k micro-batches of the per-rank batch size updates with the gradient of the
    loss over all k x batch-size pairs (OpenCLIP's --accum-freq), not over one batch split."""
    task = _task()
    ref_task = _task()
    micro = [_batch(4, seed=1), _batch(4, seed=2)]
    micro[1]["texts"] = TEXTS[4:8]
    whole = {"images": torch.cat([m["images"] for m in micro]),
             "texts": micro[0]["texts"] + micro[1]["texts"], "skipped": 0}
    left, right = render_sides(ref_task, whole, "cpu")
    ref, want = _full_batch_grads(ref_task, left, right)
    opt = torch.optim.SGD(task.parameters(), lr=0.0)
    out = train_step(task, task, opt, micro, device=torch.device("cpu"))
    assert out["n"] == 8
    assert out["loss"].item() == pytest.approx(ref.item(), rel=1e-12)
    for name, g in want.items():
        torch.testing.assert_close(dict(task.named_parameters())[name].grad, g, rtol=1e-9,
                                   atol=1e-12)


def test_render_happens_in_the_step_on_the_model_renderer():
    task = _task()
    batch = _batch(4)
    left, right = render_sides(task, batch, "cpu")
    assert left.dtype == right.dtype == torch.uint8
    assert torch.equal(left, batch["images"])
    assert torch.equal(right, clippo.render(TEXTS[:4], image_size=32))


def test_text_pairs_join_one_softmax_over_the_combined_batch():
    task = _task()
    batch = {**_batch(4), "texts_a": ["there is a red star.", "da ist ein Ring in Blau."],
             "texts_b": ["the star is on the left.", "der Ring ist oben."]}
    left, right = render_sides(task, batch, "cpu")
    render = task.model.renderer("cpu")
    assert torch.equal(left, torch.cat([batch["images"], render(batch["texts_a"])]))
    assert torch.equal(right, render(TEXTS[:4] + batch["texts_b"]))
    # the loss is one 6 x 6 softmax, checked against a float64 loop
    with torch.no_grad():
        loss = task(left, right)
        zl, zr = task.model.encode_image(left), task.model.encode_image(right)
        s = task.model.temperature * zl @ zr.t()
    rows = [-(s[i, i] - torch.logsumexp(s[i], 0)) for i in range(6)]
    cols = [-(s[j, j] - torch.logsumexp(s[:, j], 0)) for j in range(6)]
    assert loss.item() == pytest.approx((sum(rows) / 6 + sum(cols) / 6).item() / 2, rel=1e-12)


def test_train_step_updates_and_reports():
    task = _task(dtype=torch.float32)
    before = {n: p.detach().clone() for n, p in task.named_parameters()}
    opt = torch.optim.AdamW(task.parameters(), lr=1e-3)
    out = train_step(task, task, opt, _batch(), device=torch.device("cpu"), grad_clip_norm=1.0)
    assert out["n"] == 8 and math.isfinite(out["loss"].item())
    assert out["grad_norm"].item() > 0
    changed = [n for n, p in task.named_parameters() if not torch.equal(p, before[n])]
    assert "model.t" in changed and "model.img.head.weight" in changed
