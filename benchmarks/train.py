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

Text tokens: `--text-tokens all,ink` times clippo's step once per setting of the model's
text_tokens (every patch of a rendered caption, or only those holding ink), in turns, and
reports the share of text tokens kept; the other providers are left out then. Captions come
from `coco_caption` (COCO-like wording and lengths) or, with `--recipe demo` (the model,
image size and batch of `clippo demo`), from the built-in data the demo trains on.

    python benchmarks/train.py [--variant B/16] [--batch 1024] [--steps 10] [--out DIR]
    python benchmarks/train.py --variant Ti/16 --depth 12 --image-size 224 --batch 16 \
        --text-tokens all,ink

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
from clippo.train.main import build_optimizer, enable_grad_checkpointing  # noqa: E402
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


# COCO captions: about 10.5 words and 52 characters on average, most between 35 and 75
# characters, a long tail past 100. coco_caption draws a target length from a shifted gamma
# with that mean and a standard deviation of 12 characters (20 + Gamma(7.1, 4.5)), then
# writes words of COCO's everyday vocabulary (subject, action, place, detail) until the next
# word would pass the target.
_COCO_WORDS = dict(
    subject=["a man", "a woman", "two dogs", "a young boy", "a large white bus", "a cat",
             "a group of people", "a giraffe", "an elephant", "a plate of food", "a kitchen",
             "a person", "a red fire hydrant", "a small child", "a herd of sheep"],
    action=["standing", "sitting", "walking", "riding a bike", "eating a sandwich",
            "holding an umbrella", "parked", "playing frisbee", "looking out", "lying"],
    place=["on a city street", "in a grassy field", "next to a building", "on a wooden table",
           "near the water", "in the snow", "at a train station", "on top of a bed",
           "in front of a mirror", "inside a living room", "by the side of the road"],
    detail=["with a dog", "on a sunny day", "with trees in the background", "at night",
            "while people watch", "next to a red car", "covered in snow", "with two cups",
            "under a blue sky", "near a fence", "in the afternoon", "and a small table"],
)


def coco_caption(i):
    """A caption of COCO-like wording with a length from COCO's distribution (see above)."""
    import numpy as np
    rng = np.random.default_rng([11, i])
    target = 20 + rng.gamma(7.1, 4.5)
    parts = [rng.choice(_COCO_WORDS[k]) for k in ("subject", "action", "place")]
    while len(" ".join(parts)) < target:
        parts.append(rng.choice(_COCO_WORDS["detail"]))
    words = " ".join(parts).split(" ")
    text = words[0]
    for w in words[1:]:  # stop at the word boundary nearest the target
        if abs(len(text) + 1 + len(w) - target) > abs(len(text) - target):
            break
        text += " " + w
    return text


