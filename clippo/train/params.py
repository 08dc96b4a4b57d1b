"""Command-line flags of `clippo train` (OpenCLIP's names where it has one) and --config files.

A --config file (YAML or JSON) holds an object whose keys are flag names, with dashes or
underscores ("batch-size" or "batch_size"); its values become the defaults and flags given on
the command line override them. Unknown keys are an error.
"""
import argparse
import json
import math
import os
import sys
from pathlib import Path

from clippo._argparse import HelpFormatter

DATASET_TYPES = ("auto", "csv", "webdataset", "builtin")
SCHEDULERS = ("cosine", "rsqrt", "const")
OPTIMIZERS = ("adamw", "adafactor")
PRECISIONS = ("fp32", "bf16")
LOSSES = ("softmax", "sigmoid")
SKIP_CHECK_SAMPLES = 100  # --max-skip-fraction is checked once this many samples were read


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _steps_or_fraction(text):
    """Steps (an integer >= 1, or 0) or a fraction of the run's steps (a number in (0, 1))."""
    value = _non_negative_float(text)
    if value >= 1 and value != int(value):
        raise argparse.ArgumentTypeError(
            f"expected a whole number of steps or a fraction below 1, got {text!r}")
    return value


def _positive_float(text):
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _fraction_in_unit_interval(text):
    value = _non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text!r}")
    return value


def default_workers():
    """DataLoader workers per rank by default: 4, or fewer on a machine with fewer cores (more
    workers than cores only adds contention, and torch warns about it)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def _fraction(text):
    value = _non_negative_float(text)
    if not value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


def _language_mix(text):
    """'en' / 'en,de' (equal shares) / 'en=0.5,de=0.25,zh=0.25' -> {language: weight},
    checked by the built-in data's own clippo.data.builtin.language_mix."""
    from clippo.data.builtin import language_mix
    mix = {}
    for part in text.split(","):
        name, _, weight = part.strip().partition("=")
        try:
            mix[name] = float(weight) if weight else 1.0
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad weight {weight!r} in {text!r}") from None
    try:
        language_mix(mix)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return mix


