"""Evaluation inside `clippo train`: `--val-data FILE.csv` (contrastive loss and retrieval
Recall@K on held-out pairs) and `--zeroshot-data DIR|CSV|builtin` (zero-shot accuracy), every
`--eval-every N` steps and after the last step.

The numbers are those of `clippo eval` on the same weights: the data are read by clippo.eval's
own readers, the zero-shot classifier and the metrics are clippo.eval's functions, and images
and texts are encoded in clippo eval's default batches (64 images, 256 texts), so that each
embedding is computed exactly as there. The batches are split over the ranks (each rank encodes
a contiguous run of them), the embeddings gathered, and rank 0 computes the metrics:

    val/loss                              the training loss over the held-out pairs in
                                          consecutive chunks of --batch-size, the chunks' mean
                                          weighted by size (as OpenCLIP's validation loss)
    val/image_retrieval_recall@K          `clippo eval retrieval --data FILE.csv` (the same
    val/text_retrieval_recall@K           --csv-* flags), K = 1, 5, 10
    zeroshot/acc1, acc5, mean_per_class_recall
                                          `clippo eval zeroshot --data ... [--templates T]
                                          [--classnames F]`

They go to metrics.jsonl as lines of their own ({"step", "val/...", "zeroshot/..."}), to the
--report-to reporters, and into OUTPUT/eval.png.
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch

from clippo.train import distributed as dist_lib
from clippo.train.params import _non_negative_int

IMAGE_BATCH = 64   # clippo eval's --batch-size default
TEXT_BATCH = 256   # clippo eval's text batch (encode_texts / zero_shot_classifier default)


def add_arguments(parser):
    g = parser.add_argument_group("evaluation during training")
    g.add_argument("--val-data", help="CSV/TSV of held-out (image, caption) pairs, read with "
                   "--csv-separator, --csv-img-key and --csv-caption-key: val/loss and "
                   "val/{image,text}_retrieval_recall@{1,5,10}")
    g.add_argument("--zeroshot-data", help="zero-shot classification data as `clippo eval "
                   "zeroshot --data` takes it: an ImageFolder directory, a CSV with filepath and "
                   "label columns, or 'builtin': zeroshot/acc1, zeroshot/acc5")
    g.add_argument("--zeroshot-templates", help="as `clippo eval zeroshot --templates`: clip, "
                   "short, name, a file of templates, or JSON (CLIP_benchmark's templates, CuPL "
                   "prompts) (default: clip; builtin: its own prompts)")
    g.add_argument("--zeroshot-classnames", help="as `clippo eval zeroshot --classnames`: class "
                   "names, one per line, or JSON")
    g.add_argument("--zeroshot-dataset", help="as `clippo eval zeroshot --dataset`: the entry "
                   "of JSON template/class-name files keyed by dataset name")
    g.add_argument("--eval-every", type=_non_negative_int, default=0,
                   help="steps between evaluations (0: only after the last step)")


def enabled(args):
    return bool(getattr(args, "val_data", None) or getattr(args, "zeroshot_data", None))


def _eval_namespace(task, data, extra=()):
    """clippo eval's own parsed flags for `clippo eval TASK --data DATA EXTRA...`."""
    from clippo.eval.main import build_parser
    return build_parser().parse_args([task, "--model", "-", "--data", str(data), *extra])


def _batch_range(num_batches, rank, world):
    """The contiguous run of batch numbers that `rank` encodes."""
    return num_batches * rank // world, num_batches * (rank + 1) // world


