"""Encoder throughput: clippo's ViT (Triton kernels) vs torch baselines, side by side.

Providers, all in one run on the same inputs:
  clippo/triton      CLIPPO tower, Triton patch embedding + attention (CUDA only; the default)
  clippo/triton +ln, +dense, +all
                     the same with the optional kernels on (clippo.kernels.use_fusions):
                     Triton LayerNorm; the Dense layers as one GEMM with the bias + GELU or
                     residual add in its epilogue; both
  clippo/triton compiled
                     the default model under torch.compile (inductor fuses LayerNorm, GELU and
                     the residual adds; the Triton ops stay)
  clippo/torch       the same model with CLIPPO_KERNELS=torch (conv2d + SDPA), eager
  timm-style/compile an equivalent ViT built from torch ops (Conv2d, fused qkv Linear, SDPA,
                     LayerNorm, tanh-GELU, MAP head) under torch.compile: the baseline
  text: render_and_encode(strings) vs encode_image(already rendered uint8), and
                     render_and_encode with text_tokens "ink" (only the patches holding ink)
                     vs "all", on captions of COCO's length distribution

--profile FILE writes torch.profiler's table of the top CUDA kernels of a few forwards of
clippo/triton (default and all fusions on) and of the compiled baseline: where the time goes,
to choose the next fusion.

Reports images/s, TFLOP/s (explicit FLOP count of the architecture) and MFU against the
GPU's dense bf16 peak. On a CPU-only machine it runs a small variant in fp32 (no compile
unless --compile) so the script is exercised everywhere; those numbers are not the target.

    python benchmarks/encode.py [--variant B/16] [--batch 1024] [--out DIR] [--quick]
"""
import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.utils.checkpoint
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from _common import environment, measure, print_table, write_json  # noqa: E402

import clippo  # noqa: E402
from clippo import kernels  # noqa: E402
from clippo.model.vit import decode_variant  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' datasheets.
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10": 125.0}


def vit_flops(width, depth, mlp_dim, patch, image, out_dim, channels=3):
    """Forward FLOPs per image (2 per multiply-add) of the CLIPPO ViT with a MAP head."""
    n = (image // patch) ** 2
    embed = 2 * n * channels * patch * patch * width
    block = (2 * n * width * 3 * width          # q, k, v projections
             + 2 * 2 * n * n * width             # scores and weighted sum
             + 2 * n * width * width             # output projection
             + 2 * 2 * n * width * mlp_dim)      # MLP
    head = (2 * width * width + 2 * n * width * 2 * width + 2 * 2 * n * width
            + 2 * width * width + 2 * 2 * width * mlp_dim   # MAP head on one probe token
            + 2 * width * out_dim)
    return embed + depth * block + head


class TimmStyleViT(nn.Module):
    """The baseline: the same architecture written the way timm writes it, in torch ops."""

    def __init__(self, width, depth, mlp_dim, num_heads, patch, image, out_dim,
                 grad_checkpointing=False):
        super().__init__()
        self.heads = num_heads
        self.grad_checkpointing = grad_checkpointing  # recompute blocks in the backward pass
        self.patch = nn.Conv2d(3, width, patch, stride=patch)
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2, width) * 0.02)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(dict(ln1=nn.LayerNorm(width, eps=1e-6), qkv=nn.Linear(width, 3 * width),
                               proj=nn.Linear(width, width), ln2=nn.LayerNorm(width, eps=1e-6),
                               fc1=nn.Linear(width, mlp_dim), fc2=nn.Linear(mlp_dim, width)))
            for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.probe = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.map_q, self.map_kv = nn.Linear(width, width), nn.Linear(width, 2 * width)
        self.map_proj = nn.Linear(width, width)
        self.map_ln = nn.LayerNorm(width, eps=1e-6)
        self.map_fc1, self.map_fc2 = nn.Linear(width, mlp_dim), nn.Linear(mlp_dim, width)
        self.head = nn.Linear(width, out_dim)

    def _split(self, x):
        b, n, _ = x.shape
        return x.view(b, n, self.heads, -1).transpose(1, 2)

    def block(self, blk, x):
        b, n, d = x.shape
        q, k, v = blk["qkv"](blk["ln1"](x)).chunk(3, dim=-1)
        a = F.scaled_dot_product_attention(self._split(q), self._split(k), self._split(v))
        x = x + blk["proj"](a.transpose(1, 2).reshape(b, n, d))
        return x + blk["fc2"](F.gelu(blk["fc1"](blk["ln2"](x)), approximate="tanh"))

    def forward(self, images):
        x = self.patch(images).flatten(2).transpose(1, 2) + self.pos
        b, _, d = x.shape
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(self.block, blk, x, use_reentrant=False)
            else:
                x = self.block(blk, x)
        x = self.norm(x)
        q = self._split(self.map_q(self.probe.expand(b, -1, -1)))
        k, v = self.map_kv(x).chunk(2, dim=-1)
        y = F.scaled_dot_product_attention(q, self._split(k), self._split(v))
        y = self.map_proj(y.transpose(1, 2).reshape(b, 1, d))
        y = y + self.map_fc2(F.gelu(self.map_fc1(self.map_ln(y)), approximate="tanh"))
        z = self.head(y[:, 0])
        return z / (z.norm(dim=-1, keepdim=True) + 1e-8)


