"""Triton kernels vs their PyTorch baselines, side by side in one run (bf16, CUDA).

    python benchmarks/kernels.py [--out DIR] [--quick] [--only patch|attention] [--reps N]

patch embedding: clippo's fused kernel vs conv2d (+ the uint8 -> [-1, 1] normalisation and the
position-embedding add done by torch), at 224x224, patch 16, width 768, for the renderer's
uint8 input (an expanded grey plane, channel stride 0) and for bf16 float input; forward and
forward+backward (weight/bias/pos grads).
    flops = 2 * B * N * D * K (forward), twice that with the weight gradient; K = 3 * 16 * 16.
attention: clippo's flash kernel vs F.scaled_dot_product_attention with its best backend for
the shape (each of flash / efficient / cudnn / math is timed under sdpa_kernel, the fastest
kept and named), at ViT-B/16 shapes (196/197 tokens, 12 heads, head dim 64), 576 tokens,
head dim 128, and the MAP head's single query; forward and forward+backward.

The first run on a machine autotunes every kernel for each shape key (compiles included), which
is most of its time. Jobs run most important first; no new job starts after --budget seconds
(default 120), and the JSON is rewritten after every job, so a run cut short by an outer
timeout still leaves its rows ("complete": false until the end). --quick: two jobs only.
    flops = 4 * B * H * Lq * Lk * Dh (forward), 2.5x that for the backward (5 matmuls vs 2).
layer norm (optional kernel): clippo's vs F.layer_norm at [B, 196, 768] bf16, reported in GB/s
of the minimal traffic (memory-bound).
fused linear (optional kernel): clippo's GEMM with its epilogue (bias + tanh-GELU, or bias +
residual add) vs the same in torch eager (cuBLAS addmm, then GELU / add) and under
torch.compile, at the ViT-B MLP shapes (768 -> 3072 GELU, 3072 -> 768 + residual).
    flops = 2 * M * N * K (forward), 3x that for forward+backward.

Each row carries ms (median, p20, p80), TFLOP/s, speedup = baseline ms / ms, and the max
|difference| of the output (and, for fwd+bwd, of every gradient) against the baseline's (a
sanity check, not a test). Results go
to a printed table and <out>/kernels.json (benchmarks/out by default). Without CUDA the
script says so, times the torch providers at a small size on the CPU (kernels_cpu.json) and
exits 0.
"""
import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from _common import measure, print_table, write_json  # noqa: E402

import clippo.kernels as K  # noqa: E402

_pe = sys.modules["clippo.kernels.patch_embed"]
_attn = sys.modules["clippo.kernels.attention"]
_ln = sys.modules["clippo.kernels.layer_norm"]
_lin = sys.modules["clippo.kernels.linear"]

COLUMNS = ["kernel", "shape", "input", "mode", "provider", "ms", "ms_p20", "ms_p80", "tflops",
           "gbps", "speedup", "max_diff"]


# ------------------------------------------------------------------------------ patch embed


def patch_inputs(batch, kind, device, dtype=torch.bfloat16, size=224, patch=16, width=768):
    n = (size // patch) ** 2
    if kind == "uint8":
        grey = torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8, device=device)
        images = grey.expand(batch, 3, size, size)  # what the text renderer returns
    else:
        images = torch.rand(batch, 3, size, size, device=device, dtype=dtype) * 2 - 1
    k = 3 * patch * patch
    w = (torch.randn(width, 3, patch, patch, device=device) * k ** -0.5).to(dtype)
    b = torch.randn(width, device=device).to(dtype)
    pos = (torch.randn(1, n, width, device=device) * 0.02).to(dtype)
    return images, w, b, pos


def patch_flops(batch, mode, size=224, patch=16, width=768):
    n, k = (size // patch) ** 2, 3 * patch * patch
    fwd = 2 * batch * n * width * k
    return fwd if mode == "fwd" else 2 * fwd


def bench_patch(batches, device, providers, reps):
    rows = []
    for batch in batches:
        for kind in ("uint8", "float"):
            images, w, b, pos = patch_inputs(batch, kind, device)
            params = [t.requires_grad_() for t in (w, b, pos)]
            for mode in ("fwd", "fwd+bwd"):
                group = []
                for name, t, out, ref_out in _time_group(providers, (images, w, b, pos), params,
                                                         mode, device, reps,
                                                         f"{kind} B={batch}"):
                    group.append(_row("patch_embed", f"B={batch} 224/16 D=768", kind, mode, name,
                                      t, patch_flops(batch, mode), out, ref_out))
                rows += _speedups(group)
    return rows


# ------------------------------------------------------------------------------ attention


def sdpa_backends():
    try:
        from torch.nn.attention import SDPBackend
    except ImportError:  # pragma: no cover - old torch
        return {}
    names = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
             "cudnn": "CUDNN_ATTENTION", "math": "MATH"}
    return {k: getattr(SDPBackend, v) for k, v in names.items() if hasattr(SDPBackend, v)}


