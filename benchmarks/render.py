"""Text rendering throughput: clippo (CPU 1/2 threads, fresh and reused out=; CUDA when
present) against a PIL ImageDraw baseline and the numpy port of the reference op.

Workloads (seeded synthetic text): 64-character captions, 400-character paragraphs and a
~100-character multilingual mix, rendered at 224x224 with CLIPPO's defaults, batch 1024.
Every number in the table comes from this run; the numpy port of the reference algorithm
stands in for big_vision's TensorFlow op, which this script does not run.

    python benchmarks/render.py [--batch 1024] [--quick] [--out DIR]
"""
import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from _common import environment, measure, print_table, write_json  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

S = 224

WORDS = ("a the of and to in is on with for at by from an photo picture image view "
         "man woman dog cat bird car tree house street city beach table group people child "
         "standing sitting running white black red blue green large small old young two three "
         "near under over next water field snow grass road building window sky light wooden "
         "playing holding looking riding eating walking while his her their its this that").split()
MULTI_WORDS = ("photo Foto fotografía 写真 照片 사진 фотография φωτογραφία صورة तस्वीर ภาพ "
               "chat Katze gato 猫 고양이 кошка γάτα قطة बिल्ली แมว café naïve 中文 😀 🐱").split()


def synthetic_text(rng, length, words=WORDS):
    """English-like sentences of exactly `length` characters (seeded)."""
    out, sentence_start = [], True
    size = 0
    while size < length:
        w = rng.choice(words)
        if sentence_start:
            w = w[:1].upper() + w[1:]
        sentence_start = rng.random() < 0.12
        if sentence_start:
            w += "."
        out.append(w)
        size += len(w) + 1
    return " ".join(out)[:length]


def workloads(batch, seed=0):
    rng = random.Random(seed)
    return {
        "caption64": [synthetic_text(rng, 64) for _ in range(batch)],
        "para400": [synthetic_text(rng, 400) for _ in range(batch)],
        "multi100": [synthetic_text(rng, 100, MULTI_WORDS + WORDS) for _ in range(batch)],
    }


def pil_font():
    candidates = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                  "/usr/share/fonts/opentype/unifont/unifont.otf",
                  "/usr/share/fonts/truetype/unifont/unifont.ttf"]
    try:
        from PIL import ImageFont
    except ImportError:
        return None, "Pillow not installed (pip install pillow)"
    for path in candidates:
        if os.path.exists(path):
            return ImageFont.truetype(path, 16), Path(path).name
    return None, "no DejaVu Sans / Unifont TTF found (apt-get install fonts-dejavu-core)"