class Evaluator:
    """Reads the evaluation data once (at start-up, so a bad file fails before training) and
    evaluates a model: `run(model, loss_fn, precision) -> {metric: value}` on rank 0, None on
    the other ranks. Every rank must call run (the embeddings are gathered)."""

    def __init__(self, args, image_size, env):
        from clippo.eval.data import DataFormatError
        self.args, self.env, self.image_size = args, env, image_size
        self.retrieval = self.zeroshot = None
        try:
            if args.val_data:
                self.retrieval = self._read_val(args)
            if args.zeroshot_data:
                self.zeroshot = self._read_zeroshot(args)
        except (DataFormatError, OSError, ValueError) as e:
            raise ValueError(f"evaluation data: {e}") from None

    # -- data ----------------------------------------------------------------------------
    def _read_val(self, args):
        from clippo.eval.data import read_retrieval_csv
        from clippo.eval.retrieval import CaptionedImages
        if not Path(args.val_data).is_file():
            raise FileNotFoundError(f"--val-data {args.val_data}: no such file")
        pairs = read_retrieval_csv(args.val_data, args.csv_img_key, args.csv_caption_key,
                                   args.csv_separator)
        return CaptionedImages(pairs, self.image_size)

    def _read_zeroshot(self, args):
        from clippo.eval.main import BUILTIN, zeroshot_inputs
        from clippo.eval.zeroshot import class_prompts
        extra = []
        for flag, value in (("--templates", args.zeroshot_templates),
                            ("--classnames", args.zeroshot_classnames),
                            ("--dataset", args.zeroshot_dataset)):
            if value:
                extra += [flag, value]
        ns = _eval_namespace("zeroshot", args.zeroshot_data, extra)
        if ns.data != BUILTIN and not Path(ns.data).exists():
            raise FileNotFoundError(f"--zeroshot-data {ns.data}: no such file or directory")
        dataset, classes, templates = zeroshot_inputs(ns, self.image_size)
        prompts = class_prompts(classes, templates, canonicalize=not ns.no_canonicalize)
        return {"dataset": dataset, "classes": classes, "prompts": prompts, "ties": ns.ties}

    # -- encoding, split over the ranks ----------------------------------------------------
    def _gather(self, value):
        return dist_lib.all_gather_object(value, self.env)

    def _encode_images(self, model, dataset, precision):
        """(embeddings [N, D], targets) of the decodable images, in dataset order."""
        from clippo.eval.common import encode_images
        from clippo.eval.data import loader
        num_batches = -(-len(dataset) // IMAGE_BATCH)
        b0, b1 = _batch_range(num_batches, self.env.rank, self.env.world_size)
        part = torch.utils.data.Subset(dataset, range(b0 * IMAGE_BATCH,
                                                      min(b1 * IMAGE_BATCH, len(dataset))))
        z, targets, _, _ = encode_images(model, loader(part, IMAGE_BATCH), precision=precision)
        parts = self._gather((z, targets))
        z = torch.cat([p[0] for p in parts if p[0].numel()] or [z])
        return z, [t for p in parts for t in p[1]]

    def _encode_texts(self, model, texts, precision):
        from clippo.eval.common import encode_texts
        num_batches = -(-len(texts) // TEXT_BATCH)
        b0, b1 = _batch_range(num_batches, self.env.rank, self.env.world_size)
        z = encode_texts(model, texts[b0 * TEXT_BATCH:b1 * TEXT_BATCH], batch_size=TEXT_BATCH,
                         precision=precision)
        parts = [p for p in self._gather(z) if p.numel()]
        return torch.cat(parts) if parts else z

    # -- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def run(self, model, loss_fn, precision):
        was_training = model.training
        model.eval()
        # a DataLoader draws its base seed from torch's global generator: keep the training
        # stream's random numbers as they would be without the evaluation
        try:
            with torch.random.fork_rng(devices=[]):
                out = {}
                if self.retrieval is not None:
                    out.update(self._run_val(model, loss_fn, precision))
                if self.zeroshot is not None:
                    out.update(self._run_zeroshot(model, precision))
        finally:
            model.train(was_training)
        return out if self.env.is_master else None

    def _run_val(self, model, loss_fn, precision):
        from clippo.eval.retrieval import RECALL_KS, caption_index, retrieval_metrics
        zimg, captions = self._encode_images(model, self.retrieval, precision)
        if not captions:
            raise ValueError(f"--val-data {self.args.val_data}: no image could be decoded")
        texts, text_to_image = caption_index(captions)
        ztxt = self._encode_texts(model, texts, precision)
        if not self.env.is_master:
            return {}
        out = {"val/loss": self._val_loss(model, loss_fn, zimg[text_to_image], ztxt)}
        metrics = retrieval_metrics(zimg, ztxt, text_to_image, RECALL_KS)
        out.update({f"val/{k}": v for k, v in metrics.items()})
        return out

    def _val_loss(self, model, loss_fn, zimg, ztxt):
        """The training loss over consecutive chunks of --batch-size pairs, their mean
        weighted by chunk size (computed here alone, not gathered over ranks)."""
        from clippo.loss import clip_loss, siglip_loss
        scale = model.temperature.detach().float().cpu()
        bias = getattr(loss_fn, "logit_bias", None)
        total, n = 0.0, zimg.shape[0]
        for s in range(0, n, self.args.batch_size):
            zi, zt = zimg[s:s + self.args.batch_size], ztxt[s:s + self.args.batch_size]
            if bias is None:
                loss = clip_loss(zi, zt, scale)
            else:
                loss = siglip_loss(zi, zt, scale, bias.detach().float().cpu())
            total += float(loss) * zi.shape[0]
        return total / n

    def _run_zeroshot(self, model, precision):
        from clippo.eval import metrics as M
        from clippo.eval.zeroshot import classifier_from_embeddings
        task = self.zeroshot
        flat = [p for ps in task["prompts"] for p in ps]
        zprompts = self._encode_texts(model, flat, precision)
        zimg, targets = self._encode_images(model, task["dataset"], precision)
        if not self.env.is_master:
            return {}
        classifier = classifier_from_embeddings(zprompts, task["prompts"]).to(model.device)
        logits = (zimg.to(classifier.device) @ classifier).cpu()
        targets = torch.as_tensor(targets, dtype=torch.long)
        if not targets.numel():
            raise ValueError(f"--zeroshot-data {self.args.zeroshot_data}: no image could be "
                             f"decoded")
        m = M.classification_metrics(logits, targets, task["ties"])
        return {f"zeroshot/{k}": m[k] for k in ("acc1", "acc5", "mean_per_class_recall")}


# -- the figure ------------------------------------------------------------------------------

def plot(metrics_path, out_path):
    """OUTPUT/eval.png from metrics.jsonl's evaluation lines: the recalls and accuracies on
    top, val/loss below. Returns the path, or None when there is nothing to plot."""
    from PIL import Image

    from clippo.figures import line_plot
    rows = []
    for line in Path(metrics_path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if any(k.startswith(("val/", "zeroshot/")) for k in record):
            rows.append(record)
    if not rows:
        return None
    keys = ["zeroshot/acc1", "zeroshot/acc5", "val/image_retrieval_recall@1",
            "val/text_retrieval_recall@1"]
    series = {}
    for k in keys:
        points = [(r["step"], r[k]) for r in rows if r.get(k) is not None]
        if points:
            series[k] = tuple(zip(*points))
    panels = []
    if series:
        panels.append(line_plot(series, title="evaluation during training"))
    loss = [(r["step"], r["val/loss"]) for r in rows if r.get("val/loss") is not None]
    if loss:
        panels.append(line_plot({"val/loss": tuple(zip(*loss))}, title="val/loss"))
    Image.fromarray(np.concatenate(panels, axis=0)).save(out_path)
    return out_path
