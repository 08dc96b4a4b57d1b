"""Zero-shot evaluation throughput: images/s of `evaluate_zeroshot` with the class prompts
rendered and encoded once (the cached classifier), against the model's bare encode rate (the
ceiling) and against re-encoding the prompts for every batch (no cache), in one run.

The images are synthetic uint8 tensors at the model's size held in memory, so the numbers are
those of the evaluation path (batching, transfer, encode, scoring), not of JPEG decoding.
Weights are random (speed does not depend on them).

    python benchmarks/eval.py                       # B/16; on the CPU a short run
    python benchmarks/eval.py --variant Ti/16 --num-images 512 --classes 100
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from _common import measure, print_table, sync, write_json  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="B/16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default=None, choices=("fp32", "bf16", "fp16"),
                   help="default: bf16 on CUDA, fp32 on the CPU")
    p.add_argument("--num-images", type=int, default=None, help="default 4096 CUDA, 64 CPU")
    p.add_argument("--batch-size", type=int, default=None, help="default 256 CUDA, 32 CPU")
    p.add_argument("--classes", type=int, default=None, help="default 1000 CUDA, 20 CPU")
    p.add_argument("--templates", default=None, help="default clip (81) CUDA, short (8) CPU")
    p.add_argument("--out", help="results folder (default benchmarks/results)")
    args = p.parse_args(argv)

    from clippo.eval.data import ImageDataset
    from clippo.eval.templates import load_templates
    from clippo.eval.zeroshot import evaluate_zeroshot, zero_shot_classifier
    from clippo.factory import create_model

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    precision = args.precision or ("bf16" if cuda else "fp32")
    n = args.num_images or (4096 if cuda else 64)
    bs = args.batch_size or (256 if cuda else 32)
    num_classes = args.classes or (1000 if cuda else 20)
    templates = args.templates or ("clip" if cuda else "short")
    torch.manual_seed(0)
    model = create_model(args.variant, device=device).eval()
    size = tuple(model.img.image_size)
    classnames = [f"class number {i}" for i in range(num_classes)]
    num_prompts = num_classes * len(load_templates(templates))

    # 1. the classifier: every prompt rendered and encoded once
    sync(device)
    t0 = time.perf_counter()
    classifier = zero_shot_classifier(model, classnames, templates, batch_size=bs,
                                      precision=precision)
    sync(device)
    classifier_s = time.perf_counter() - t0

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, *size), dtype=torch.uint8, generator=g)
    dataset = ImageDataset(list(images), [i % num_classes for i in range(n)], size)
    rows = []

    # 2. zero-shot evaluation with the cached classifier
    def cached():
        evaluate_zeroshot(model, dataset, classnames, classifier=classifier, batch_size=bs,
                          precision=precision)
    t = measure(cached, device=device, warmup=1, reps=3)
    rows.append({"path": "evaluate_zeroshot, cached prompts", "images/s": n / t["p50"],
                 "s/pass": t["p50"]})

    # 3. the ceiling: encode a resident batch and score it, nothing else
    from clippo.eval.common import precision_context
    batch = images[:bs].to(device)

    def bare():
        with torch.no_grad(), precision_context(device, precision):
            (model.encode_image(batch).float() @ classifier).argmax(1)
    t = measure(bare, device=device, warmup=2, reps=10)
    rows.append({"path": "encode + score only (ceiling)", "images/s": bs / t["p50"],
                 "s/pass": t["p50"]})

    # 4. no cache: the prompts encoded again for each batch of images (a naive loop)
    def uncached():
        zero_shot_classifier(model, classnames, templates, batch_size=bs, precision=precision)
        bare()
    t = measure(uncached, device=device, warmup=1, reps=2)
    rows.append({"path": "prompts re-encoded per batch", "images/s": bs / t["p50"],
                 "s/pass": t["p50"]})

    ceiling = rows[1]["images/s"]
    for r in rows:
        r["vs ceiling"] = r["images/s"] / ceiling
    print_table(rows, ["path", "images/s", "s/pass", "vs ceiling"],
                title=f"zero-shot evaluation, {args.variant} at {size[0]}x{size[1]}, {device}, "
                      f"{precision}, batch {bs}, {num_classes} classes x "
                      f"{num_prompts // num_classes} templates")
    print(f"\nclassifier: {num_prompts} prompts rendered and encoded once in "
          f"{classifier_s:.2f} s ({num_prompts / classifier_s:,.0f} prompts/s)")
    name = f"eval_{device.type}"
    write_json(name, rows, extra={
        "variant": args.variant, "image_size": list(size), "device": str(device),
        "precision": precision, "batch_size": bs, "num_images": n, "classes": num_classes,
        "prompts": num_prompts, "classifier_seconds": classifier_s}, out_dir=args.out)
    return rows


if __name__ == "__main__":
    main()
