"""`clippo demo`: train a small CLIPPO on the built-in data and evaluate it, in minutes on a CPU.

1. renders built-in captions (four languages, three scripts) as the model sees them;
2. trains a small CLIPPO on built-in scenes (`clippo.data.builtin`) with two `clippo train`
   runs, text rendered inside the training step: English captions, then all four languages
   from the first run's weights (STAGES);
3. evaluates it on the held-out split, colour x position combinations never seen in training:
   zero-shot classification of the test pairs' images among the 16 held-out classes (and
   among all 72) and image-text retrieval (galleries of the 16 held-out pairs, and the
   96-image gallery that also asks for the shape), each beside chance and the exact accuracy
   of the best single-attribute reader; the val pairs' scores are for choosing recipes;
4. writes a report: a printed table, DIR/report.json and PNGs (training curve, rendered captions,
   retrieval examples).

The recipe (RECIPE, STAGES) is the one `clippo train` runs, the flags printed; `--steps`
shortens it for a smoke test.
"""
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

# The demo's model and schedule: a 4-layer ViT of width 128 on 80 px images (25 patches of 16
# px: a patch holds about two rendered characters, a row of patches one line of text), AdamW
# at 2.5e-4 with warm-up and clipping, in two `clippo train` runs (STAGES). The learning rate
# was chosen on the held-out VAL pairs among 2.5e-4, 5e-4 and 1e-3, never on the test pairs
# the report gives (benchmarks/demo_recipes.py select; docs/eval.md has the table).
RECIPE = dict(
    model="Ti/16", image_size=80, patch_size=16, width=128, depth=4, heads=4, mlp_dim=512,
    out_dim=128, batch_size=64, steps=1500, lr=2.5e-4, warmup=40, wd=0.05, grad_clip_norm=1.0,
    train_num_samples=96000, seed=0,
)
# (name, share of the steps, flags): English captions first, then every language (the
# built-in LANGUAGE_MIX) from the first stage's weights. Learning positions and shapes takes
# the image side and the text side finding them together; with one language to read this
# happens several times sooner, and the other languages then only have to be mapped onto
# what the image side already tells apart.
STAGES = (
    ("english", 0.5, {"builtin_languages": "en", "lr_scheduler": "const"}),
    ("all-languages", 0.5, {"lr_scheduler": "cosine", "warmup": 20}),
)


def stage_steps(steps=None):
    """Steps of each stage for a total of `steps` (default RECIPE's), split by the stages'
    shares, at least 1 each."""
    total = int(steps or RECIPE["steps"])
    shares = [share for _, share, _ in STAGES]
    split = [max(1, round(total * share / sum(shares))) for share in shares[:-1]]
    if total - sum(split) < 1:
        raise ValueError(f"the demo needs at least {len(STAGES)} steps, got {total}")
    return split + [total - sum(split)]


