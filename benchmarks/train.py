"""Training-step throughput: clippo's step (text rendered on the device inside the step)
against the same model fed text rendered in DataLoader workers, side by side in one run.

Providers, on the same model size, batch, optimizer (AdamW) and loss:
  clippo (render in step)   workers hand over uint8 photos and caption strings; the step
                            renders the captions on the training device (clippo.train.step)
  render in workers         a Dataset renders each caption with clippo.TextRenderer in the
                            DataLoader worker and returns uint8 images; the step only encodes
  compiled baseline         (CUDA, or --compile) the same architecture written in torch ops
                            (benchmarks/encode.py's TimmStyleViT) under torch.compile, text
                            rendered in workers: the reference for MFU
  clippo compiled           (CUDA, or --compile) clippo's step with the ViT under torch.compile

For each: "step" = samples/s of the step alone on a batch already in memory (render, forward,
backward, clip, AdamW), and "loader" = samples/s of the loop fed by its DataLoader. A sample is
one (image, caption) pair: two tower passes. MFU = 3 x forward FLOPs (explicit formula,
encode.py's vit_flops) x 2 passes x samples/s / the GPU's dense bf16 peak. The render share is
the time of rendering one batch of captions on the device over clippo's step time.

Defaults: on CUDA, B/16 at 224 px, batch 1024, bf16 autocast; on the CPU a small model
(Ti/16 widths, depth 2, 64 px, batch 32, fp32) so that the script runs anywhere.

    python benchmarks/train.py [--variant B/16] [--batch 1024] [--steps 10] [--out DIR]

Writes <out>/train.json (default out/benchmarks/, which git ignores) and prints a table.
"""
import argparse
import copy
import functools
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from _common import print_table, sync, write_json  # noqa: E402
from encode import TimmStyleViT, peak_for, vit_flops  # noqa: E402

import clippo  # noqa: E402
from clippo.loss import create_loss  # noqa: E402
from clippo.train.main import enable_grad_checkpointing  # noqa: E402
from clippo.train.step import ContrastiveTask, forward_backward, train_step  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "out" / "benchmarks"
_SUBJECTS = ["a small dog", "two people", "a red car", "an old building", "a bowl of fruit",
             "a cat", "a man riding a bike", "a group of children", "a plate of food"]
_PLACES = ["in a park", "on a busy street", "next to a window", "at the beach",
           "on a wooden table", "in the snow", "under a bridge", "in a kitchen"]


def caption(i):
    """COCO-like captions of ~40-60 characters, varied by index."""
    return (f"{_SUBJECTS[i % len(_SUBJECTS)]} {_PLACES[(i // 7) % len(_PLACES)]} "
            f"on a sunny day, photo {i}")


class PhotoCaptions(torch.utils.data.Dataset):
    """(uint8 image [3, S, S], caption): images cycle through a fixed random pool so that
    decoding costs nothing and the comparison is about the text path."""

    def __init__(self, n, image_size, pool=64):
        g = torch.Generator().manual_seed(0)
        self.pool = torch.randint(0, 256, (pool, 3, image_size, image_size), dtype=torch.uint8,
                                  generator=g)
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.pool[i % len(self.pool)], caption(i)


class PhotoRenderedCaptions(PhotoCaptions):
    """The same pairs with the caption rendered in the worker: (image, text image uint8)."""

    def __init__(self, n, image_size, render_config, pool=64):
        super().__init__(n, image_size, pool)
        self.render_config = render_config
        self._renderer = None  # made in each worker on first use

    def __getitem__(self, i):
        if self._renderer is None:
            self._renderer = clippo.TextRenderer(**self.render_config.to_dict(), device="cpu")
        image, text = super().__getitem__(i)
        return image, self._renderer([text])[0].contiguous()


def collate_strings(items):
    return {"images": torch.stack([x[0] for x in items]), "texts": [x[1] for x in items],
            "skipped": 0}


def collate_rendered(items):
    return {"images": torch.stack([x[0] for x in items]),
            "rendered": torch.stack([x[1] for x in items]), "skipped": 0}


class BaselineTask(nn.Module):
    """TimmStyleViT + a temperature + the same loss: forward(left, right) -> loss."""

    def __init__(self, vit, loss):
        super().__init__()
        self.vit, self.loss = vit, loss
        self.t = nn.Parameter(torch.full((1,), math.log(10.0)))

    def forward(self, left, right):
        n = left.shape[0]
        x = torch.cat([left, right]).float() / 127.5 - 1  # uint8 -> [-1, 1]
        z = self.vit(x)
        with torch.autocast(z.device.type, enabled=False):
            return self.loss(z[:n].float(), z[n:].float(), self.t.exp()[0])

    def scale_parameters(self):
        return [self.t]


