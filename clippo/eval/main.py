"""`clippo eval TASK ...`: the evaluation suite on your own copies of the data, or on the
built-in tiny versions (--data builtin).

    clippo eval zeroshot --model DIR --data imagenet/val [--classnames FILE] [--templates clip]
    clippo eval retrieval --model DIR --data dataset_coco.json --image-root coco/
    clippo eval multilingual --model DIR --data xm3600/captions.jsonl --image-root xm3600/images
    clippo eval nlu --model DIR --task sst2 --data glue/SST-2 [--mode linear|finetune]
    clippo eval vqa --model DIR --train-data q_train.json --train-annotations a_train.json \\
        --data q_val.json --annotations a_val.json --image-root coco/
    clippo eval fewshot --model DIR --train DIR_OR_CSV --data DIR_OR_CSV
    clippo eval all --model DIR --data builtin          every built-in task, one results table

Each task prints a table and writes its JSON result (--output, default clippo-eval/TASK.json):
{"dataset", "model", "task", "metrics": {...}, "skipped": n}, with CLIP_benchmark's metric
names where they exist.
"""
import argparse
import sys
import time
from pathlib import Path


from clippo._argparse import use_help_formatter
from clippo.eval import builtin as BI
from clippo.eval.common import (PRECISIONS, NothingScored, flatten, load_model, metrics_table,
                                result, table, write_json)
from clippo.eval.metrics import TIES
from clippo.eval.templates import load_prompts

BUILTIN = "builtin"


# -- arguments -----------------------------------------------------------------------------------