def attn_flops(b, h, lq, lk, dh, mode):
    fwd = 4 * b * h * lq * lk * dh
    return fwd if mode == "fwd" else fwd + 2.5 * fwd


def _time_attention(fn, q, k, v, mode, device, reps):
    leaves = (q, k, v)

    def run():
        if mode == "fwd":
            with torch.no_grad():
                return fn(q, k, v)
        out = fn(q, k, v)
        return out, torch.autograd.grad(out, leaves, torch.ones_like(out))
    out = _flat(run())
    return measure(run, device=device, warmup=3, reps=reps), out


def bench_attention(shapes, device, with_triton, reps):
    from torch.nn.attention import sdpa_kernel
    rows = []
    for (b, h, lq, lk, dh) in shapes:
        g = torch.Generator(device=device).manual_seed(0)
        q = torch.randn(b, h, lq, dh, device=device, dtype=torch.bfloat16, generator=g)
        k = torch.randn(b, h, lk, dh, device=device, dtype=torch.bfloat16, generator=g)
        v = torch.randn(b, h, lk, dh, device=device, dtype=torch.bfloat16, generator=g)
        for t in (q, k, v):
            t.requires_grad_()
        shape = f"B={b} H={h} Lq={lq} Lk={lk} Dh={dh}"
        for mode in ("fwd", "fwd+bwd"):
            flops = attn_flops(b, h, lq, lk, dh, mode)
            # baseline: the best SDPA backend for this shape and mode
            best, best_name, ref_out = None, None, None
            for name, backend in sdpa_backends().items():
                if name == "math" and b * h * lq * lk > 2 ** 31:
                    continue  # the math backend materialises the scores: too big
                try:
                    with sdpa_kernel([backend]):
                        t, out = _time_attention(F.scaled_dot_product_attention, q, k, v, mode,
                                                 device, reps)
                except RuntimeError as e:
                    print(f"  sdpa[{name}] {shape} {mode}: unavailable ({str(e)[:80]})")
                    continue
                if best is None or t["p50"] < best["p50"]:
                    best, best_name, ref_out = t, name, [o.float() for o in out]
            group = [_row("attention", shape, "bf16", mode, f"sdpa[{best_name}]", best, flops,
                          ref_out, ref_out)]
            if with_triton:
                try:
                    t, out = _time_attention(_attn.attention_op, q, k, v, mode, device, reps)
                except Exception as e:
                    print(f"  clippo-triton {shape} {mode}: failed: {e!r}")
                    t, out = None, None
                group.append(_row("attention", shape, "bf16", mode, "clippo-triton", t, flops,
                                  out, ref_out))
            rows += _speedups(group)
    return rows


# ------------------------------------------------------------------------------ layer norm


def bench_layer_norm(batches, device, with_triton, reps, width=768, tokens=196):
    """Memory-bound: reported as GB/s of the minimal traffic (x read, y written; the backward
    also reads x, dy and writes dx), in the tflops column's place."""
    rows = []
    for batch in batches:
        x = torch.randn(batch, tokens, width, device=device, dtype=torch.bfloat16)
        w = torch.ones(width, device=device, dtype=torch.bfloat16)
        b = torch.zeros(width, device=device, dtype=torch.bfloat16)
        params = [t.requires_grad_() for t in (x, w, b)]
        providers = {"F.layer_norm": lambda x, w, b: F.layer_norm(x, (width,), w, b, 1e-6)}
        if with_triton:
            providers["clippo-triton"] = _ln.layer_norm_op
        for mode in ("fwd", "fwd+bwd"):
            nbytes = x.numel() * 2 * (2 if mode == "fwd" else 5)
            group = []
            for name, t, out, ref_out in _time_group(providers, (x, w, b), params, mode, device,
                                                     reps, f"layer_norm B={batch}"):
                row = _row("layer_norm", f"B={batch} N={tokens} D={width}", "bf16", mode, name,
                           t, 0, out, ref_out)
                row.pop("tflops", None)
                if t is not None:
                    row["gbps"] = nbytes / t["p50"] / 1e9
                group.append(row)
            rows += _speedups(group)
    return rows