def write_profiles(path, providers, device, steps=3, top=25):
    """torch.profiler tables (self CUDA time, top kernels) of a few calls of each provider."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    sort = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    parts = []
    with torch.inference_mode():
        for name, backend, fusions, fn in providers:
            with kernels.use_backend(backend), kernels.use_fusions(fusions):
                try:
                    fn()
                    with profile(activities=activities) as prof:
                        for _ in range(steps):
                            fn()
                        if device == "cuda":
                            torch.cuda.synchronize()
                except Exception as e:
                    parts.append(f"## {name}: failed: {type(e).__name__}: {e}\n")
                    continue
            table = prof.key_averages().table(sort_by=sort, row_limit=top, max_name_column_width=70)
            parts.append(f"## {name} ({steps} calls)\n{table}\n")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(parts))
    print(f"wrote {path}")


def peak_for(name, override):
    if override:
        return override
    for key, value in PEAK_TFLOPS.items():
        if name and key in name:
            return value
    return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default=None, help="default: B/16 on CUDA, Ti/16 on CPU")
    p.add_argument("--batch", type=int, default=None, help="default: 1024 on CUDA, 4 on CPU")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"])
    p.add_argument("--compile", action="store_true", help="torch.compile the baseline on CPU too")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--quick", action="store_true", help="fewer repetitions (smoke test)")
    p.add_argument("--profile", default=None, metavar="FILE",
                   help="write a profile of the top CUDA kernels per provider to FILE")
    p.add_argument("--no-compile-clippo", action="store_true",
                   help="leave out the compiled clippo provider (saves its compile time)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds; no new provider starts after this")
    p.add_argument("--out", default=None, help="folder for the JSON (default benchmarks/out)")
    args = p.parse_args(argv)

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    variant = args.variant or ("B/16" if cuda else "Ti/16")
    batch = args.batch or (1024 if cuda else 4)
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    reps = 3 if args.quick else (20 if cuda else 3)
    if not cuda:
        print("No CUDA device: running a small CPU configuration so the script is exercised; "
              "the Triton provider and the throughput targets need a GPU.")
    sizes = decode_variant(variant)
    flops = vit_flops(sizes["width"], sizes["depth"], sizes["mlp_dim"], sizes["patch_size"],
                      args.image_size, 768)
    gpu = torch.cuda.get_device_name() if cuda else None
    peak = peak_for(gpu, args.peak_tflops)

    torch.manual_seed(0)
    model = clippo.create_model(variant, image_size=args.image_size).to(device, dtype).eval()
    images_u8 = torch.randint(0, 256, (batch, 3, args.image_size, args.image_size),
                              dtype=torch.uint8, device=device)
    images = (images_u8.float() / 255 * 2 - 1).to(dtype)
    baseline = TimmStyleViT(sizes["width"], sizes["depth"], sizes["mlp_dim"], sizes["num_heads"],
                            sizes["patch_size"], args.image_size, 768).to(device, dtype).eval()

    # (name, kernel backend, optional kernels on, fn), most important first: with --budget
    # (or an outer timeout) the key rows are measured before the rest
    providers = []
    triton_ok = cuda and kernels.HAS_TRITON
    if triton_ok:
        encode = model.encode_image
        providers.append(("clippo/triton", "auto", "none", lambda: encode(images)))
    if cuda or args.compile:
        compiled = torch.compile(baseline)
        providers.append(("timm-style/compile", "torch", "none", lambda: compiled(images)))
    providers.append(("text", None, None, None))  # render_and_encode vs pre-rendered
    if triton_ok:
        providers += [
            ("clippo/triton +all", "auto", "all", lambda: encode(images)),
            ("profile", None, None, None),  # where the time goes, before the rest
            ("clippo/triton +dense", "auto", "linear", lambda: encode(images)),
            ("clippo/triton +ln", "auto", "layer_norm", lambda: encode(images)),
            ("clippo/triton uint8 in", "auto", "none", lambda: encode(images_u8)),
        ]
        if not args.no_compile_clippo:
            compiled_clippo = torch.compile(model.encode_image)
            providers.append(("clippo/triton compiled", "auto", "none",
                              lambda: compiled_clippo(images)))
    providers.append(("clippo/torch eager", "torch", "none", lambda: model.encode_image(images)))
    providers.append(("timm-style eager", "torch", "none", lambda: baseline(images)))

    texts = [f"caption {i}: a photo of a small dog playing with a red ball in the park"
             for i in range(batch)]
    renderer = model.renderer()
    rendered = renderer(texts)
    rows, text_rows, skipped = [], [], []
    extra = dict(variant=variant, dtype=str(dtype), gflops_per_image=flops / 1e9,
                 peak_tflops=peak)

    def finish_rows():
        base = next((r for r in rows if r["provider"] == "timm-style/compile"),
                    next((r for r in rows if r["provider"] == "timm-style eager"), None))
        for r in rows:
            r["vs_baseline"] = r["images_per_s"] / base["images_per_s"] if base else None

    start = time.perf_counter()
    with torch.inference_mode():
        for name, backend, fusions, fn in providers:
            if args.budget and time.perf_counter() - start > args.budget:
                skipped.append(name)
                continue
            if name == "profile":
                if args.profile:
                    keep = {"clippo/triton", "clippo/triton +all", "timm-style/compile"}
                    write_profiles(args.profile, [p for p in providers if p[0] in keep], device)
                continue
            if name == "text":  # strings -> render -> encode, vs the same images pre-rendered
                t_pre = measure(lambda: model.encode_image(rendered), device=device, warmup=2,
                                reps=reps)
                t_full = measure(lambda: clippo.render_and_encode(model, texts), device=device,
                                 warmup=2, reps=reps)
                text_rows = [
                    dict(provider="encode pre-rendered uint8", batch=batch,
                         ms=t_pre["p50"] * 1e3, images_per_s=batch / t_pre["p50"], ratio=1.0),
                    dict(provider="render_and_encode(strings)", batch=batch,
                         ms=t_full["p50"] * 1e3, images_per_s=batch / t_full["p50"],
                         ratio=t_pre["p50"] / t_full["p50"]),
                ]
                # the same model with text_tokens "all" and "ink", COCO-length captions: the
                # ratio is ink's speed-up (target on a GPU: >= 3x); per 1M captions, the time
                from train import coco_caption  # (train.py imports this module: load late)
                coco = [coco_caption(i) for i in range(batch)]
                for tokens in ("all", "ink"):
                    model.text_tokens = tokens
                    t = measure(lambda: clippo.render_and_encode(model, coco), device=device,
                                warmup=2, reps=reps)
                    text_rows.append(dict(
                        provider=f"render_and_encode, COCO captions, text_tokens {tokens}",
                        batch=batch, ms=t["p50"] * 1e3, images_per_s=batch / t["p50"],
                        seconds_per_1M=1e6 * t["p50"] / batch,
                        ratio=(text_rows[-1]["ms"] / (t["p50"] * 1e3)) if tokens == "ink"
                        else 1.0))
                model.text_tokens = "all"
            else:
                with kernels.use_backend(backend), kernels.use_fusions(fusions):
                    try:
                        t = measure(fn, device=device, warmup=2, reps=reps)
                    except Exception as e:  # a provider that fails is reported, not fatal
                        print(f"{name}: failed: {type(e).__name__}: {e}")
                        continue
                ips = batch / t["p50"]
                tflops = flops * ips / 1e12
                rows.append(dict(provider=name, batch=batch, ms=t["p50"] * 1e3,
                                 images_per_s=ips, tflops=tflops,
                                 mfu=(tflops / peak if peak else None)))
                finish_rows()
            print(f"  {name}: done ({time.perf_counter() - start:.0f} s)")
            # rewritten after every provider: a run cut short keeps what it measured
            write_json("encode", rows + text_rows, out_dir=args.out,
                       extra=dict(extra, complete=False))
    if skipped:
        print(f"time budget of {args.budget:.0f} s spent: skipped {', '.join(skipped)}")

    if args.profile and not triton_ok:  # (with Triton it ran after the key providers)
        keep = {"timm-style/compile", "timm-style eager"}
        write_profiles(args.profile, [p for p in providers if p[0] in keep], device)

    title = f"{variant} forward, {str(dtype).replace('torch.', '')}, {device} ({gpu or 'CPU'})"
    print_table(rows, ["provider", "batch", "ms", "images_per_s", "tflops", "mfu", "vs_baseline"],
                title=title + f", {flops / 1e9:.1f} GFLOP/image")
    print_table(text_rows, ["provider", "batch", "ms", "images_per_s", "seconds_per_1M", "ratio"],
                title="text: render_and_encode vs encoding already-rendered images")
    write_json("encode", rows + text_rows, out_dir=args.out,
               extra=dict(extra, complete=not skipped, skipped=skipped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