class PhotoCaptions(torch.utils.data.Dataset):
    """(uint8 image [3, S, S], caption): images cycle through a fixed random pool so that
    decoding costs nothing and the comparison is about the text path."""

    def __init__(self, n, image_size, pool=64, captions=caption):
        g = torch.Generator().manual_seed(0)
        self.pool = torch.randint(0, 256, (pool, 3, image_size, image_size), dtype=torch.uint8,
                                  generator=g)
        self.n = n
        self.captions = captions

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.pool[i % len(self.pool)], self.captions(i)


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
    """The optimizer `clippo train` builds with its defaults (AdamW, torch's fused kernel
    where the device has one; weight decay on kernels only), so the step timed is the step
    trained."""
    args = argparse.Namespace(opt="adamw", lr=1e-4, beta1=0.9, beta2=0.98, eps=1e-6, wd=0.1)
    return build_optimizer(args, module)


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
    p.add_argument("--text-tokens", default=None,
                   help="comma-separated text_tokens settings to time clippo's step with, in "
                        "turns (all, ink); the other providers are left out then")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's); on a CPU shared with other "
                        "jobs one thread avoids OpenMP threads waiting on descheduled peers")
    p.add_argument("--recipe", choices=["demo"], default=None,
                   help="demo: clippo demo's model, image size, batch and built-in captions")
    p.add_argument("--out", default=None, help=f"folder for train.json (default {DEFAULT_OUT})")
    args = p.parse_args(argv)

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    text_tokens = _text_tokens(args.text_tokens)
    captions = coco_caption if text_tokens else caption
    recipe_sizes = {}
    if args.recipe == "demo":
        from clippo.demo import RECIPE
        args.variant = args.variant or RECIPE["model"]
        args.image_size = args.image_size or RECIPE["image_size"]
        args.batch = args.batch or RECIPE["batch_size"]
        args.depth = args.depth or RECIPE["depth"]
        recipe_sizes = dict(width=RECIPE["width"], num_heads=RECIPE["heads"],
                            mlp_dim=RECIPE["mlp_dim"], out_dim=RECIPE["out_dim"],
                            patch_size=RECIPE["patch_size"])
        captions = _builtin_captions
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
    overrides = {k: v for k, v in {**overrides, **recipe_sizes}.items() if v is not None}
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
    strings = PhotoCaptions(n_data, image_size, captions=captions)
    rendered = PhotoRenderedCaptions(n_data, image_size, model.render_config)
    sample = collate_strings([strings[i] for i in range(batch)])
    sample_rendered = collate_rendered([rendered[i] for i in range(batch)])

    # providers: name -> factory(grad_checkpointing) -> (step function, batch in memory,
    # loader); all built before timing so that their steps can be timed in turns
    def clippo_provider(compiled, tokens="all"):
        def make(ckpt):
            torch.manual_seed(0)
            m = clippo.create_model(variant, image_size=image_size, text_tokens=tokens,
                                    **overrides)
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
    if text_tokens:
        factories = {_tokens_name(t): clippo_provider(False, t) for t in text_tokens}
        if args.compile:
            factories.update({_tokens_name(t, " compiled"): clippo_provider(True, t)
                              for t in text_tokens})
    elif cuda or args.compile:
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
        rate_loader = None if text_tokens else loader_rate(fn, loader, steps, batch, device)
        tflops = train_flops_per_sample * rate / 1e12
        # hardware FLOPs: checkpointing runs each block's forward twice
        hw = (4 / 3 if name in checkpointed else 1.0) * tflops
        rows.append(dict(provider=name, batch=batch, step_ms=seconds[name] * 1e3,
                         step_samples_per_s=rate, loader_samples_per_s=rate_loader,
                         grad_ckpt=name in checkpointed, tflops=tflops,
                         mfu=tflops / peak if peak else None, hfu=hw / peak if peak else None))
    t_clippo = seconds.get("clippo (render in step)", seconds.get(_tokens_name("all")))
    token_facts = {}
    if text_tokens:
        token_facts = _token_shares(model, renderer, sample["texts"])
        base = next((r for r in rows if r["provider"] == _tokens_name("all")), None)
        for r in rows:
            r["vs_all_tokens"] = (r["step_samples_per_s"] / base["step_samples_per_s"]
                                  if base else None)
    t_render = seconds["render"]

    base_row = next((r for r in rows if r["provider"].startswith("compiled baseline")),
                    next((r for r in rows if r["provider"] == "render in workers"), None))
    for r in rows:
        r["vs_baseline"] = (r["step_samples_per_s"] / base_row["step_samples_per_s"]
                            if base_row else None)
    render_share = t_render / t_clippo if t_clippo else None
    title = (f"{variant} (depth {cfg['depth']}, {image_size} px) training step, batch {batch}, "
             f"{precision}, {device} ({gpu or 'CPU'}), {fwd / 1e9:.2f} GFLOP/forward")
    columns = ["provider", "batch", "step_ms", "step_samples_per_s", "loader_samples_per_s",
               "grad_ckpt", "tflops", "mfu", "hfu", "vs_baseline"]
    if text_tokens:
        columns = ["provider", "batch", "step_ms", "step_samples_per_s", "vs_all_tokens"]
    print_table(rows, columns, title=title)
    if token_facts:
        print(f"\ntext tokens kept with ink: {token_facts['text_tokens_kept_share']:.1%} of "
              f"{token_facts['patches_per_image']} per caption (mean {token_facts['mean_kept']:.1f},"
              f" range {token_facts['min_kept']}-{token_facts['max_kept']}; packed, attention padded "
              f"to {token_facts['padded_length']}); captions: {token_facts['caption_chars_mean']:.1f}"
              f" characters on average")
    if render_share is not None:
        print(f"\nrender share of clippo's step: {render_share:.2%} "
              f"({t_render * 1e3:.2f} ms to render {batch} captions on {device}, "
              f"step {t_clippo * 1e3:.1f} ms)")
    write_json("train", rows, out_dir=args.out or DEFAULT_OUT, extra=dict(
        variant=variant, config=cfg, precision=precision, workers=workers,
        accum_freq=args.accum_freq, gflops_per_forward=fwd / 1e9,
        train_gflops_per_sample=train_flops_per_sample / 1e9, peak_tflops=peak,
        render_ms=t_render * 1e3, render_share=render_share, timed_rounds=steps,
        recipe=args.recipe, text_tokens=text_tokens, threads=torch.get_num_threads(),
        **token_facts,
        targets={"mfu": 0.45, "render_share": 0.03}))
    return 0


def _text_tokens(text):
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in ("all", "ink")]
    if bad or not names:
        raise SystemExit(f"--text-tokens: expected a list of all, ink; got {text!r}")
    return names


def _tokens_name(tokens, suffix=""):
    return f"clippo{suffix}, {tokens} text tokens"


def _builtin_captions(i):
    """The captions of clippo demo's training data (built-in scenes, its language mix)."""
    from clippo.data.builtin import BuiltinImageText
    global _BUILTIN
    if "_BUILTIN" not in globals():
        _BUILTIN = BuiltinImageText("train", num_samples=10 ** 6)
    return _BUILTIN.caption(i)


def _token_shares(model, renderer, texts):
    """How many patches of these captions hold ink: the share of text tokens "ink" keeps."""
    from clippo.model.tokens import keep_index, pixel_ink
    keep = pixel_ink(renderer(texts).cpu(), model.img.patch_size,
                     model.render_config.background_brightness)
    index, lengths = keep_index(keep)
    n = model.img.num_patches
    return dict(patches_per_image=n, text_tokens_kept_share=lengths.sum().item() / (n * len(texts)),
                mean_kept=lengths.float().mean().item(), min_kept=int(lengths.min()),
                max_kept=int(lengths.max()), padded_length=index.shape[1],
                caption_chars_mean=sum(map(len, texts)) / len(texts))


if __name__ == "__main__":
    sys.exit(main())