def pil_render(texts, font):
    """PIL baseline: greedy word wrap to 224 px, 16 px font, lines 18 px apart, grey uint8."""
    from PIL import Image, ImageDraw
    out = np.empty((len(texts), S, S), np.uint8)
    for i, text in enumerate(texts):
        img = Image.new("L", (S, S), 127)
        draw = ImageDraw.Draw(img)
        y, line = 0, ""
        for word in text.split(" "):
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= S or not line:
                line = candidate
                continue
            draw.text((0, y), line, fill=0, font=font)
            y += 18
            line = word
            if y >= S:
                break
        if line and y < S:
            draw.text((0, y), line, fill=0, font=font)
        out[i] = np.asarray(img)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--quick", action="store_true", help="small sizes (CI / smoke test)")
    ap.add_argument("--out", default=None, help="folder for the JSON (default benchmarks/out)")
    args = ap.parse_args(argv)

    import clippo
    from clippo.text import ops, render_ref
    from clippo.text import atlas as atlas_lib
    from clippo.text.render import encode_texts

    batch = min(args.batch, 64) if args.quick else args.batch
    reps = 2 if args.quick else 10
    min_time = 0.0 if args.quick else 0.5   # seconds per clippo row: steadier medians
    ref_n = {"caption64": 4, "para400": 2, "multi100": 4} if args.quick else \
        {"caption64": 48, "para400": 12, "multi100": 32}
    pil_n = 16 if args.quick else 192
    load = os.getloadavg()
    print(f"render benchmark: batch {batch}, {os.cpu_count()} CPUs, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start")

    data = workloads(batch)
    renderer = clippo.TextRenderer()
    table = render_ref.load_unifont_table(atlas_lib.DEFAULT_FONT, atlas_lib.DEFAULT_UPPER_FONT)
    font, font_note = pil_font()
    cuda = torch.cuda.is_available()
    gpu = None
    if cuda:
        try:
            gpu = clippo.TextRenderer(device="cuda")
        except RuntimeError as e:
            print(f"CUDA renderer unavailable: {e}")

    threads_before = torch.get_num_threads()
    rows = []
    for name, texts in data.items():
        group = []

        def row(provider, seconds_per_batch, n, threads, note=""):
            r = dict(workload=name, provider=provider, threads=threads, batch=n,
                     ms=seconds_per_batch * 1e3, images_per_s=n / seconds_per_batch, note=note)
            group.append(r)
            return r

        # numpy port of the reference: small sub-batch, one pass, extrapolated per image
        sub = texts[:ref_n[name]]
        t0 = time.perf_counter()
        for t in sub:
            render_ref.render_unifont_ref(t, table)
        row("numpy reference port", time.perf_counter() - t0, len(sub), 1,
            f"sub-batch {len(sub)}, extrapolated")

        # PIL ImageDraw baseline (its own wrap; DejaVu lacks CJK: draws boxes there)
        if font is not None:
            sub = texts[:pil_n]
            t = measure(lambda: pil_render(sub, font), warmup=1, reps=2 if args.quick else 3)
            row("PIL ImageDraw", t["p50"], len(sub), 1, f"{font_note} 16px, sub-batch {len(sub)}")
        else:
            group.append(dict(workload=name, provider="PIL ImageDraw",
                              note=f"skipped: {font_note}"))

        for threads in sorted({1, 2, threads_before}):  # the machine's default too
            torch.set_num_threads(threads)
            t = measure(lambda: renderer(texts), warmup=2, reps=reps, min_time=min_time)
            row("clippo CPU", t["p50"], batch, threads, "fresh output")
            buf = torch.empty(batch, S, S, dtype=torch.uint8)
            t = measure(lambda: renderer(texts, out=buf), warmup=2, reps=reps, min_time=min_time)
            row("clippo CPU out=", t["p50"], batch, threads, "reused buffer")
            # the patch ink mask with the render (ink_patch_size=16: ViT-B/16's patches)
            t = measure(lambda: renderer(texts, out=buf, ink_patch_size=16), warmup=2,
                        reps=reps, min_time=min_time)
            ink_row = row("clippo CPU out= +ink", t["p50"], batch, threads,
                          "reused buffer, ink_patch_size=16")
            plain = group[-2]["ms"]
            ink_row["note"] += f", {ink_row['ms'] / plain:.3f}x the time without"
        torch.set_num_threads(threads_before)

        if gpu is not None:
            t = measure(lambda: gpu(texts), device="cuda", warmup=3, reps=reps * 2)
            row("clippo CUDA", t["p50"], batch, threads_before, "strings -> CUDA tensor, synced")
            t = measure(lambda: gpu(texts, ink_patch_size=16), device="cuda", warmup=3,
                        reps=reps * 2)
            row("clippo CUDA +ink", t["p50"], batch, threads_before,
                "ink_patch_size=16: mask from the host layout")
            text, offsets = encode_texts(texts, 768)
            t = measure(lambda: ops.layout_text(text, offsets, renderer._cmap, renderer._cols,
                                                S, 16, 768, True, pin_memory=True),
                        warmup=2, reps=reps * 2)
            row("clippo layout only", t["p50"], batch, threads_before,
                "host layout_text (pinned), no raster")
        else:
            group.append(dict(workload=name, provider="clippo CUDA",
                              note="skipped: " + ("clippo built without CUDA kernels" if cuda
                                                  else "no GPU")))

        ref = next(r["images_per_s"] for r in group if r["provider"] == "numpy reference port")
        pil = next((r.get("images_per_s") for r in group if r["provider"] == "PIL ImageDraw"),
                   None)
        for r in group:
            if r.get("images_per_s"):
                r["vs_numpy_ref"] = r["images_per_s"] / ref
                r["vs_pil"] = r["images_per_s"] / pil if pil else None
        rows += group

    columns = ["workload", "provider", "threads", "batch", "ms", "images_per_s", "vs_numpy_ref",
               "vs_pil", "note"]
    load_end = os.getloadavg()
    print_table(rows, columns, title=f"text rendering, {S}x{S} uint8, CLIPPO defaults "
                                     f"(load average {load[0]:.2f} -> {load_end[0]:.2f})")
    write_json("render", rows, extra=dict(batch=batch, quick=args.quick,
                                          load_average_start=load, load_average_end=load_end,
                                          environment_note=environment()["cpu"]),
               out_dir=args.out)


if __name__ == "__main__":
    main()
