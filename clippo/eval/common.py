"""What every evaluation task shares: loading a model, encoding images and texts in batches on
the model's device (text rendered there too), results as JSON, and the printed table."""
import contextlib
import json
import math
import os
import tempfile
from pathlib import Path

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
LAYERS = ("embedding", "pre_logits")


class NothingScored(ValueError):
    """Not one sample of a task could be scored (every image missing or undecodable): a
    metric over zero samples is no result, so evaluation stops instead of reporting one."""


def resolve_device(device=None):
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(path, device=None, random_init=False, seed=0):
    """A CLIPPO model from a save_pretrained directory (or a folder holding one in model/, as
    `clippo train` writes), or a big_vision .npz; in eval mode on `device`.

    random_init: keep the architecture, re-initialise the weights (seeded): the chance-level
    baseline for a results table.
    """
    from clippo.model.clippo import CLIPPO
    p = Path(path)
    device = resolve_device(device)
    if p.is_dir():
        from clippo.convert import pretrained_dir
        p = pretrained_dir(p)
    if p.is_dir():
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"{p} is not a save_pretrained directory (no config.json)")
        model = CLIPPO.from_pretrained(str(p))
    elif p.suffix == ".npz":
        model = CLIPPO.from_big_vision(str(p))
    elif not p.exists():
        raise FileNotFoundError(f"no such model: {p}")
    else:
        raise ValueError(f"{p}: expected a save_pretrained directory or a big_vision .npz")
    if random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = CLIPPO.from_config(model.config)
    return model.to(device).eval()


def image_size(model):
    """The model's input size (H, W)."""
    return tuple(model.img.image_size)


@contextlib.contextmanager
def precision_context(device, precision="fp32"):
    """Autocast for bf16/fp16 (fp32: none). Features always come back as float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        yield
        return
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.autocast(torch.device(device).type, dtype=dtype):
        yield


def progress_bar(iterable, enabled, desc, total=None, unit="it"):
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=None if enabled else True,
                leave=False, dynamic_ncols=True)


def model_features(model, images, layer="embedding", keep=None):
    """[B, D] features of uint8/float images: the normalised embedding, or the pooled
    representation before the head ("pre_logits", what the reference's few-shot probe uses).
    keep: the patches to encode (rendered text under text_tokens="ink"; None: all)."""
    if layer == "embedding":
        return model.encode_image(images, keep=keep)
    if keep is not None:
        raise ValueError("pre_logits features of text need text_tokens='all' (this model "
                         "encodes only the ink patches of a text)")
    if layer == "pre_logits":
        return model.img(images, return_intermediates=True)[1]["pre_logits"]
    raise ValueError(f"layer must be one of {LAYERS}, got {layer!r}")


@torch.no_grad()
def encode_images(model, batches, *, layer="embedding", precision="fp32", progress=False,
                  desc="images", total=None):
    """Encode `collate` batches: (features [N, D] float32 CPU, targets, indices, skipped
    indices)."""
    device = model.device
    feats, targets, indices, skipped = [], [], [], []
    for batch in progress_bar(batches, progress, desc, total, "batch"):
        skipped += batch["skipped"]
        if batch["images"] is None:
            continue
        with precision_context(device, precision):
            z = model_features(model, batch["images"].to(device, non_blocking=True), layer)
        feats.append(z.float().cpu())
        targets += batch["targets"]
        indices += batch["indices"]
    dim = feats[0].shape[1] if feats else 0
    return (torch.cat(feats) if feats else torch.zeros(0, dim)), targets, indices, skipped


@torch.no_grad()
def encode_texts(model, texts, *, batch_size=256, layer="embedding", precision="fp32",
                 progress=False, desc="texts"):
    """Render (on the model's device) and encode strings in batches: [N, D] float32 CPU."""
    texts = list(texts)
    device = model.device
    out = []
    starts = range(0, len(texts), batch_size)
    for s in progress_bar(starts, progress, desc, len(starts), "batch"):
        images, keep = model.render_texts(texts[s:s + batch_size])  # as text_tokens says
        with precision_context(device, precision):
            out.append(model_features(model, images, layer, keep).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def result(task, dataset, model, metrics, skipped=0, **extra):
    """The JSON result, CLIP_benchmark-like: dataset, model, task, metrics, skipped."""
    return {"dataset": str(dataset), "model": str(model), "task": task,
            "metrics": metrics, "skipped": int(skipped), **extra}


def _finite(obj):
    """NaN / inf -> None, so the JSON is strict (CLIP_benchmark writes NaN; readers choke)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path, obj):
    """Write JSON atomically (temp file + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(_finite(obj), f, indent=2, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def format_value(v):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def table(rows, columns):
    """A markdown table of dict rows."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(format_value(r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def metrics_table(res):
    """A printable table of one task's result; with the chance level and the best
    single-attribute reader beside each metric where the result has them (built-in tasks)."""
    chance = flatten(res.get("chance", {}))
    best = {k: v.get("best") for k, v in res.get("baselines", {}).items()}
    columns = ["metric", "value"] + (["chance"] if chance else []) + (
        ["best single attribute"] if best else [])
    rows = [{"metric": k, "value": v, "chance": chance.get(k), "best single attribute":
             best.get(k)} for k, v in flatten(res["metrics"]).items()]
    rows.append({"metric": "skipped", "value": res.get("skipped", 0)})
    return f"{res['task']} on {res['dataset']} ({res['model']})\n" + table(rows, columns)


def flatten(metrics, prefix=""):
    out = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out
