"""Models for the evaluation tests: a small CLIPPO trained on the built-in data (the
"demo-trained model"), cached on disk under pytest's cache so only the first run pays for
it, and a randomly initialised one of the same architecture.

The recipe is a plain contrastive loop (AdamW, linear warm-up then cosine decay, gradient
clipping 1.0) on clippo.data.builtin's training split: about 15 s on two idle CPU cores. Like
the `clippo demo` model it learns colours well, in every language and script, but not yet
positions or shapes, so the built-in tasks' thresholds rest on colour (and hold for the demo
model too).
"""
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch

RECIPE = dict(width=64, depth=2, num_heads=4, mlp_dim=256, patch_size=16, image_size=64,
              out_dim=64, steps=400, batch_size=64, lr=1e-3, warmup=40, weight_decay=1e-4,
              pool=8192, seed=0)


def build(recipe=RECIPE, seed=None):
    from clippo.model.clippo import CLIPPO
    torch.manual_seed(recipe["seed"] if seed is None else seed)
    return CLIPPO(None, image_size=recipe["image_size"], patch_size=recipe["patch_size"],
                  width=recipe["width"], depth=recipe["depth"], num_heads=recipe["num_heads"],
                  mlp_dim=recipe["mlp_dim"], out_dim=recipe["out_dim"])


def train(recipe=RECIPE):
    """The trained model (CPU, eval mode)."""
    from clippo.data.builtin import BuiltinImageText
    from clippo.loss import clip_loss
    model = build(recipe)
    data = BuiltinImageText("train", num_samples=recipe["pool"],
                            image_size=recipe["image_size"], seed=recipe["seed"])
    images = torch.stack([data[i][0] for i in range(len(data))])
    with torch.no_grad():  # captions rendered once: the loop only encodes
        texts = model.renderer()([data.caption(i) for i in range(len(data))])
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"],
                            weight_decay=recipe["weight_decay"])
    steps, warmup = recipe["steps"], recipe["warmup"]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    g = torch.Generator().manual_seed(recipe["seed"])
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(images), (recipe["batch_size"],), generator=g)
        loss = clip_loss(model.encode_image(images[idx]), model.encode_image(texts[idx]),
                         model.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return model.eval()


def trained_model_dir(cache_root, recipe=RECIPE):
    """A save_pretrained directory of the trained model, trained on first use and kept under
    cache_root (keyed by the recipe and the built-in data's source)."""
    from clippo.data import builtin
    # the recipe and the data it trains on: a changed built-in dataset trains afresh too
    data_source = Path(builtin.__file__).read_bytes()
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode() + data_source).hexdigest()[:12]
    target = Path(cache_root) / f"tiny-clippo-{key}"
    if (target / "config.json").exists():
        return target
    model = train(recipe)
    tmp = Path(tempfile.mkdtemp(dir=cache_root, prefix=".tiny-clippo-"))
    try:
        model.save_pretrained(str(tmp))
        (tmp / "recipe.json").write_text(json.dumps(recipe, indent=2))
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def model_dir_for(request, tmp_path_factory):
    """The trained model for a test module: under pytest's cache when it is enabled (so runs
    share it), else in a temporary folder of this run."""
    cache = getattr(request.config, "cache", None)
    root = cache.mkdir("clippo-eval") if cache is not None else \
        tmp_path_factory.getbasetemp() / "clippo-eval"
    Path(root).mkdir(parents=True, exist_ok=True)
    return trained_model_dir(root)