def _optimizer(module):
    return torch.optim.AdamW(module.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6,
                             weight_decay=0.1)


def _prerendered_step(module, optimizer, batch, device, autocast, accum):
    left = batch["images"].to(device, non_blocking=True)
    right = batch["rendered"].to(device, non_blocking=True)
    optimizer.zero_grad(set_to_none=True)
    forward_backward(module, module, list(zip(left.chunk(accum), right.chunk(accum))), autocast)
    torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
    optimizer.step()


def _clippo_step(task, optimizer, batch, device, autocast, accum):
    """train_step on the batch cut into `accum` micro-batches (the timed batch stays --batch)."""
    n = len(batch["texts"])
    bounds = [n * i // accum for i in range(accum + 1)]
    parts = [{"images": batch["images"][a:b], "texts": batch["texts"][a:b], "skipped": 0}
             for a, b in zip(bounds, bounds[1:])]
    return train_step(task, task, optimizer, parts, device=device, grad_clip_norm=1.0,
                      autocast=autocast)


def _loader(dataset, batch, workers, collate):
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=False, drop_last=True, num_workers=workers,
        collate_fn=collate, pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0,
        **({"prefetch_factor": 4} if workers else {}))


def loader_rate(step_fn, loader, steps, batch, device, warmup=2):
    """samples/s of `steps` steps fed by `loader` (after `warmup` steps)."""
    it = iter(loader)
    for _ in range(warmup):
        step_fn(next(it))
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step_fn(next(it))
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def interleaved(fns, device, rounds):
    """Median seconds per call of each (warmed-up) fn, timed in turns (one call of each per
    round), so that load drifting on a shared machine hits every fn alike."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default=None, help="default: B/16 on CUDA, Ti/16 on CPU")
    p.add_argument("--depth", type=int, default=None, help="default: the variant's (CPU: 2)")
    p.add_argument("--image-size", type=int, default=None, help="default: 224 (CPU: 64)")
    p.add_argument("--batch", type=int, default=None, help="default: 1024 on CUDA, 32 on CPU")
    p.add_argument("--accum-freq", type=int, default=1,
                   help="micro-batches the batch is cut into (the loss stays over the whole "
                        "batch)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 10, CPU 3)")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers (default: min(16, CPUs) on CUDA, 1 on CPU)")
    p.add_argument("--precision", choices=["bf16", "fp32"], default=None)
    p.add_argument("--compile", action="store_true", help="compiled providers on the CPU too")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute the blocks in the backward pass (a provider that runs out "
                        "of memory is retried with it anyway)")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--out", default=None, help=f"folder for train.json (default {DEFAULT_OUT})")
    args = p.parse_args(argv)

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    variant = args.variant or ("B/16" if cuda else "Ti/16")
    image_size = args.image_size or (224 if cuda else 64)
    batch = args.batch or (1024 if cuda else 32)
    steps = args.steps or (10 if cuda else 3)
    workers = args.workers if args.workers is not None else (
        min(16, os.cpu_count() or 1) if cuda else 1)
    precision = args.precision or ("bf16" if cuda else "fp32")
    autocast = (functools.partial(torch.autocast, device.type, dtype=torch.bfloat16)
                if precision == "bf16" else None)
    overrides = {"depth": args.depth or (None if cuda else 2)}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if not cuda:
        print("No CUDA device: a small CPU configuration, so the script is exercised; the MFU "
              "and render-share targets are for a GPU.")

    torch.manual_seed(0)
    model = clippo.create_model(variant, image_size=image_size, **overrides)
    cfg = model.config
    fwd = vit_flops(cfg["width"], cfg["depth"], cfg["mlp_dim"], cfg["patch_size"], image_size,
                    cfg["out_dim"])
    train_flops_per_sample = 3 * 2 * fwd  # fwd + bwd (2x) of the photo and the text image
    gpu = torch.cuda.get_device_name() if cuda else None
    peak = peak_for(gpu, args.peak_tflops)
    n_data = batch * (steps + 4)
    strings = PhotoCaptions(n_data, image_size)
    rendered = PhotoRenderedCaptions(n_data, image_size, model.render_config)
    sample = collate_strings([strings[i] for i in range(batch)])
    sample_rendered = collate_rendered([rendered[i] for i in range(batch)])

    # providers: name -> factory(grad_checkpointing) -> (step function, batch in memory,
    # loader); all built before timing so that their steps can be timed in turns
    def clippo_provider(compiled):
        def make(ckpt):
            torch.manual_seed(0)
            m = clippo.create_model(variant, image_size=image_size, **overrides)
            task = ContrastiveTask(m, create_loss("softmax")).to(device)
            if ckpt:
                enable_grad_checkpointing(m)
            if compiled:
                m.img.compile()
            step = functools.partial(_clippo_step, task, _optimizer(task), device=device,
                                     autocast=autocast, accum=args.accum_freq)
            return step, sample, _loader(strings, batch, workers, collate_strings)
        return make

    def prerendered_provider(baseline):
        def make(ckpt):
            torch.manual_seed(0)
            if baseline:
                vit = TimmStyleViT(cfg["width"], cfg["depth"], cfg["mlp_dim"], cfg["num_heads"],
                                   cfg["patch_size"], image_size, cfg["out_dim"],
                                   grad_checkpointing=ckpt)
                task = BaselineTask(vit, create_loss("softmax")).to(device)
                task.vit.compile()
            else:
                m = clippo.create_model(variant, image_size=image_size, **overrides)
                task = ContrastiveTask(m, create_loss("softmax")).to(device)
                if ckpt:
                    enable_grad_checkpointing(m)
            step = functools.partial(_prerendered_step, task, _optimizer(task), device=device,
                                     autocast=autocast, accum=args.accum_freq)
            return step, sample_rendered, _loader(rendered, batch, workers, collate_rendered)
        return make

    factories = {"clippo (render in step)": clippo_provider(False),
                 "render in workers": prerendered_provider(False)}
    if cuda or args.compile:
        # the reference for MFU: the architecture in torch ops, compiled, text from workers
        factories["compiled baseline (render in workers)"] = prerendered_provider(True)
        factories["clippo compiled (render in step)"] = clippo_provider(True)

    renderer = model.renderer(device)
    providers, checkpointed, failed = {}, set(), {}
    for name, make in factories.items():
        ckpt = args.grad_checkpointing
        while True:
            try:
                providers[name] = make(ckpt)
                fn, data, _ = providers[name]
                for _ in range(2):  # warm-up (and compilation)
                    fn(data)
                sync(device)
                break
            except torch.OutOfMemoryError as e:
                providers.pop(name, None)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if ckpt:
                    failed[name] = f"out of memory even with gradient checkpointing ({e})"
                    break
                print(f"  {name}: out of memory; retrying with gradient checkpointing")
                ckpt = True
        if ckpt and name in providers:
            checkpointed.add(name)
    timed = {name: functools.partial(fn, data) for name, (fn, data, _) in providers.items()}
    # the render share of clippo's step: one batch of captions rendered on the device
    timed["render"] = lambda: renderer(sample["texts"])
    seconds = interleaved(timed, device, rounds=steps)
    rows = []
    for name in factories:
        if name in failed:
            print(f"{name}: {failed[name]}")
            continue
        fn, _, loader = providers[name]
        rate = batch / seconds[name]
        rate_loader = loader_rate(fn, loader, steps, batch, device)
        tflops = train_flops_per_sample * rate / 1e12
        # hardware FLOPs: checkpointing runs each block's forward twice
        hw = (4 / 3 if name in checkpointed else 1.0) * tflops
        rows.append(dict(provider=name, batch=batch, step_ms=seconds[name] * 1e3,
                         step_samples_per_s=rate, loader_samples_per_s=rate_loader,
                         grad_ckpt=name in checkpointed, tflops=tflops,
                         mfu=tflops / peak if peak else None, hfu=hw / peak if peak else None))
    t_clippo = seconds.get("clippo (render in step)")
    t_render = seconds["render"]

    base_row = next((r for r in rows if r["provider"].startswith("compiled baseline")),
                    next((r for r in rows if r["provider"] == "render in workers"), None))
    for r in rows:
        r["vs_baseline"] = (r["step_samples_per_s"] / base_row["step_samples_per_s"]
                            if base_row else None)
    render_share = t_render / t_clippo if t_clippo else None
    title = (f"{variant} (depth {cfg['depth']}, {image_size} px) training step, batch {batch}, "
             f"{precision}, {device} ({gpu or 'CPU'}), {fwd / 1e9:.2f} GFLOP/forward")
    print_table(rows, ["provider", "batch", "step_ms", "step_samples_per_s",
                       "loader_samples_per_s", "grad_ckpt", "tflops", "mfu", "hfu",
                       "vs_baseline"], title=title)
    if render_share is not None:
        print(f"\nrender share of clippo's step: {render_share:.2%} "
              f"({t_render * 1e3:.2f} ms to render {batch} captions on {device}, "
              f"step {t_clippo * 1e3:.1f} ms)")
    write_json("train", rows, out_dir=args.out or DEFAULT_OUT, extra=dict(
        variant=variant, config=cfg, precision=precision, workers=workers,
        accum_freq=args.accum_freq, gflops_per_forward=fwd / 1e9,
        train_gflops_per_sample=train_flops_per_sample / 1e9, peak_tflops=peak,
        render_ms=t_render * 1e3, render_share=render_share, timed_rounds=steps,
        targets={"mfu": 0.45, "render_share": 0.03}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
