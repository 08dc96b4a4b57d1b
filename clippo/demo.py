"""`clippo demo`: train a small CLIPPO on the built-in data and evaluate it, in minutes on a CPU.

1. renders built-in captions (four languages, three scripts) as the model sees them;
2. trains a small CLIPPO with `clippo train` on built-in scenes (`clippo.data.builtin`), text
   rendered inside the training step;
3. evaluates it on the held-out split, colour x shape combinations never seen in training:
   zero-shot classification among the 16 held-out classes and image-text retrieval;
4. writes a report: a printed table, DIR/report.json and PNGs (training curve, rendered captions,
   retrieval examples).

The recipe (RECIPE) is the one `clippo train` runs; `--steps` shortens it for a smoke test.
"""
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

# The demo's model and schedule: a 4-layer ViT of width 128 on 80 px images (25 patches of 16
# px: a patch holds about two rendered characters, a row of patches one line of text), AdamW
# at 5e-4 with warm-up, cosine decay and clipping.
RECIPE = dict(
    model="Ti/16", image_size=80, patch_size=16, width=128, depth=4, heads=4, mlp_dim=512,
    out_dim=128, batch_size=64, steps=600, lr=5e-4, warmup=40, wd=0.05, grad_clip_norm=1.0,
    lr_scheduler="cosine", train_num_samples=38400, seed=0,
)


def recipe_argv(out_dir, steps=None, workers=1, device=None, progress=True):
    """`clippo train` flags for the demo's recipe, writing into out_dir."""
    r = dict(RECIPE, steps=steps or RECIPE["steps"])
    argv = ["--train-data", "builtin", "--output", str(out_dir), "--workers", str(workers),
            "--log-every", "5", "--save-every", "0"]
    for key, value in r.items():
        argv += ["--" + key.replace("_", "-"), str(value)]
    if device:
        argv += ["--device", device]
    if not progress:
        argv.append("--no-progress")
    return argv


def _save(path, image):
    from clippo.text.png import save_png
    save_png(path, image)
    return path


def _upscale(images, factor):
    """Nearest-neighbour upscaling of [..., H, W, 3] images."""
    return images.repeat(factor, axis=-2).repeat(factor, axis=-3)


def _caption_figure(model, out):
    """The captions as the model sees them: one per language, rendered at the model's size."""
    from clippo.data.builtin import LANGUAGES, caption
    from clippo.figures import grid

    texts = [caption(c, s, p, lang) for (c, s, p) in
             [("red", "circle", "left"), ("blue", "star", "top"), ("white", "cross", "bottom")]
             for lang in LANGUAGES]
    images = model.renderer("cpu")(texts).permute(0, 2, 3, 1).numpy()  # [N, S, S, 3]
    return _save(out / "captions.png", grid(_upscale(images, 2), columns=len(LANGUAGES)))


def _curve_figure(metrics_path, batch_size, out):
    from clippo.figures import line_plot

    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line]
    steps = [r["step"] for r in rows]
    plot = line_plot({"training loss": (steps, [r["loss"] for r in rows])},
                     title="clippo demo: contrastive loss", hlines=[
                         (float(np.log(batch_size)), "log(batch): chance")])
    return _save(out / "training_curve.png", plot)


def _retrieval_figure(model, task, out, rows=4, top=4):
    """Held-out captions (as rendered for the model), each with its top retrieved images:
    green frame = the caption's own image, red = another."""
    from clippo.figures import labelled_rows, outline

    images, texts = task["images"], task["texts"]
    with torch.no_grad():
        zi = model.encode_image(images.to(model.device))
        zt = model.encode_text(texts)
        sim = (zt @ zi.T).cpu()
    pick = np.linspace(0, len(texts) - 1, rows).round().astype(int)
    rendered = model.renderer("cpu")(texts)
    lines = []
    for i in pick:
        order = sim[i].argsort(descending=True)[:top].tolist()
        row = [np.repeat(rendered[i, 0].numpy()[..., None], 3, axis=-1)]
        for j in order:
            img = images[j].permute(1, 2, 0).numpy()
            row.append(outline(img, (40, 180, 60) if j == i else (220, 40, 40)))
        lines.append([_upscale(x, 2) for x in row])
    return _save(out / "retrieval_examples.png", labelled_rows(lines))