def _common(p, data_help):
    p.add_argument("--model", required=True, help="save_pretrained directory (or a `clippo "
                   "train` output folder holding model/), or a big_vision .npz")
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--random-init", action="store_true", help="re-initialise the model's "
                   "weights (seeded): the chance-level baseline of the same architecture")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if "
                   "available)")
    p.add_argument("--precision", default=None, choices=PRECISIONS, help="autocast dtype "
                   "(default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers decoding images")
    p.add_argument("--output", "--out", dest="out",
                   help="JSON result file (default: clippo-eval/TASK.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _csv(p, caption=False, label=False):
    g = p.add_argument_group("CSV data (OpenCLIP's flags)")
    g.add_argument("--csv-img-key", default="filepath")
    if caption:
        g.add_argument("--csv-caption-key", default="title")
    if label:
        g.add_argument("--csv-label-key", default="label")
    g.add_argument("--csv-separator", default=None, help="default: tab if the header line "
                   "holds one, else comma")
    g.add_argument("--image-root", help="folder that relative image paths start from "
                   "(default: the data file's folder)")


def _probe(p, epochs, lr):
    g = p.add_argument_group("classifier")
    g.add_argument("--layer", default="pre_logits", choices=("pre_logits", "embedding"),
                   help="features: the pooled representation before the head (default) or "
                   "the normalised embedding")
    g.add_argument("--epochs", type=int, default=epochs)
    g.add_argument("--lr", type=float, default=lr)
    g.add_argument("--wd", type=float, default=1e-4, help="weight decay")
    g.add_argument("--hidden", type=int, default=0, help="hidden units of an MLP head "
                   "(0: linear)")


def build_parser():
    parser = argparse.ArgumentParser(prog="clippo eval", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    sub = parser.add_subparsers(dest="task", required=True)

    p = sub.add_parser("zeroshot", help="zero-shot classification: acc1, acc5, "
                       "mean_per_class_recall")
    _common(p, "ImageFolder directory (DIR/<class>/<image>), a CSV with image and label "
            "columns, or 'builtin'")
    p.add_argument("--classnames", help="class names: one per line, or JSON (a list, or "
                   "CLIP_benchmark's en_classnames.json with --dataset) (default: the folder "
                   "names, or the CSV's distinct labels)")
    p.add_argument("--templates", default=None, help="clip (the CLIP paper's 80 + '{}', "
                   "default), short (CLIP's best 7 + '{}'), name ('{}'), a file with one "
                   "template per line, or JSON: CLIP_benchmark's templates or CuPL prompts "
                   "files (with --dataset), or {class name: [prompts]}")
    p.add_argument("--dataset", help="the entry to use in JSON files keyed by dataset name "
                   "(CLIP_benchmark's names: imagenet1k, cifar10, vtab/eurosat, ...)")
    p.add_argument("--no-canonicalize", action="store_true", help="use class names and "
                   "templates as given (default: lower case, punctuation removed, as the "
                   "reference)")
    p.add_argument("--ties", default="first", choices=TIES)
    _csv(p, label=True)

    p = sub.add_parser("retrieval", help="image-text retrieval: Recall@K both ways")
    _common(p, "Karpathy-split JSON (dataset_coco.json, dataset_flickr30k.json), a CSV with one "
            "(image, caption) per row, or 'builtin'")
    p.add_argument("--split", default="test", help="Karpathy split (default test; 'all')")
    p.add_argument("--recall-k", type=int, nargs="+", default=[1, 5, 10])
    p.add_argument("--ties", default="first", choices=TIES)
    _csv(p, caption=True)

    p = sub.add_parser("multilingual", help="multilingual retrieval (Crossmodal-3600 style): "
                       "per-language and mean Recall@K")
    _common(p, "JSONL, one image per line with captions keyed by language, or 'builtin'")
    p.add_argument("--image-root", help="folder of the images (default: the JSONL's folder)")
    p.add_argument("--languages", nargs="+", help="languages to score (default: all of the "
                   "first line's)")
    p.add_argument("--recall-k", type=int, nargs="+", default=[1, 5, 10])
    p.add_argument("--ties", default="first", choices=TIES)

    p = sub.add_parser("nlu", help="GLUE-style classification / regression on rendered text")
    _common(p, "GLUE task folder holding train.tsv and dev.tsv (MNLI: dev_matched.tsv and "
            "dev_mismatched.tsv, scored as mnli_m and mnli_mm), or 'builtin'")
    p.add_argument("--task", dest="glue_task", default=None,
                   help="cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli, or 'custom' with "
                   "--text-a-key ... (built-in: colour, same, similarity; default all three)")
    p.add_argument("--train", help="training TSV (default: DATA/train.tsv)")
    p.add_argument("--test", help="evaluation TSV, with labels (default: DATA/dev.tsv; MNLI: "
                   "both dev files)")
    p.add_argument("--mode", default="linear", choices=("linear", "finetune"),
                   help="linear probe on frozen features, or full fine-tuning")
    p.add_argument("--pair-encoding", default=None, choices=("joint", "separate"),
                   help="joint: both sentences rendered into one image; separate: each "
                   "encoded alone, features (u, v, |u-v|, u*v) (default: separate for "
                   "--mode linear, joint for --mode finetune)")
    p.add_argument("--pair-separator", default=" | ", help="between the sentences of a "
                   "joint pair")
    g = p.add_argument_group("custom TSV (--task custom; header line required)")
    g.add_argument("--text-a-key")
    g.add_argument("--text-b-key")
    g.add_argument("--label-key")
    g.add_argument("--labels", help="comma-separated label values (default: regression)")
    _probe(p, epochs=None, lr=None)

    p = sub.add_parser("vqa", help="VQA by rendering the question onto the image")
    _common(p, "VQAv2 questions JSON of the evaluation split, or 'builtin'")
    p.add_argument("--annotations", help="VQAv2 annotations JSON of the evaluation split")
    p.add_argument("--train-data", help="VQAv2 questions JSON to train the answer classifier")
    p.add_argument("--train-annotations", help="VQAv2 annotations JSON of the training split")
    p.add_argument("--image-root", help="images of the evaluation split")
    p.add_argument("--train-image-root", help="images of the training split")
    p.add_argument("--image-template", help="image file name from image_id (default: COCO's "
                   "COCO_<data_subtype>_<image_id:012d>.jpg)")
    p.add_argument("--band", type=int, help="height of the question band in pixels (default: "
                   "about a quarter of the image, whole text rows)")
    p.add_argument("--layout", default="top", choices=("top", "bottom"))
    p.add_argument("--max-answers", type=int, default=3129)
    p.add_argument("--normalize-answers", action="store_true", help="score with every answer "
                   "fully normalised (default: the official vqaEval.py rule, which leaves the "
                   "answers as they are when all ten humans agree)")
    _probe(p, epochs=100, lr=1e-2)

    p = sub.add_parser("fewshot", help="few-shot linear probe (closed-form ridge regression)")
    _common(p, "test set: ImageFolder directory or CSV, or 'builtin'")
    p.add_argument("--train", help="training set: ImageFolder directory or CSV with the same "
                   "classes")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10, 25])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--l2", type=float, default=2.0 ** 10)
    p.add_argument("--layer", default="pre_logits", choices=("pre_logits", "embedding"))
    p.add_argument("--classnames", help="class names for CSV integer labels: one per line, or "
                   "JSON (a list, or CLIP_benchmark's en_classnames.json with --dataset)")
    p.add_argument("--dataset", help="the entry to use in a --classnames JSON keyed by "
                   "dataset name")
    _csv(p, label=True)

    p = sub.add_parser("all", help="every built-in task; one results table")
    _common(p, "'builtin' (the only choice)")
    p.add_argument("--baseline", action="store_true", help="also score a randomly initialised "
                   "model of the same architecture")
    p.add_argument("--markdown", help="also write the results table to this file")
    return use_help_formatter(parser)