# ------------------------------------------------------------------------------ fused linear


def bench_linear(batch, k, n, epilogue, device, with_triton, reps, tokens=196):
    """act(x W^T + b) [+ residual] at [batch * tokens, k] -> n, bf16."""
    m = batch * tokens
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(m, k, device=device, dtype=torch.bfloat16, generator=g)
    w = (torch.randn(n, k, device=device, generator=g) * k ** -0.5).to(torch.bfloat16)
    b = torch.randn(n, device=device, dtype=torch.bfloat16, generator=g)
    r = torch.randn(m, n, device=device, dtype=torch.bfloat16, generator=g)
    act, res = ("gelu", None) if epilogue == "gelu" else (None, r)
    leaves = [t.requires_grad_() for t in (x, w, b)]

    def eager(x, w, b):
        return _lin.linear_ref(x, w, b, res, act)[0]
    providers = {"torch eager": eager, "torch.compile": torch.compile(eager)}
    if with_triton:
        providers["clippo-triton"] = lambda x, w, b: _lin.linear_op(x, w, b, res, act)
    shape = f"M={m} K={k} N={n} {'gelu' if act else '+residual'}"
    rows = []
    for mode in ("fwd", "fwd+bwd"):
        flops = 2 * m * n * k * (1 if mode == "fwd" else 3)
        group = []
        for name, t, out, ref_out in _time_group(providers, (x, w, b), leaves, mode, device,
                                                 reps, f"linear {shape}"):
            group.append(_row("linear", shape, "bf16", mode, name, t, flops, out, ref_out))
        rows += _speedups(group)
    return rows


# ------------------------------------------------------------------------------ rows


def _time_group(providers, inputs, leaves, mode, device, reps, what):
    """Time each provider on `inputs` ("fwd": no grad; "fwd+bwd": gradients of `leaves` for a
    ones output gradient). Yields (name, timing, [out, *grads], the first provider's outputs
    in fp32); timing and outputs are None for a provider that fails (reported, not fatal)."""
    ref_out = None
    for name, fn in providers.items():
        def run(fn=fn):
            if mode == "fwd":
                with torch.no_grad():
                    return fn(*inputs)
            y = fn(*inputs)
            return y, torch.autograd.grad(y, leaves, torch.ones_like(y))
        try:
            out = _flat(run())
            t = measure(run, device=device, warmup=3, reps=reps)
        except Exception as e:
            print(f"  {name} {what} {mode}: failed: {e!r}")
            t, out = None, None
        if ref_out is None and out is not None:
            ref_out = [o.float() for o in out]
        yield name, t, out, ref_out


def _row(kernel, shape, kind, mode, provider, t, flops, out, ref_out):
    row = {"kernel": kernel, "shape": shape, "input": kind, "mode": mode, "provider": provider,
           "flops": flops}
    if t is None:
        row.update(ms=float("nan"), tflops=float("nan"))
        return row
    row.update(ms=t["p50"] * 1e3, ms_p20=t["p20"] * 1e3, ms_p80=t["p80"] * 1e3, reps=t["n"],
               tflops=flops / t["p50"] / 1e12)
    if out is not None and ref_out is not None:  # output and, for fwd+bwd, every gradient
        row["max_diff"] = max((o.float() - r).abs().max().item() for o, r in zip(out, ref_out))
    return row


def _flat(res):
    """run() result -> [out] (fwd) or [out, *grads] (fwd+bwd)."""
    return [res] if isinstance(res, torch.Tensor) else [res[0], *res[1]]


def _speedups(group):
    """speedup = baseline ms / ms; the first row of a group is the baseline."""
    base = group[0]["ms"] if group else float("nan")
    for row in group:
        row["speedup"] = base / row["ms"] if row["ms"] == row["ms"] and row["ms"] > 0 else None
    return group


