"""Worker for tests/test_loss_distributed.py: one gloo rank of a 2-process CPU run.

Every case gives each rank its slice of a fixed global batch, encodes it with a tiny linear
"tower" (shared by images and texts, as CLIPPO's), computes the loss and backpropagates, then
averages the gradients over ranks as DistributedDataParallel does (all_reduce sum / world;
DDP itself is not used because its first construction imports torch._dynamo, ~5 s per
process). The rank's loss value and the averaged gradients are saved for the parent to compare
with one process on the whole batch.
"""
import math

import torch
import torch.distributed as dist
from torch import nn

from clippo.loss import create_loss, sync_loss_gradients


class TinyTower(nn.Module):
    def __init__(self, d_in, d_out, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = nn.Linear(d_in, d_out, dtype=torch.float64)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(d_out, d_in, generator=g, dtype=torch.float64))
            self.proj.bias.copy_(torch.randn(d_out, generator=g, dtype=torch.float64))
        self.t = nn.Parameter(torch.tensor([math.log(10.0)], dtype=torch.float64))

    def forward(self, x_img, x_txt):
        zi, zt = self.proj(x_img), self.proj(x_txt)
        zi = zi / (zi.norm(dim=-1, keepdim=True) + 1e-8)
        zt = zt / (zt.norm(dim=-1, keepdim=True) + 1e-8)
        return zi, zt, self.t.exp()


def average_gradients(model):
    """DDP's gradient reduction: every parameter's gradient summed over ranks / world."""
    world = dist.get_world_size()
    for p in model.parameters():
        dist.all_reduce(p.grad)
        p.grad.div_(world)


def run_case(case, x_img, x_txt, distributed=True):
    """Loss and gradients for the given (local or whole) batch."""
    model = TinyTower(x_img.shape[1], case["dim"])
    loss_fn = create_loss(case["loss"], **case.get("kwargs", {})).to(torch.float64)
    zi, zt, scale = model(x_img, x_txt)
    loss = loss_fn(zi, zt, scale)
    loss.backward()
    if distributed:
        average_gradients(model)
        sync_loss_gradients(loss_fn)
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    grads.update({"loss." + name: p.grad.clone() for name, p in loss_fn.named_parameters()})
    return loss.detach(), grads


def worker(rank, world, init_file, cases, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        results = []
        for case in cases:
            sizes = case["sizes"]
            start = sum(sizes[:rank])
            sl = slice(start, start + sizes[rank])
            results.append(run_case(case, case["x_img"][sl], case["x_txt"][sl]))
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