# -- running ---------------------------------------------------------------------------------------

def _setup(args):
    from clippo.eval.common import resolve_device
    device = resolve_device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    model = load_model(args.model, device, random_init=args.random_init, seed=args.seed)
    name = str(args.model) + (" (random init)" if args.random_init else "")
    return model, precision, name


def _kw(args, precision):
    return dict(batch_size=args.batch_size, num_workers=args.workers, precision=precision,
                progress=not args.quiet)


def _classification_data(args, path, model, classnames_file=None):
    from clippo.eval.data import (ImageDataset, read_classification_csv, read_classnames,
                                  read_image_folder)
    names = read_classnames(classnames_file, getattr(args, "dataset", None)) \
        if classnames_file else None
    if Path(path).is_dir():
        classes, samples = read_image_folder(path)
        if names:
            if len(names) != len(classes):
                raise ValueError(f"{classnames_file}: {len(names)} class names for "
                                 f"{len(classes)} class folders in {path}")
            classes = names
    else:
        classes, samples = read_classification_csv(
            path, args.csv_img_key, args.csv_label_key, args.csv_separator, names,
            args.image_root)
    ds = ImageDataset([s[0] for s in samples], [s[1] for s in samples], model.img.image_size)
    return ds, classes


def _skipped_files(dataset, indices, limit=20):
    images = dataset.images if hasattr(dataset, "images") else [r["image"] for r in dataset]
    return [str(images[i]) for i in indices[:limit] if isinstance(images[i], (str, Path))]


def _finish(args, res, default_name):
    print(metrics_table(res))
    out = Path(args.out) if args.out else Path("clippo-eval") / default_name
    write_json(out, res)
    print(f"wrote {out}")
    return res


def zeroshot_inputs(args, image_size):
    """(dataset, class names, templates or per-class prompts) of `clippo eval zeroshot`'s
    flags (also what `clippo train --zeroshot-data` evaluates on)."""
    if args.data == BUILTIN:
        ds, classes, prompts = BI.zeroshot_task(image_size)
        templates = load_prompts(args.templates, args.dataset) if args.templates else prompts
        return ds, classes, templates
    holder = argparse.Namespace(img=argparse.Namespace(image_size=image_size))
    ds, classes = _classification_data(args, args.data, holder, args.classnames)
    return ds, classes, load_prompts(args.templates or "clip", args.dataset)