def _print_table(rows):
    width = max(len(k) for k, _ in rows)
    print("\n" + "-" * (width + 16))
    for key, value in rows:
        shown = f"{value:.1%}" if isinstance(value, float) and value <= 1 else f"{value}"
        print(f"  {key.ljust(width)}  {shown:>10}")
    print("-" * (width + 16))


def run(out="clippo-demo", steps=None, device=None, workers=1, progress=True):
    """The whole demo; returns the report dict (also written to out/report.json)."""
    from clippo.eval import builtin as builtin_eval
    from clippo.model.clippo import CLIPPO
    from clippo.train import parse_args
    from clippo.train import run as train_run

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    argv = recipe_argv(out / "train", steps, workers, device, progress)
    print(f"[1/4] training a small CLIPPO on built-in data ({device}, "
          f"{torch.get_num_threads()} threads):\n      clippo train {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    summary = train_run(parse_args(argv))
    train_seconds = time.perf_counter() - start
    model = CLIPPO.from_pretrained(summary["model_dir"]).to(device).eval()

    print("[2/4] evaluating on the held-out split (combinations never seen in training)",
          flush=True)
    image_size = model.config["image_size"]
    zs = builtin_eval.zeroshot(model, image_size=image_size)
    ret_task = builtin_eval.retrieval_task(image_size=image_size)
    ret = builtin_eval.retrieval(model, task=ret_task)

    print("[3/4] writing figures", flush=True)
    figures = [_caption_figure(model, out), _curve_figure(summary["metrics"], RECIPE[
        "batch_size"], out), _retrieval_figure(model, ret_task, out)]

    report = {
        "zero_shot_top1": zs["metrics"]["acc1"],
        "zero_shot_top5": zs["metrics"]["acc5"],
        "zero_shot_mean_per_class_recall": zs["metrics"]["mean_per_class_recall"],
        "zero_shot_classes": zs["num_classes"],
        "zero_shot_chance": 1.0 / zs["num_classes"],
        "retrieval_t2i_r1": ret["metrics"]["image_retrieval_recall@1"],
        "retrieval_i2t_r1": ret["metrics"]["text_retrieval_recall@1"],
        "retrieval_t2i_r5": ret["metrics"]["image_retrieval_recall@5"],
        "retrieval_i2t_r5": ret["metrics"]["text_retrieval_recall@5"],
        "retrieval_gallery": ret["num_images"],
        "retrieval_chance_r1": 1.0 / ret["num_images"],
        "train_seconds": round(train_seconds, 1),
        "steps": summary["steps"],
        "final_loss": summary["final_loss"],
        "device": str(device),
        "threads": torch.get_num_threads(),
        "recipe": dict(RECIPE, steps=summary["steps"]),
        "model_dir": str(summary["model_dir"]),
        "figures": [str(f) for f in figures],
    }
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out / "report.json")

    print("[4/4] report")
    _print_table([
        ("zero-shot top-1, held-out classes", report["zero_shot_top1"]),
        (f"  chance (1 of {zs['num_classes']})", report["zero_shot_chance"]),
        ("retrieval text->image R@1", report["retrieval_t2i_r1"]),
        ("retrieval image->text R@1", report["retrieval_i2t_r1"]),
        (f"  chance (1 of {ret['num_images']})", report["retrieval_chance_r1"]),
        ("training steps", report["steps"]),
        ("training seconds", report["train_seconds"]),
    ])
    print(f"wrote {out / 'report.json'}, " + ", ".join(str(f) for f in figures))
    print(f"the trained model is in {summary['model_dir']} "
          f"(clippo eval ... --model {summary['model_dir']})")
    return report


def main(args):
    run(args.out, steps=args.steps, device=args.device, workers=args.workers,
        progress=not args.no_progress)
    return 0