def build_parser():
    p = argparse.ArgumentParser(
        prog="clippo train",
        description="Train CLIPPO (one ViT for images and rendered text, contrastive loss). "
                    "Run with torchrun for data parallelism.",
        formatter_class=HelpFormatter)
    p.add_argument("--config", help="YAML or JSON file of flag values (flags override it)")

    g = p.add_argument_group("data")
    g.add_argument("--train-data", help="a CSV/TSV file, WebDataset shards "
                   "('dir/{000000..000099}.tar'), or 'builtin' (synthetic scenes)")
    g.add_argument("--dataset-type", choices=DATASET_TYPES, default="auto")
    g.add_argument("--train-num-samples", type=_positive_int,
                   help="samples per epoch (remote or resampled WebDataset shards: needed; local shards "
                        "are counted; builtin: the dataset's size, default 10000)")
    g.add_argument("--dataset-resampled", action="store_true",
                   help="WebDataset: each reader draws shards with replacement (seeded by seed, "
                        "epoch and reader: resuming stays exact)")
    g.add_argument("--train-data-upsampling-factors",
                   help="WebDataset sources joined by '::' in --train-data: one weight per "
                        "source, '::'-joined (OpenCLIP's meaning; needs --dataset-resampled)")
    g.add_argument("--builtin-languages", type=_language_mix,
                   help="caption languages of the built-in data and their shares, e.g. 'en' "
                        "or 'en=0.5,de=0.2,ru=0.15,zh=0.15' (default: "
                        "clippo.data.builtin.LANGUAGE_MIX)")
    g.add_argument("--csv-separator", default=None, help="CSV field separator (default: tab "
                   "if the header line holds one, else comma; as `clippo eval`)")
    g.add_argument("--csv-img-key", default="filepath", help="CSV column of image paths")
    g.add_argument("--csv-caption-key", default="title", help="CSV column of captions")
    g.add_argument("--text-pairs", help="text-pair data for next-sentence co-training (a "
                   "file of sentence pairs, or 'builtin'); rendered on both sides")
    g.add_argument("--text-pair-fraction", type=_fraction, default=0.25,
                   help="share of each batch taken by text pairs (with --text-pairs)")
    g.add_argument("--random-resized-crop", action="store_true",
                   help="random crops of 90-100%% of the image area (default: plain resize to "
                        "the model's size, as the reference)")
    g.add_argument("--workers", type=_non_negative_int, default=default_workers(),
                   help="DataLoader worker processes per rank (they decode images; text is "
                        "rendered in the step); default: 4, or the cores this process may use "
                        "when fewer")
    g.add_argument("--max-skip-fraction", type=_fraction_in_unit_interval, default=0.5,
                   help="stop with an error when more than this share of the samples read "
                        "since the last check (made at logged steps, once "
                        f"{SKIP_CHECK_SAMPLES} samples were read) was skipped as unreadable; "
                        "1: never")

    g = p.add_argument_group("model")
    g.add_argument("--model", default="clippo-B-16",
                   help="a model config name (clippo-B-16), a ViT variant (B/16, Ti/16) or a "
                        "model-config JSON file")
    g.add_argument("--pretrained", help="initial weights: a big_vision .npz or a "
                   "save_pretrained directory")
    g.add_argument("--image-size", type=_positive_int)
    g.add_argument("--patch-size", type=_positive_int)
    g.add_argument("--width", type=_positive_int)
    g.add_argument("--depth", type=_positive_int)
    g.add_argument("--heads", type=_positive_int)
    g.add_argument("--mlp-dim", type=_positive_int)
    g.add_argument("--out-dim", type=_positive_int)
    g.add_argument("--text-tokens", choices=("all", "ink"),
                   help="which patches of a rendered text the model encodes: all (the "
                        "reference) or ink (only those holding ink); saved with the model, "
                        "which is then evaluated the same way (default: the model config's or "
                        "--pretrained's, else all)")
    g.add_argument("--force-patch-dropout", type=_fraction, metavar="FRACTION",
                   help="patch dropout (FLIP), as OpenCLIP's: drop this fraction of each "
                        "photo's patches, chosen at random every step, in training only")
    g.add_argument("--loss", choices=LOSSES, default="softmax",
                   help="softmax (CLIPPO's) or sigmoid (SigLIP's, with a learned bias)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=_positive_int, default=64,
                   help="samples per process and micro-batch")
    g.add_argument("--accum-freq", type=_positive_int, default=1,
                   help="micro-batches per optimizer step, as OpenCLIP's: each step takes "
                        "batch-size x accum-freq x processes samples and its loss is over all "
                        "of them (embeddings of the other micro-batches cached)")
    steps = g.add_mutually_exclusive_group()
    steps.add_argument("--steps", type=_positive_int, help="optimizer steps to train")
    steps.add_argument("--epochs", type=_positive_float,
                       help="passes over the data (default 1 when --steps is not given)")
    g.add_argument("--lr", type=_non_negative_float, default=5e-4, help="peak learning rate")
    g.add_argument("--wd", type=_non_negative_float, default=0.1,
                   help="decoupled weight decay as torch's AdamW takes it (scaled by the "
                        "learning rate), on the Dense/Conv kernels only")
    g.add_argument("--beta1", type=_non_negative_float, default=0.9)
    g.add_argument("--beta2", type=_non_negative_float, default=0.98)
    g.add_argument("--eps", type=_non_negative_float, default=1e-6)
    g.add_argument("--warmup", type=_steps_or_fraction, default=0.1,
                   help="linear warm-up: steps, or a fraction (< 1) of all steps")
    g.add_argument("--lr-scheduler", choices=SCHEDULERS, default="cosine")
    g.add_argument("--cooldown", type=_steps_or_fraction, default=0,
                   help="linear cool-down to 0 over the last steps (steps or a fraction); "
                        "the reference's rsqrt recipe uses 0.1")
    g.add_argument("--timescale", type=_positive_int,
                   help="rsqrt timescale in steps (default: the warm-up, or 10000 without one)")
    g.add_argument("--lr-end", type=_non_negative_float, default=0.0,
                   help="the cosine schedule's final learning rate")
    g.add_argument("--opt", choices=OPTIMIZERS, default="adamw",
                   help="adamw or adafactor (torch.optim.Adafactor: --lr caps its relative "
                        "step size)")
    g.add_argument("--grad-clip-norm", type=_non_negative_float, default=1.0,
                   help="clip the global gradient norm (0: off)")
    g.add_argument("--max-nonfinite", type=_positive_int, default=10,
                   help="a step whose gradient norm or loss is NaN/Inf is skipped (no update) "
                        "and counted; this many in a row stop the run with an error")
    g.add_argument("--logit-scale-max", type=_non_negative_float, default=100.0,
                   help="clamp the learned logit scale exp(t) to at most this after each "
                        "update, as OpenCLIP (0: no clamp, as the reference)")
    g.add_argument("--precision", choices=PRECISIONS,
                   help="bf16: autocast with fp32 weights (default on CUDA); fp32 (default on "
                        "the CPU)")
    g.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute each transformer block in the backward pass")
    g.add_argument("--torchcompile", action="store_true", help="torch.compile the ViT")
    g.add_argument("--seed", type=int, default=0)

    g = p.add_argument_group("output")
    g.add_argument("--output", "--out", default="clippo-train", help="run directory")
    g.add_argument("--log-every", type=_positive_int, default=10,
                   help="steps between lines of metrics.jsonl")
    g.add_argument("--save-every", type=_non_negative_int, default=1000,
                   help="steps between checkpoints (0: only at the end)")
    g.add_argument("--keep", type=_non_negative_int, default=0,
                   help="checkpoints to keep (0: all)")
    g.add_argument("--resume", help="'latest' (the newest complete checkpoint in "
                   "OUTPUT/checkpoints) or a checkpoint file")
    g.add_argument("--resume-allow-changes", action="store_true",
                   help="resume even when flags that change the model, the data order or the "
                        "schedule differ from the checkpoint's (they are listed as a warning)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")

    g = p.add_argument_group("devices")
    g.add_argument("--device", help="cuda or cpu (default: cuda when available); under "
                   "torchrun each rank takes cuda:LOCAL_RANK")
    g.add_argument("--dist-backend", help="torch.distributed backend (default: nccl on CUDA, "
                   "gloo on the CPU)")

    from clippo.train import evaluate, fsdp, report
    evaluate.add_arguments(p)
    report.add_arguments(p)
    fsdp.add_arguments(p)
    return p