# Each task: how its data is built (built-in or read from the user's files), how it is scored,
# what its result records. The `load_*` functions return (inputs, chance or None, extra result
# fields); the `score_*` functions return the metrics with "skipped" (and "skipped_train") lists
# of dataset indices.

def _load_zeroshot(args, model):
    extra = {}
    ds, classes, templates = zeroshot_inputs(args, model.img.image_size)
    chance = None
    if args.data == BUILTIN:
        n = len(classes)
        chance = {"acc1": 1 / n, "acc5": min(5, n) / n, "mean_per_class_recall": 1 / n,
                  "acc1_72way": 1 / len(BI.B.combos("all"))}
        extra["baselines"] = {"acc1": BI.zeroshot_baselines(len(ds)), "acc1_72way":
                              BI.zeroshot_baselines(len(ds), classes="all")}
        extra["part"] = "test"
    spec = args.templates or (None if args.data == BUILTIN else "clip")
    shown = "per-class prompts" if isinstance(templates, dict) else (spec or list(templates))
    return (ds, classes, templates), chance, dict(num_classes=len(classes), templates=shown,
                                                  **extra)


def _score_zeroshot(args, model, inputs, kw):
    from clippo.eval.zeroshot import evaluate_zeroshot
    ds, classes, templates = inputs
    m = evaluate_zeroshot(model, ds, classes, templates,
                          canonicalize=not args.no_canonicalize, ties=args.ties, **kw)
    if args.data == BUILTIN and not args.templates:
        # the same images among all 72 colour x position classes: a preference for the pairs
        # seen in training costs accuracy here
        ds72, classes72, prompts72 = BI.zeroshot_task(model.img.image_size, len(ds),
                                                      classes="all")
        m["acc1_72way"] = evaluate_zeroshot(model, ds72, classes72, prompts72,
                                            canonicalize=not args.no_canonicalize,
                                            ties=args.ties, **kw)["acc1"]
    return m


def _load_retrieval(args, model):
    from clippo.eval.data import read_karpathy_json, read_retrieval_csv
    from clippo.eval.retrieval import CaptionedImages
    queries, extra = None, {}
    if args.data == BUILTIN:
        task = BI.retrieval_task(model.img.image_size)
        pairs, chance = zip(task["images"], task["captions"]), BI.chance_table(
            len(task["captions"]), 2, args.recall_k)
        queries = BI.query_indices(task)
        extra = dict(part="test", baselines=BI.retrieval_baselines(task, queries))
    elif str(args.data).lower().endswith(".json"):
        pairs, chance = read_karpathy_json(args.data, args.split, args.image_root), None
    else:
        pairs, chance = read_retrieval_csv(args.data, args.csv_img_key, args.csv_caption_key,
                                           args.csv_separator, args.image_root), None
    return (CaptionedImages(pairs, model.img.image_size), queries), chance, extra


def _score_retrieval(args, model, inputs, kw):
    from clippo.eval.retrieval import evaluate_retrieval
    ds, queries = inputs
    return evaluate_retrieval(model, ds, ks=tuple(args.recall_k), ties=args.ties,
                              queries=queries, **kw)


def _load_multilingual(args, model):
    from clippo.eval.data import read_xm3600
    from clippo.eval.retrieval import CaptionedImages
    queries, extra = None, {}
    if args.data == BUILTIN:
        task = BI.multilingual_task(model.img.image_size)
        pairs, languages = zip(task["images"], task["captions"]), \
            args.languages or task["languages"]
        chance = BI.chance_table(len(task["captions"]), 1, args.recall_k)
        queries = BI.query_indices(task)
        extra = dict(part="test", baselines=BI.retrieval_baselines(task, queries))
    else:
        (pairs, languages), chance = read_xm3600(args.data, args.image_root,
                                                 args.languages), None
    return (CaptionedImages(pairs, model.img.image_size), languages, queries), chance, extra


def _score_multilingual(args, model, inputs, kw):
    from clippo.eval.retrieval import evaluate_multilingual_retrieval
    ds, languages, queries = inputs
    return evaluate_multilingual_retrieval(model, ds, languages, ks=tuple(args.recall_k),
                                           ties=args.ties, queries=queries, **kw)


