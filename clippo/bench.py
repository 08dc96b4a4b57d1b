"""`clippo bench`: a quick look at rendering and encoding speed on this machine.

1. renders multilingual captions and writes them as a PNG grid (what the model sees);
2. times rendering: clippo against the numpy port of the reference algorithm, in one run;
3. encodes the captions with a CLIPPO model through `render_and_encode` and times it against
   encoding the same, already rendered images.
Writes <out>/captions.png and <out>/bench.json. The scripts in benchmarks/ measure more.
"""
import json
import os
import time
from pathlib import Path

import torch

SAMPLES = [
    "a photo of a cat sitting on a red chair",
    "ein Foto einer Katze auf einem roten Stuhl",
    "une photo d'un chat assis sur une chaise rouge",
    "φωτογραφία μιας γάτας σε μια κόκκινη καρέκλα",
    "фотография кошки на красном стуле",
    "一只猫坐在红色椅子上的照片",
    "صورة قطة تجلس على كرسي أحمر",
    "लाल कुर्सी पर बैठी बिल्ली की तस्वीर",
    "ภาพถ่ายของแมวนั่งบนเก้าอี้สีแดง",
    "赤い椅子に座っている猫の写真",
    "CLIPPO: Image-and-Language Understanding from Pixels Only (CVPR 2023)",
    "a diagram of a transformer encoder with twelve layers and a MAP head",
]


def _per_second(fn, items, device, min_time=0.5):
    """Items per second of fn() over at least min_time seconds, after one warm-up call."""
    def sync():
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
    fn()
    sync()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return items * calls / elapsed


def _print_table(title, rows):
    print(f"\n{title}")
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"  {name.ljust(width)}  {value:>12,.0f} /s  {note}")


def main(args):
    from clippo.figures import grid
    from clippo.factory import create_model
    from clippo.model.clippo import CLIPPO, render_and_encode
    from clippo.text import TextRenderer
    from clippo.text import atlas as atlas_lib
    from clippo.text.png import save_png
    from clippo.text.render_ref import load_unifont_table, render_unifont_ref

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    batch = 128 if args.quick else 1024
    result = {"device": device, "torch": torch.__version__, "threads": torch.get_num_threads()}

    print(f"[1/3] rendering {len(SAMPLES)} built-in captions on {device}")
    renderer = TextRenderer(device=device)
    images = renderer(SAMPLES)
    save_png(out / "captions.png", grid(images[:, 0].cpu().numpy(), columns=4))
    print(f"      wrote {out / 'captions.png'}  ({renderer})")

    print(f"[2/3] render throughput, batch {batch} of ~64-character captions")
    captions = [(s + " " + s)[:64] for s in SAMPLES] * (batch // len(SAMPLES) + 1)
    captions = captions[:batch]
    table = load_unifont_table(atlas_lib.DEFAULT_FONT, atlas_lib.DEFAULT_UPPER_FONT)
    sub = captions[:16]
    ref_rate = _per_second(lambda: [render_unifont_ref(t, table) for t in sub], len(sub), "cpu")
    ours = _per_second(lambda: renderer(captions), batch, device)
    rows = [("numpy port of the reference", ref_rate, "(baseline)"),
            (f"clippo ({device})", ours, f"{ours / ref_rate:,.0f}x the numpy port")]
    if device == "cpu":
        buf = torch.empty(batch, renderer.config.image_size, renderer.config.image_size,
                          dtype=torch.uint8)
        reuse = _per_second(lambda: renderer(captions, out=buf), batch, device)
        rows.append(("clippo (cpu, reused out= buffer)", reuse,
                     f"{reuse / ref_rate:,.0f}x the numpy port"))
    _print_table("render", rows)
    result["render"] = {name: rate for name, rate, _ in rows}

    print(f"\n[3/3] encoding with CLIPPO {args.checkpoint or args.variant} on {device}")
    if args.checkpoint:
        model = CLIPPO.from_big_vision(args.checkpoint)
    else:
        model = create_model(args.variant)
        print("      (random weights: no checkpoint given, so similarities carry no meaning)")
    model = model.to(device).eval()
    with torch.no_grad():
        z = render_and_encode(model, SAMPLES)
        sim = (z @ z.T).cpu()
    print(f"      embeddings {tuple(z.shape)}, |z| = {z.norm(dim=-1).mean():.4f}")
    print(f"      cosine(English, German caption) = {sim[0, 1]:.3f}; "
          f"cosine(English, Chinese caption) = {sim[0, 5]:.3f}")
    enc_batch = 16 if device == "cpu" else 256
    texts = captions[:enc_batch]
    rendered = renderer(texts)
    with torch.no_grad():
        t_enc = _per_second(lambda: model.encode_image(rendered), enc_batch, device)
        t_fast = _per_second(lambda: render_and_encode(model, texts), enc_batch, device)
    rows = [("encode already-rendered images", t_enc, "(baseline)"),
            ("render_and_encode (strings in)", t_fast, f"{t_fast / t_enc:.2f}x the baseline")]
    _print_table(f"encode, batch {enc_batch}", rows)
    result["encode"] = {name: rate for name, rate, _ in rows}
    result["model"] = {"variant": args.checkpoint or args.variant,
                       "parameters": sum(p.numel() for p in model.parameters())}

    tmp = out / "bench.json.tmp"
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out / "bench.json")
    print(f"\nwrote {out / 'bench.json'}")
    return 0
