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

Each task prints a table and writes its JSON result (--out, default clippo-eval/TASK.json):
{"dataset", "model", "task", "metrics": {...}, "skipped": n}, with CLIP_benchmark's metric
names where they exist.
"""
import argparse
import sys
import time
from pathlib import Path


from clippo.eval import builtin as BI
from clippo.eval.common import (PRECISIONS, flatten, load_model, metrics_table, result, table,
                                write_json)
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
    p.add_argument("--out", help="JSON result file (default: clippo-eval/TASK.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _csv(p, caption=False, label=False):
    g = p.add_argument_group("CSV data (OpenCLIP's flags)")
    g.add_argument("--csv-img-key", default="filepath")
    if caption:
        g.add_argument("--csv-caption-key", default="title")
    if label:
        g.add_argument("--csv-label-key", default="label")
    g.add_argument("--csv-separator", default=None, help="default: tab for .tsv, else comma")
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
    return parser


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
    files = [str(dataset.images[i]) for i in indices[:limit]
             if isinstance(dataset.images[i], (str, Path))]
    return files


def _finish(args, res, default_name):
    print(metrics_table(res))
    out = Path(args.out) if args.out else Path("clippo-eval") / default_name
    write_json(out, res)
    print(f"wrote {out}")
    return res


def run_zeroshot(args, model=None, precision=None, name=None):
    from clippo.eval.zeroshot import evaluate_zeroshot
    if model is None:
        model, precision, name = _setup(args)
    if args.data == BUILTIN:
        ds, classes, prompts = BI.zeroshot_task(model.img.image_size)
        templates = load_prompts(args.templates, args.dataset) if args.templates else prompts
        n = len(classes)
        chance = {"acc1": 1 / n, "acc5": min(5, n) / n, "mean_per_class_recall": 1 / n}
    else:
        ds, classes = _classification_data(args, args.data, model, args.classnames)
        templates, chance = load_prompts(args.templates or "clip", args.dataset), None
    m = evaluate_zeroshot(model, ds, classes, templates, canonicalize=not args.no_canonicalize,
                          ties=args.ties, **_kw(args, precision))
    skipped = m.pop("skipped")
    spec = args.templates or (None if args.data == BUILTIN else "clip")
    shown = "per-class prompts" if isinstance(templates, dict) else (spec or list(templates))
    res = result("zeroshot_classification", args.data, name, m, len(skipped),
                 num_classes=len(classes), templates=shown,
                 skipped_files=_skipped_files(ds, skipped))
    if chance:
        res["chance"] = chance
    return res


def run_retrieval(args, model=None, precision=None, name=None):
    from clippo.eval.data import read_karpathy_json, read_retrieval_csv
    from clippo.eval.retrieval import CaptionedImages, evaluate_retrieval
    if model is None:
        model, precision, name = _setup(args)
    ks = tuple(args.recall_k)
    chance = None
    if args.data == BUILTIN:
        task = BI.retrieval_task(model.img.image_size)
        ds = CaptionedImages(zip(task["images"], task["captions"]), model.img.image_size)
        chance = BI.chance_table(len(ds), 2, ks)
    elif str(args.data).lower().endswith(".json"):
        ds = CaptionedImages(read_karpathy_json(args.data, args.split, args.image_root),
                             model.img.image_size)
    else:
        ds = CaptionedImages(read_retrieval_csv(args.data, args.csv_img_key,
                                                args.csv_caption_key, args.csv_separator,
                                                args.image_root), model.img.image_size)
    m = evaluate_retrieval(model, ds, ks=ks, ties=args.ties, **_kw(args, precision))
    skipped = m.pop("skipped")
    res = result("zeroshot_retrieval", args.data, name, m, len(skipped),
                 skipped_files=_skipped_files(ds, skipped))
    if chance:
        res["chance"] = chance
    return res


def run_multilingual(args, model=None, precision=None, name=None):
    from clippo.eval.data import read_xm3600
    from clippo.eval.retrieval import CaptionedImages, evaluate_multilingual_retrieval
    if model is None:
        model, precision, name = _setup(args)
    ks = tuple(args.recall_k)
    chance = None
    if args.data == BUILTIN:
        task = BI.multilingual_task(model.img.image_size)
        ds = CaptionedImages(zip(task["images"], task["captions"]), model.img.image_size)
        languages = args.languages or task["languages"]
        chance = BI.chance_table(len(ds), 1, ks)
    else:
        pairs, languages = read_xm3600(args.data, args.image_root, args.languages)
        ds = CaptionedImages(pairs, model.img.image_size)
    m = evaluate_multilingual_retrieval(model, ds, languages, ks=ks, ties=args.ties,
                                        **_kw(args, precision))
    skipped = m.pop("skipped")
    res = result("multilingual_retrieval", args.data, name, m, len(skipped),
                 skipped_files=_skipped_files(ds, skipped))
    if chance:
        res["chance"] = chance
    return res


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


def run_nlu(args, model=None, precision=None, name=None):
    from clippo.eval.data import glue_eval_files, read_glue_tsv
    from clippo.eval.nlu import evaluate_nlu
    if model is None:
        model, precision, name = _setup(args)
    kw = dict(mode=args.mode, pair_encoding=args.pair_encoding, separator=args.pair_separator,
              layer=args.layer, epochs=args.epochs, lr=args.lr, weight_decay=args.wd,
              hidden=args.hidden, seed=args.seed, precision=precision,
              progress=not args.quiet)
    if args.mode == "finetune":
        kw["batch_size"] = args.batch_size
    chance = None
    if args.data == BUILTIN:
        tasks = BI.nlu_tasks()
        chosen = [args.glue_task] if args.glue_task else list(tasks)
        unknown = [t for t in chosen if t not in tasks]
        if unknown:
            raise ValueError(f"unknown built-in NLU task {unknown[0]!r}; expected one of "
                             f"{list(tasks)}")
        metrics = {t: evaluate_nlu(model, tasks[t][0], tasks[t][1], tasks[t][2], **kw)
                   for t in chosen}
        chance = {t: BI.NLU_CHANCE[t] for t in chosen}
    else:
        task = _glue_task(args)
        train = args.train or str(Path(args.data) / "train.tsv")
        tests = {name: read_glue_tsv(f, task)
                 for name, f in glue_eval_files(task, args.data, args.test).items()}
        metrics = evaluate_nlu(model, task, read_glue_tsv(train, task), tests, **kw)
    res = result("nlu", args.data, name, metrics, 0, mode=args.mode)
    if chance:
        res["chance"] = chance
    return res


def run_vqa(args, model=None, precision=None, name=None):
    from clippo.eval.data import read_vqa
    from clippo.eval.vqa import evaluate_vqa
    if model is None:
        model, precision, name = _setup(args)
    chance = None
    if args.data == BUILTIN:
        train, test = BI.vqa_task(model.img.image_size)
        chance = {"vqa_accuracy": BI.vqa_chance(test)}
    else:
        if not args.train_data:
            raise ValueError("vqa needs --train-data (questions to train the answer "
                             "classifier on)")
        train = read_vqa(args.train_data, args.train_annotations,
                         args.train_image_root or args.image_root, args.image_template)
        test = read_vqa(args.data, args.annotations, args.image_root, args.image_template)
    m = evaluate_vqa(model, train, test, band=args.band, layout=args.layout, layer=args.layer,
                     max_answers=args.max_answers, hidden=args.hidden, epochs=args.epochs,
                     lr=args.lr, weight_decay=args.wd, seed=args.seed,
                     answer_rule="normalized" if args.normalize_answers else "official",
                     **_kw(args, precision))
    skipped = m.pop("skipped")
    skipped_train = m.pop("skipped_train")
    res = result("vqa", args.data, name, m, len(skipped) + len(skipped_train),
                 skipped_files=[str(test[i]["image"]) for i in skipped[:20]
                                if isinstance(test[i]["image"], str)])
    if chance:
        res["chance"] = chance
    return res


def run_fewshot(args, model=None, precision=None, name=None):
    from clippo.eval.fewshot import evaluate_fewshot
    if model is None:
        model, precision, name = _setup(args)
    chance = None
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
    m = evaluate_fewshot(model, train, test, len(classes), shots=tuple(args.shots),
                         num_seeds=args.seeds, l2=args.l2, layer=args.layer,
                         **_kw(args, precision))
    skipped = m.pop("skipped")
    skipped_train = m.pop("skipped_train")
    res = result("fewshot_linear_probe", args.data, name, m, len(skipped) + len(skipped_train),
                 num_classes=len(classes),
                 skipped_files=_skipped_files(test, skipped) + _skipped_files(train,
                                                                             skipped_train))
    if chance:
        res["chance"] = chance
    return res


RUNNERS = {"zeroshot": run_zeroshot, "retrieval": run_retrieval,
           "multilingual": run_multilingual, "nlu": run_nlu, "vqa": run_vqa,
           "fewshot": run_fewshot}

# The numbers of the results table: (task, metric path in the result's metrics).
TABLE_METRICS = [
    ("zeroshot", "acc1"), ("zeroshot", "acc5"), ("zeroshot", "mean_per_class_recall"),
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
        for task, runner in RUNNERS.items():
            targs = builtin_defaults(task)
            for k in ("device", "batch_size", "workers", "seed", "quiet", "precision"):
                setattr(targs, k, getattr(args, k))
            start = time.perf_counter()
            res = runner(targs, m, precision, mname)
            res["seconds"] = round(time.perf_counter() - start, 2)
            results["tasks"].setdefault(task, {})[label] = res
            if not args.quiet:
                print(f"{task} ({label}): {res['seconds']} s", file=sys.stderr)
    rows = []
    for task, key in TABLE_METRICS:
        entry = results["tasks"][task]
        row = {"task": task, "metric": key,
               "model": flatten(entry["model"]["metrics"]).get(key),
               "chance": flatten(entry["model"].get("chance", {})).get(key)}
        if "random init" in entry:
            row["random init"] = flatten(entry["random init"]["metrics"]).get(key)
        rows.append(row)
    columns = ["task", "metric", "model"] + (["random init"] if args.baseline else []) + \
        ["chance"]
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


def run(args):
    """Run the task of parsed arguments; returns its JSON-ready result."""
    if args.task == "all":
        return run_all(args)
    res = RUNNERS[args.task](args)
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