def _glue_task(args):
    from clippo.eval.data import GLUE_TASKS, GlueTask
    name = args.glue_task
    if name == "custom":
        if not args.text_a_key or not args.label_key:
            raise ValueError("--task custom needs --text-a-key and --label-key")
        labels = args.labels.split(",") if args.labels else None
        return GlueTask("custom", args.text_a_key, args.text_b_key, args.label_key, labels,
                        metrics=("pearson", "spearmanr") if labels is None else
                        ("accuracy", "f1", "matthews_corrcoef") if len(labels) == 2
                        else ("accuracy", "matthews_corrcoef"))
    if name is None:
        raise ValueError(f"--task is needed with --data {args.data} (one of "
                         f"{sorted(GLUE_TASKS)} or custom)")
    if name not in GLUE_TASKS:
        raise ValueError(f"unknown --task {name!r}; expected one of {sorted(GLUE_TASKS)} or "
                         f"custom")
    return GLUE_TASKS[name]


def _load_nlu(args, model):
    from clippo.eval.data import glue_eval_files, read_glue_tsv
    if args.data == BUILTIN:
        tasks = BI.nlu_tasks()
        chosen = [args.glue_task] if args.glue_task else list(tasks)
        unknown = [t for t in chosen if t not in tasks]
        if unknown:
            raise ValueError(f"unknown built-in NLU task {unknown[0]!r}; expected one of "
                             f"{list(tasks)}")
        return [(t, *tasks[t]) for t in chosen], {t: BI.NLU_CHANCE[t] for t in chosen}, \
            dict(mode=args.mode)
    task = _glue_task(args)
    train = args.train or str(Path(args.data) / "train.tsv")
    tests = {name: read_glue_tsv(f, task)
             for name, f in glue_eval_files(task, args.data, args.test).items()}
    return [(None, task, read_glue_tsv(train, task), tests)], None, dict(mode=args.mode)


def _score_nlu(args, model, tasks, kw):
    from clippo.eval.nlu import evaluate_nlu
    nlu_kw = dict(mode=args.mode, pair_encoding=args.pair_encoding,
                  separator=args.pair_separator, layer=args.layer, epochs=args.epochs,
                  lr=args.lr, weight_decay=args.wd, hidden=args.hidden, seed=args.seed,
                  precision=kw["precision"], progress=kw["progress"])
    if args.mode == "finetune":
        nlu_kw["batch_size"] = args.batch_size
    metrics = {}
    for key, task, train, test in tasks:  # key None: GLUE's tests, named by evaluate_nlu
        m = evaluate_nlu(model, task, train, test, **nlu_kw)
        metrics.update(m if key is None else {key: m})
    return dict(metrics, skipped=[])


def _load_vqa(args, model):
    from clippo.eval.data import read_vqa
    if args.data == BUILTIN:
        train, test = BI.vqa_task(model.img.image_size)
        return (train, test), {"vqa_accuracy": BI.vqa_chance(test)}, {}
    if not args.train_data:
        raise ValueError("vqa needs --train-data (questions to train the answer classifier on)")
    train = read_vqa(args.train_data, args.train_annotations,
                     args.train_image_root or args.image_root, args.image_template)
    test = read_vqa(args.data, args.annotations, args.image_root, args.image_template)
    return (train, test), None, {}


def _score_vqa(args, model, inputs, kw):
    from clippo.eval.vqa import evaluate_vqa
    train, test = inputs
    return evaluate_vqa(model, train, test, band=args.band, layout=args.layout,
                        layer=args.layer, max_answers=args.max_answers, hidden=args.hidden,
                        epochs=args.epochs, lr=args.lr, weight_decay=args.wd, seed=args.seed,
                        answer_rule="normalized" if args.normalize_answers else "official",
                        **kw)


