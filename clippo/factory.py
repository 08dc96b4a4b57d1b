"""Named model configs (clippo/model_configs/*.json) and `create_model`, as open_clip does.

A config names a ViT variant and the CLIPPO settings; sizes are decoded by
`clippo.model.vit.decode_variant` and render settings default to `RenderConfig`, so a JSON file
holds only the variant and what differs from those defaults:

    {"variant": "B/16", "image_size": 224, "pool_type": "map", "out_dim": 768,
     "temperature_init": 10.0, "render": {},          # render: RenderConfig overrides
     "text_tokens": "all"}                            # or "ink": see CLIPPO
"""
import copy
import json
from pathlib import Path

import torch

from clippo.model.clippo import CLIPPO
from clippo.model.vit import decode_variant

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
_ALLOWED = {"variant", "image_size", "pool_type", "out_dim", "temperature_init", "render",
            "width", "depth", "mlp_dim", "num_heads", "patch_size", "text_tokens"}
_MODEL_CONFIGS = {}


def _check(name, cfg):
    if not isinstance(cfg, dict):
        raise ValueError(f"model config {name!r} must be a JSON object")
    unknown = set(cfg) - _ALLOWED
    if unknown:
        raise ValueError(f"model config {name!r} has unknown keys {sorted(unknown)}")
    decode_variant(cfg.get("variant"))  # raises ValueError on a bad variant
    return cfg


def add_model_config(path_or_dir):
    """Register every *.json in a directory (or one file); the file stem is the model name."""
    path = Path(path_or_dir)
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    for f in files:
        _MODEL_CONFIGS[f.stem] = _check(f.stem, json.loads(f.read_text()))


def list_models():
    """Names accepted by create_model (besides plain variants such as "B/16")."""
    return sorted(_MODEL_CONFIGS)


def get_model_config(name):
    """A copy of the named config; a variant string ("B/16") gives the CLIPPO defaults."""
    if name in _MODEL_CONFIGS:
        return copy.deepcopy(_MODEL_CONFIGS[name])
    try:
        decode_variant(name)
    except ValueError:
        raise ValueError(f"unknown model {name!r}: use one of {list_models()} or a ViT "
                         f"variant such as 'B/16'") from None
    return {"variant": name}  # everything else: CLIPPO's own defaults


def create_model(name="clippo-B-16", pretrained=None, device=None, **overrides):
    """Build a CLIPPO model by config name or variant; keyword arguments override the config.

    pretrained: a big_vision .npz or a save_pretrained directory; the checkpoint's shapes
    must then match the config. Its text_tokens setting is kept unless text_tokens is given
    (it changes which tokens are encoded, not the weights). device="meta" builds without
    allocating.
    """
    text_tokens = overrides.get("text_tokens")
    cfg = get_model_config(name)
    if "patch_size" not in decode_variant(cfg.get("variant")) and "patch_size" not in {
            **cfg, **overrides}:
        raise ValueError(f"model {name!r} needs a patch size: use a variant like 'B/16'")
    render = {**cfg.pop("render", {}), **overrides.pop("render", {})}
    cfg.update(overrides)
    variant = cfg.pop("variant", None)
    if pretrained is not None:  # the checkpoint supplies the weights: build without init
        device_ctx, target = torch.device("meta"), device
    else:
        device_ctx, target = torch.device(device or "cpu"), None
    with device_ctx:
        model = CLIPPO(variant, render=render, **cfg)
    if pretrained is not None:
        loaded = (CLIPPO.from_big_vision(pretrained, render=model.render_config)
                  if str(pretrained).endswith(".npz") else CLIPPO.from_pretrained(pretrained))
        free = ("temperature_init", "text_tokens")
        want = {k: v for k, v in model.config.items() if k not in free}
        got = {k: v for k, v in loaded.config.items() if k not in free}
        if want != got:
            diff = {k: (want[k], got.get(k)) for k in want if want[k] != got.get(k)}
            raise ValueError(f"checkpoint {pretrained} does not match model {name!r}: "
                             f"(config, checkpoint) = {diff}")
        model = loaded
        if text_tokens is not None:
            model.text_tokens = text_tokens
    return model.to(target) if target is not None else model


add_model_config(CONFIG_DIR)
