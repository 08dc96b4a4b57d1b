"""Held-out accuracy of trained models with each text_tokens setting: the models `clippo demo`
writes (DIR/train/model), each evaluated as trained and with the other setting (off its
training: for a model trained with "all", "ink" shows how far a released-style checkpoint
moves when only its ink patches are encoded).

    python benchmarks/text_tokens_eval.py demo-all/train/model demo-ink/train/model \\
        [--out DIR]

Prints a table and writes <out>/text_tokens_eval.json: the demo's metrics (zero-shot top-1 on
the 16 held-out classes; text->image and image->text R@1 on the galleries of the 16 held-out
pairs, mean of 8; the same on the 96-image gallery of every pair in all 6 shapes).
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from _common import print_table, write_json  # noqa: E402

from clippo.eval import builtin as builtin_eval  # noqa: E402
from clippo.model.clippo import CLIPPO, TEXT_TOKENS  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "out" / "benchmarks"


def evaluate(model):
    image_size = model.config["image_size"]
    zs = builtin_eval.zeroshot(model, image_size=image_size)
    pairs = builtin_eval.pair_retrieval(model, builtin_eval.pair_galleries(image_size=image_size))
    shapes = builtin_eval.retrieval(model, image_size=image_size)
    return {"zero_shot_top1": zs["metrics"]["acc1"],
            "retrieval_t2i_r1": pairs["metrics"]["image_retrieval_recall@1"],
            "retrieval_i2t_r1": pairs["metrics"]["text_retrieval_recall@1"],
            "retrieval_shapes_t2i_r1": shapes["metrics"]["image_retrieval_recall@1"],
            "retrieval_shapes_i2t_r1": shapes["metrics"]["text_retrieval_recall@1"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="save_pretrained directories")
    p.add_argument("--out", default=None, help=f"folder for the JSON (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    rows = []
    for path in args.models:
        model = CLIPPO.from_pretrained(path).eval()
        trained = model.text_tokens
        for tokens in TEXT_TOKENS:
            model.text_tokens = tokens
            with torch.no_grad():
                metrics = evaluate(model)
            rows.append(dict(model=path, trained_with=trained, evaluated_with=tokens,
                             as_trained=tokens == trained, **metrics))
    print_table(rows, ["trained_with", "evaluated_with", "zero_shot_top1", "retrieval_t2i_r1",
                       "retrieval_i2t_r1", "retrieval_shapes_t2i_r1",
                       "retrieval_shapes_i2t_r1"], title="held-out accuracy by text_tokens")
    write_json("text_tokens_eval", rows, out_dir=args.out or DEFAULT_OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