def _load_fewshot(args, model):
    if args.data == BUILTIN:
        train, test, classes = BI.fewshot_task(model.img.image_size)
        chance = {f"acc1_{k}shot": 1 / len(classes) for k in args.shots}
    else:
        if not args.train:
            raise ValueError("fewshot needs --train (the labelled images the shots come from)")
        train, classes = _classification_data(args, args.train, model, args.classnames)
        test, test_classes = _classification_data(args, args.data, model, args.classnames)
        if list(test_classes) != list(classes):
            raise ValueError(f"--train {args.train} and --data {args.data} have different "
                             f"classes")
        chance = None
    return (train, test, classes), chance, dict(num_classes=len(classes))


def _score_fewshot(args, model, inputs, kw):
    from clippo.eval.fewshot import evaluate_fewshot
    train, test, classes = inputs
    return evaluate_fewshot(model, train, test, len(classes), shots=tuple(args.shots),
                            num_seeds=args.seeds, l2=args.l2, layer=args.layer, **kw)


def _image_roots(args):
    """Where relative image paths of a task's files were looked for (for error messages)."""
    if args.data == BUILTIN:
        return "built-in images"
    data = Path(args.data)
    if args.task == "vqa":
        test = args.image_root or data.parent
        train = args.train_image_root or args.image_root or Path(args.train_data).parent
        return f"{test} (evaluation), {train} (training)"
    if args.task == "fewshot":
        return ", ".join(str(p if Path(p).is_dir() else (args.image_root or Path(p).parent))
                         for p in (args.train, args.data))
    if data.is_dir():
        return str(data)
    return str(args.image_root or data.parent)


class Task:
    """One `clippo eval` subcommand: load(args, model) -> (inputs, chance, extra);
    score(args, model, inputs, kw) -> metrics; datasets(inputs) -> (test, train or None), the
    image datasets whose skipped files the result lists."""

    def __init__(self, result_name, load, score, datasets=None):
        self.result_name, self.load, self.score = result_name, load, score
        self.datasets = datasets


TASKS = {
    "zeroshot": Task("zeroshot_classification", _load_zeroshot, _score_zeroshot,
                     lambda inputs: (inputs[0], None)),
    "retrieval": Task("zeroshot_retrieval", _load_retrieval, _score_retrieval,
                      lambda inputs: (inputs[0], None)),
    "multilingual": Task("multilingual_retrieval", _load_multilingual, _score_multilingual,
                         lambda inputs: (inputs[0], None)),
    "nlu": Task("nlu", _load_nlu, _score_nlu),
    "vqa": Task("vqa", _load_vqa, _score_vqa, lambda inputs: (inputs[1], inputs[0])),
    "fewshot": Task("fewshot_linear_probe", _load_fewshot, _score_fewshot,
                    lambda inputs: (inputs[1], inputs[0])),
}


def run_task(task, args, model=None, precision=None, name=None):
    """Run `clippo eval TASK` (args: its parsed flags) on `model` (default: --model's);
    returns the JSON-ready result. A task that scores no sample at all raises NothingScored
    naming the data and the image root tried."""
    spec = TASKS[task]
    if model is None:
        model, precision, name = _setup(args)
    inputs, chance, extra = spec.load(args, model)
    try:
        m = spec.score(args, model, inputs, _kw(args, precision))
    except NothingScored as e:
        raise NothingScored(f"{args.data}: {e}; image root tried: {_image_roots(args)}") \
            from None
    skipped, skipped_train = m.pop("skipped"), m.pop("skipped_train", [])
    files = []
    if spec.datasets:
        test, train = spec.datasets(inputs)
        files = _skipped_files(test, skipped) + (
            _skipped_files(train, skipped_train) if train is not None else [])
    res = result(spec.result_name, args.data, name, m, len(skipped) + len(skipped_train),
                 **extra, **({"skipped_files": files} if spec.datasets else {}))
    if chance:
        res["chance"] = chance
    return res