# What each flag does to a run, for resuming (clippo.train.main checks a resume against it).
# Every flag of build_parser has a line here (a test checks it); a new flag adds one.
#   model     the network or its numerics        } a change is refused on resume (listed,
#   data      which samples, in which order      } old -> new); --resume-allow-changes
#   schedule  the optimizer and its schedule     } proceeds with a warning listing them
#   batch     the global batch per step: the batch flags may change only together, keeping
#             global_batch_size(); the other rules of the data position apply
#   free      anything else: output, logging, devices, speed (may change on resume)
FLAG_KINDS = {
    "config": "free",
    # data
    "train_data": "data", "dataset_type": "data", "train_num_samples": "data",
    "builtin_languages": "data", "csv_separator": "data", "csv_img_key": "data",
    "csv_caption_key": "data", "text_pairs": "data", "text_pair_fraction": "data",
    "random_resized_crop": "data", "seed": "data",
    "workers": "free", "max_skip_fraction": "free",
    # model
    "model": "model", "pretrained": "model", "image_size": "model", "patch_size": "model",
    "width": "model", "depth": "model", "heads": "model", "mlp_dim": "model",
    "out_dim": "model", "loss": "model", "precision": "model",
    "text_tokens": "model", "force_patch_dropout": "model",
    # optimisation
    "batch_size": "batch", "accum_freq": "batch",
    "steps": "schedule", "epochs": "schedule", "lr": "schedule", "wd": "schedule",
    "beta1": "schedule", "beta2": "schedule", "eps": "schedule", "warmup": "schedule",
    "lr_scheduler": "schedule", "cooldown": "schedule", "timescale": "schedule",
    "lr_end": "schedule", "opt": "schedule", "grad_clip_norm": "schedule",
    "logit_scale_max": "schedule",
    "max_nonfinite": "free", "grad_checkpointing": "free", "torchcompile": "free",
    # output and devices
    "output": "free", "log_every": "free", "save_every": "free", "keep": "free",
    "resume": "free", "resume_allow_changes": "free", "no_progress": "free",
    "device": "free", "dist_backend": "free",
    # data mixtures (clippo.data.mixture)
    "dataset_resampled": "data", "train_data_upsampling_factors": "data",
    # evaluation during training, reporting, FSDP (a full checkpoint resumes either way; a
    # sharded one is refused without --fsdp)
    "val_data": "free", "zeroshot_data": "free", "zeroshot_templates": "free",
    "zeroshot_classnames": "free", "zeroshot_dataset": "free", "eval_every": "free",
    "report_to": "free", "wandb_project_name": "free", "fsdp": "free", "fsdp_checkpoint": "free",
}
FLAG_KIND_NAMES = ("model", "data", "schedule", "batch", "free")


def global_batch_size(args, world_size):
    """Samples per optimizer step over all processes (args: a Namespace or its vars())."""
    get = args.get if isinstance(args, dict) else lambda k, d=None: getattr(args, k, d)
    return int(get("batch_size")) * int(get("accum_freq", 1) or 1) * int(world_size)