def patch_providers(with_triton):
    providers = {"conv2d": _pe.patch_embed_ref}
    if with_triton:
        providers["clippo-triton"] = _pe.patch_embed_op
    return providers


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="directory for the JSON (default: "
                    "benchmarks/out)")
    ap.add_argument("--quick", action="store_true", help="smallest shapes only")
    ap.add_argument("--only", choices=["patch", "attention", "layer_norm", "linear"],
                    default=None)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--budget", type=float, default=120.0,
                    help="seconds; no new job starts after this (default 120: autotuning on "
                         "a fresh machine is most of the time)")
    args = ap.parse_args(argv)

    if not torch.cuda.is_available():
        print("benchmarks/kernels.py: no CUDA device; the Triton kernels need a GPU. Timing the "
              "torch providers only, at a small size on the CPU (not comparable to GPU numbers).")
        torch.manual_seed(0)
        rows = []
        if args.only in (None, "patch"):
            rows += bench_patch([4], "cpu", patch_providers(False), reps=3)
        if args.only in (None, "attention"):
            rows += bench_attention([(2, 12, 197, 197, 64)], "cpu", False, reps=3)
        if args.only in (None, "layer_norm"):
            rows += bench_layer_norm([2], "cpu", False, reps=3)
        if args.only in (None, "linear"):
            rows += bench_linear(1, 768, 3072, "gelu", "cpu", False, reps=3)
            rows += bench_linear(1, 3072, 768, "res", "cpu", False, reps=3)
        print_table(rows, COLUMNS, title="kernels (CPU, torch providers only)")
        write_json("kernels_cpu", rows, out_dir=args.out)
        return 0

    if not K.HAS_TRITON:
        print("benchmarks/kernels.py: triton is not importable; timing the torch providers only")
    device = "cuda"
    torch.manual_seed(0)
    tri = K.HAS_TRITON
    patch = lambda b: lambda: bench_patch([b], device, patch_providers(tri), args.reps)  # noqa
    attn = lambda *s: lambda: bench_attention([s], device, tri, args.reps)  # noqa
    norm = lambda b: lambda: bench_layer_norm([b], device, tri, args.reps)  # noqa
    dense = lambda *s: lambda: bench_linear(*s, device, tri, args.reps)  # noqa
    # most important first, so that a time budget or a kill still leaves the key rows.
    # CLIPPO has no class token (196 tokens); the attention target is set at 197 (ragged
    # blocks, class-token ViTs), head dim 64: that job runs first.
    jobs = [("attention", attn(256, 12, 197, 197, 64)), ("patch", patch(256)),
            ("linear", dense(256, 768, 3072, "gelu")), ("linear", dense(256, 3072, 768, "res")),
            ("attention", attn(256, 12, 196, 196, 64))]
    if not args.quick:
        jobs += [("attention", attn(1024, 12, 1, 196, 64)),  # MAP head
                 ("layer_norm", norm(256)),
                 ("attention", attn(1024, 12, 196, 196, 64)), ("patch", patch(1024)),
                 ("attention", attn(64, 12, 576, 576, 64)),
                 ("attention", attn(64, 6, 576, 576, 128)), ("layer_norm", norm(1024))]
    else:
        jobs += [("layer_norm", norm(256))]
    notes = ("speedup = baseline ms / ms; baselines: conv2d (patch embed), best SDPA backend "
             "(attention), F.layer_norm, torch eager linear + epilogue; max_diff: max "
             "|difference| vs the baseline's output and gradients")
    rows, skipped, start = [], [], time.perf_counter()
    for kind, job in jobs:
        if args.only not in (None, kind):
            continue
        if time.perf_counter() - start > args.budget:
            skipped.append(kind)
            continue
        rows += job()
        torch.cuda.empty_cache()
        # rewritten after every job: a run killed by an outer timeout keeps what it measured
        write_json("kernels", rows, out_dir=args.out,
                   extra={"notes": notes, "complete": False})
    if skipped:
        print(f"\ntime budget of {args.budget:.0f} s spent: skipped {len(skipped)} jobs "
              f"({', '.join(skipped)}); raise --budget to run them")
    print_table(rows, COLUMNS, title=f"kernels ({torch.cuda.get_device_name()}, bf16)")
    write_json("kernels", rows, out_dir=args.out,
               extra={"notes": notes, "complete": not skipped, "skipped_jobs": skipped})
    return 0


if __name__ == "__main__":
    sys.exit(main())