# The numbers of the results table: (task, metric path in the result's metrics).
TABLE_METRICS = [
    ("zeroshot", "acc1"), ("zeroshot", "acc5"), ("zeroshot", "mean_per_class_recall"),
    ("zeroshot", "acc1_72way"),
    ("retrieval", "image_retrieval_recall@1"), ("retrieval", "text_retrieval_recall@1"),
    ("retrieval", "image_retrieval_recall@5"), ("retrieval", "text_retrieval_recall@5"),
    ("multilingual", "image_retrieval_recall@1"), ("multilingual", "text_retrieval_recall@1"),
    ("multilingual", "image_retrieval_recall@5"), ("multilingual", "text_retrieval_recall@5"),
    ("nlu", "colour/accuracy"), ("nlu", "same/accuracy"), ("nlu", "same/f1"),
    ("nlu", "similarity/pearson"), ("nlu", "similarity/spearmanr"),
    ("vqa", "vqa_accuracy"),
    ("fewshot", "acc1_1shot"), ("fewshot", "acc1_5shot"), ("fewshot", "acc1_10shot"),
    ("fewshot", "acc1_25shot"),
]


def builtin_defaults(task):
    """The argparse namespace of `clippo eval TASK --data builtin` with default flags."""
    parser = build_parser()
    return parser.parse_args([task, "--model", "-", "--data", BUILTIN])


def run_all(args):
    if args.data != BUILTIN:
        raise ValueError("`clippo eval all` runs the built-in tasks: use --data builtin")
    model, precision, name = _setup(args)
    models = [("model", model, name)]
    if args.baseline:
        baseline = load_model(args.model, model.device, random_init=True, seed=args.seed)
        models.append(("random init", baseline, name + " (random init)"))
    results = {"model": name, "tasks": {}}
    for label, m, mname in models:
        for task in TASKS:
            targs = builtin_defaults(task)
            for k in ("device", "batch_size", "workers", "seed", "quiet", "precision"):
                setattr(targs, k, getattr(args, k))
            start = time.perf_counter()
            res = run_task(task, targs, m, precision, mname)
            res["seconds"] = round(time.perf_counter() - start, 2)
            results["tasks"].setdefault(task, {})[label] = res
            if not args.quiet:
                print(f"{task} ({label}): {res['seconds']} s", file=sys.stderr)
    rows = []
    for task, key in TABLE_METRICS:
        entry = results["tasks"][task]
        row = {"task": task, "metric": key,
               "model": flatten(entry["model"]["metrics"]).get(key),
               "chance": flatten(entry["model"].get("chance", {})).get(key),
               "best single attribute": entry["model"].get("baselines", {}).get(
                   key, {}).get("best")}
        if "random init" in entry:
            row["random init"] = flatten(entry["random init"]["metrics"]).get(key)
        rows.append(row)
    columns = ["task", "metric", "model"] + (["random init"] if args.baseline else []) + \
        ["chance", "best single attribute"]
    md = table(rows, columns)
    results["table"] = rows
    print(md)
    out = Path(args.out) if args.out else Path("clippo-eval") / "all.json"
    write_json(out, results)
    print(f"wrote {out}")
    if args.markdown:
        Path(args.markdown).write_text(md + "\n", encoding="utf-8")
        print(f"wrote {args.markdown}")
    return results


def _check_outputs(args):
    """The files the run will write must be writable as files: found out before evaluating,
    not after."""
    for flag, path, suffix in (("--output", args.out, ".json"),
                               ("--markdown", getattr(args, "markdown", None), ".md")):
        if path and Path(path).is_dir():
            raise ValueError(f"{flag} {path} is a directory; give a file path "
                             f"(e.g. {Path(path) / (args.task + suffix)})")


def run(args):
    """Run the task of parsed arguments; returns its JSON-ready result."""
    _check_outputs(args)
    if args.task == "all":
        return run_all(args)
    res = run_task(args.task, args)
    return _finish(args, res, f"{args.task}.json")


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ValueError, OSError, TypeError) as e:  # user errors: one line, no traceback
        print(f"clippo eval {args.task}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