def changed_flags(old, new, world_size_old=1, world_size_new=1, keep_global_batch=False):
    """[(flag, old value, new value)] of the model/data/schedule/batch flags that differ
    between the args of a checkpoint (`old`, a dict) and this run's (`new`, a Namespace).

    A flag the checkpoint's args do not hold (it came later) counts as its default then.
    keep_global_batch: the batch flags may change when global_batch_size() stays the same
    (for a data position that does not depend on the per-rank batch); otherwise each batch
    flag must stay as it was.
    """
    defaults = vars(build_parser().parse_args(["--train-data", "-"]))
    new = vars(new) if not isinstance(new, dict) else new
    old = {**defaults, **old}
    changes, batch = [], []
    for dest, kind in FLAG_KINDS.items():
        if kind == "free" or old.get(dest) == new.get(dest):
            continue
        (batch if kind == "batch" else changes).append((dest, old.get(dest), new.get(dest)))
    if not keep_global_batch:
        return changes + batch
    before, after = global_batch_size(old, world_size_old), global_batch_size(new, world_size_new)
    if before != after:
        changes += batch or [("global_batch_size", before, after)]
    return changes


def _load_config(path):
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"cannot read --config {path}: {e.strerror or e}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    else:
        import yaml
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            raise ValueError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"--config {path} must hold a mapping of flag names to values")
    return data


def _config_text(value):
    """A config value as the command line would give it: {"en": 0.5, "de": 0.5} (as args.json
    holds --builtin-languages) -> "en=0.5,de=0.5"."""
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def run_config(args):
    """The flags of a run as args.json holds them: a --config file that resumes it (without
    the flags that apply to one invocation only)."""
    return {k: v for k, v in vars(args).items() if k not in ONE_INVOCATION_FLAGS}


ONE_INVOCATION_FLAGS = ("config", "resume_allow_changes")


def _config_defaults(parser, config, path):
    """Convert and check a config mapping against the parser's actions -> {dest: value}."""
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    out, unknown = {}, []
    for key, value in config.items():
        dest = str(key).lstrip("-").replace("-", "_")
        if dest == "config" and value is None:  # args.json of older runs held "config": null
            continue
        action = actions.get(dest)
        if action is None:
            unknown.append(str(key))
            continue
        if value is None:
            out[dest] = None
            continue
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            if not isinstance(value, bool):
                parser.error(f"--config {path}: {key} must be true or false, got {value!r}")
            out[dest] = value
            continue
        text = _config_text(value)
        if action.type is not None:
            try:
                value = action.type(text)
            except (argparse.ArgumentTypeError, ValueError) as e:
                parser.error(f"--config {path}: {key}: {e}")
        if action.choices is not None and value not in action.choices:
            parser.error(f"--config {path}: {key} must be one of {list(action.choices)}, "
                         f"got {value!r}")
        out[dest] = value
    if unknown:
        known = sorted(k.replace("_", "-") for k in actions)
        parser.error(f"--config {path}: unknown keys {unknown}; known: {', '.join(known)}")
    return out


def parse_args(argv=None):
    """Parse flags (and a --config file under them); returns an argparse.Namespace."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    if first.config:
        try:
            config = _load_config(first.config)
        except ValueError as e:
            parser.error(str(e))
        defaults = _config_defaults(parser, config, first.config)
        if defaults.get("steps") is not None and defaults.get("epochs") is not None:
            parser.error(f"--config {first.config}: give steps or epochs, not both")
        parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    # a config's steps/epochs gives way to the other one given on the command line
    if args.steps is not None and args.epochs is not None:
        given = argv if argv is not None else sys.argv[1:]
        if any(a.startswith("--steps") for a in given):
            args.epochs = None
        elif any(a.startswith("--epochs") for a in given):
            args.steps = None
        else:
            parser.error("give --steps or --epochs, not both")
    if args.train_data is None:
        parser.error("--train-data is required (a CSV, WebDataset shards, or 'builtin')")
    if args.beta1 >= 1 or args.beta2 >= 1:
        parser.error("--beta1 and --beta2 must be below 1")
    if 0 < args.logit_scale_max < 1:
        parser.error("--logit-scale-max must be 0 (no clamp) or at least 1 (the clamp keeps the "
                     "logit scale in [1, max])")
    if args.builtin_languages and not (args.train_data == "builtin"
                                       or args.dataset_type == "builtin"):
        parser.error("--builtin-languages is for --train-data builtin")
    return args