def recipe(overrides=None):
    """RECIPE with `overrides` (a dict of RECIPE's keys: seed, lr, ...) applied; an unknown
    key is an error, not a silently ignored flag."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(RECIPE))
    if unknown:
        raise ValueError(f"unknown demo recipe keys {unknown}; expected some of {sorted(RECIPE)}")
    return dict(RECIPE, **overrides)


def recipe_argv(out_dir, stage=0, steps=None, workers=1, device=None, progress=True,
                pretrained=None, text_tokens="all", overrides=None):
    """`clippo train` flags for stage `stage` of the demo's recipe (with `overrides`, see
    `recipe`), writing into out_dir."""
    r = dict(recipe(overrides), **STAGES[stage][2], steps=stage_steps(steps)[stage])
    argv = ["--train-data", "builtin", "--output", str(out_dir), "--workers", str(workers),
            "--log-every", "5", "--save-every", "0"]
    for key, value in r.items():
        argv += ["--" + key.replace("_", "-"), str(value)]
    if pretrained:
        argv += ["--pretrained", str(pretrained)]
    if text_tokens != "all":
        argv += ["--text-tokens", text_tokens]
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
    from clippo.figures import grid, with_header

    texts = [caption(c, s, p, lang) for (c, s, p) in
             [("red", "circle", "left"), ("blue", "star", "top"), ("white", "cross", "bottom")]
             for lang in LANGUAGES]
    images = _upscale(model.renderer("cpu")(texts).permute(0, 2, 3, 1).numpy(), 2)
    figure = with_header(grid(images, columns=len(LANGUAGES)),
                         "One caption in four languages, rendered as the model reads it",
                         LANGUAGES, column_width=images.shape[2])
    return _save(out / "captions.png", figure)


def _curve_figure(stage_metrics, batch_size, out):
    """The loss of every stage on one step axis: stage_metrics [(name, metrics.jsonl)]."""
    from clippo.figures import line_plot

    series, offset, starts = {}, 0, []
    for name, path in stage_metrics:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line]
        ran = [r for r in rows if r["loss"] is not None]  # null: no step of it ran
        if offset:
            starts.append((offset, f"{name} starts"))
        series[f"loss, {name}"] = ([offset + r["step"] for r in ran], [r["loss"] for r in ran])
        offset += rows[-1]["step"] if rows else 0
    notes = ["The second stage starts above the chance line: captions in languages it cannot",
             "read yet, scored at the sharp temperature learnt on English: confident and wrong."] \
        if starts else []
    plot = line_plot(series, title="clippo demo: contrastive loss", hlines=[
                         (float(np.log(batch_size)), "log(batch): chance")], vlines=starts,
                     notes=notes)
    return _save(out / "training_curve.png", plot)


def _retrieval_figure(model, task, out, metrics=None, rows=4, top=4):
    """Held-out captions (as rendered for the model), each with its top retrieved images from
    a gallery of the 16 held-out pairs and their scores: green frame = the caption's own
    image, red = another."""
    from clippo.figures import labelled_rows, outline, text_strip, with_header

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
        row = [_upscale(x, 2) for x in row]
        lines.append(row)
        side, gap = row[0].shape[1], 6
        lines.append([text_strip(side * (top + 1) + gap * top,
                                 ["caption"] + [f"score {float(sim[i, j]):.2f}" for j in order],
                                 [k * (side + gap) for k in range(top + 1)])])
    title = (f"Text->image retrieval among {len(texts)} held-out pairs (top {top} per caption)\n"
             "green frame = the caption's own image, red = another")
    if metrics:
        title += (f"\nR@1 {metrics['image_retrieval_recall@1']:.1%} over 8 galleries' test "
                  f"pairs (chance {1 / len(texts):.1%})")
    return _save(out / "retrieval_examples.png", with_header(labelled_rows(lines), title))


def _print_table(rows):
    width = max(len(k) for k, _ in rows)
    print("\n" + "-" * (width + 16))
    for key, value in rows:
        shown = f"{value:.1%}" if isinstance(value, float) and value <= 1 else f"{value}"
        print(f"  {key.ljust(width)}  {shown:>10}")
    print("-" * (width + 16))


def run(out="clippo-demo", steps=None, device=None, workers=1, progress=True, text_tokens="all",
        overrides=None):
    """The whole demo; returns the report dict (also written to out/report.json).
    overrides: RECIPE keys to change (`recipe`), e.g. {"seed": 1}."""
    from clippo.train import parse_args
    from clippo.train import run as train_run

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(f"[1/4] training a small CLIPPO on built-in data ({device}, "
          f"{torch.get_num_threads()} threads), in {len(STAGES)} stages", flush=True)
    start, stages, pretrained = time.perf_counter(), [], None
    for k, (name, _, _) in enumerate(STAGES):
        # the last stage writes DIR/train: its model/ is the demo's model
        stage_dir = out / "train" if k == len(STAGES) - 1 else out / f"train-{name}"
        if stage_dir.exists():  # an earlier demo's run in this folder: the demo starts over
            print(f"      replacing the earlier run in {stage_dir}", flush=True)
            shutil.rmtree(stage_dir)
        argv = recipe_argv(stage_dir, k, steps, workers, device, progress, pretrained,
                           text_tokens, overrides)
        print(f"      stage {k + 1} ({name}): clippo train {' '.join(argv)}", flush=True)
        summary = train_run(parse_args(argv))
        stages.append((name, summary))
        pretrained = summary["model_dir"]
    train_seconds = time.perf_counter() - start
    return evaluate_and_report(out, stages, train_seconds, device, overrides)


def evaluate_and_report(out, stages, train_seconds, device="cpu", overrides=None):
    """Evaluate the last stage's model, draw the figures, write out/report.json and print the
    table: steps 2-4 of the demo. stages: [(name, `clippo train` summary)]."""
    from clippo.eval import builtin as builtin_eval
    from clippo.model.clippo import CLIPPO

    out = Path(out)
    summary = stages[-1][1]
    total_steps = sum(st["steps"] for _, st in stages)
    model = CLIPPO.from_pretrained(summary["model_dir"]).to(device).eval()

    print("[2/4] evaluating on the held-out split (combinations never seen in training)",
          flush=True)
    image_size = model.config["image_size"]
    zs = builtin_eval.zeroshot(model, image_size=image_size)
    zs_val = builtin_eval.zeroshot(model, image_size=image_size, part="val")
    zs72 = builtin_eval.zeroshot(model, image_size=image_size, classes="all")
    galleries = builtin_eval.pair_galleries(image_size=image_size)
    pairs = builtin_eval.pair_retrieval(model, galleries)
    pairs_val = builtin_eval.pair_retrieval(model, galleries, part="val")
    ret = builtin_eval.retrieval(model, image_size=image_size)

    print("[3/4] writing figures", flush=True)
    curves = [(name, st["metrics"]) for name, st in stages]
    used = recipe(overrides)
    figures = [_caption_figure(model, out), _curve_figure(curves, used["batch_size"], out),
               _retrieval_figure(model, galleries[0], out, pairs["metrics"])]

    report = {
        # images of the 8 held-out test pairs (the other 8, "val", are for choosing recipes),
        # classified among the 16 held-out classes
        "zero_shot_top1": zs["metrics"]["acc1"],
        "zero_shot_top5": zs["metrics"]["acc5"],
        "zero_shot_mean_per_class_recall": zs["metrics"]["mean_per_class_recall"],
        "zero_shot_classes": zs["num_classes"],
        "zero_shot_chance": 1.0 / zs["num_classes"],
        # what a model reading one attribute only scores (exact): the bar for composition
        "zero_shot_single_attribute": zs["baselines"]["acc1"],
        "zero_shot_best_single_attribute": zs["baselines"]["acc1"]["best"],
        # the same images among all 72 colour x position classes: a bias towards the pairs
        # seen in training shows here
        "zero_shot_72way_top1": zs72["metrics"]["acc1"],
        "zero_shot_72way_chance": 1.0 / zs72["num_classes"],
        "zero_shot_72way_best_single_attribute": zs72["baselines"]["acc1"]["best"],
        "zero_shot_val_top1": zs_val["metrics"]["acc1"],
        # galleries of the 16 held-out pairs (one image each), the test pairs' queries scored,
        # recalls averaged over 8 galleries
        "retrieval_t2i_r1": pairs["metrics"]["image_retrieval_recall@1"],
        "retrieval_i2t_r1": pairs["metrics"]["text_retrieval_recall@1"],
        "retrieval_t2i_r5": pairs["metrics"]["image_retrieval_recall@5"],
        "retrieval_i2t_r5": pairs["metrics"]["text_retrieval_recall@5"],
        "retrieval_gallery": pairs["num_images"],
        "retrieval_galleries": pairs["galleries"],
        "retrieval_chance_r1": 1.0 / pairs["num_images"],
        "retrieval_t2i_best_single_attribute_r1":
            pairs["baselines"]["image_retrieval_recall@1"]["best"],
        "retrieval_i2t_best_single_attribute_r1":
            pairs["baselines"]["text_retrieval_recall@1"]["best"],
        "retrieval_val_t2i_r1": pairs_val["metrics"]["image_retrieval_recall@1"],
        "retrieval_val_i2t_r1": pairs_val["metrics"]["text_retrieval_recall@1"],
        # the harder gallery of `clippo eval retrieval --data builtin`: every held-out pair in
        # each of the 6 shapes (96 images), so R@1 needs the shape read too
        "retrieval_shapes_t2i_r1": ret["metrics"]["image_retrieval_recall@1"],
        "retrieval_shapes_i2t_r1": ret["metrics"]["text_retrieval_recall@1"],
        "retrieval_shapes_gallery": ret["num_images"],
        "retrieval_shapes_chance_r1": 1.0 / ret["num_images"],
        "retrieval_shapes_best_single_attribute_r1":
            ret["baselines"]["image_retrieval_recall@1"]["best"],
        # a reader of colour and position but not the shape: the bar for reading shapes
        "retrieval_shapes_colour_position_reader_r1": ret["baselines"][
            "image_retrieval_recall@1"]["colour+position"],
        "train_seconds": round(train_seconds, 1),
        "steps": total_steps,
        "stage_steps": {name: st["steps"] for name, st in stages},
        "final_loss": summary["final_loss"],
        "text_tokens": model.text_tokens,
        "device": str(device),
        # the figures repeat exactly on one machine; another CPU (vector width) sums floats
        # in another order and gives slightly different ones
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "recipe": dict(used, steps=total_steps,
                       stages=[dict(name=n, share=f, **flags) for n, f, flags in STAGES]),
        "model_dir": str(summary["model_dir"]),
        "figures": [str(f) for f in figures],
    }
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out / "report.json")

    print("[4/4] report")
    _print_table([
        ("zero-shot top-1, held-out test pairs", report["zero_shot_top1"]),
        (f"  chance (1 of {zs['num_classes']})", report["zero_shot_chance"]),
        ("  best single-attribute reader", report["zero_shot_best_single_attribute"]),
        ("zero-shot top-1 among all 72 classes", report["zero_shot_72way_top1"]),
        ("  best single-attribute reader", report["zero_shot_72way_best_single_attribute"]),
        (f"retrieval text->image R@1 ({pairs['num_images']} images)", report["retrieval_t2i_r1"]),
        (f"retrieval image->text R@1 ({pairs['num_images']} images)", report["retrieval_i2t_r1"]),
        (f"  chance (1 of {pairs['num_images']})", report["retrieval_chance_r1"]),
        ("  best single-attribute reader", report["retrieval_t2i_best_single_attribute_r1"]),
        (f"retrieval text->image R@1 ({ret['num_images']} images, shapes)",
         report["retrieval_shapes_t2i_r1"]),
        (f"retrieval image->text R@1 ({ret['num_images']} images, shapes)",
         report["retrieval_shapes_i2t_r1"]),
        (f"  chance (1 of {ret['num_images']})", report["retrieval_shapes_chance_r1"]),
        ("  colour and position, no shape", report["retrieval_shapes_colour_position_reader_r1"]),
        ("training steps", report["steps"]),
        ("training seconds", report["train_seconds"]),
    ])
    print(f"wrote {out / 'report.json'}, " + ", ".join(str(f) for f in figures))
    print(f"the trained model is in {summary['model_dir']} "
          f"(clippo eval ... --model {summary['model_dir']})")
    return report


def main(args):
    run(args.out, steps=args.steps, device=args.device, workers=args.workers,
        progress=not args.no_progress, text_tokens=getattr(args, "text_tokens", "all"),
        overrides=None if getattr(args, "seed", None) is None else {"seed": args.seed})
    return 0
