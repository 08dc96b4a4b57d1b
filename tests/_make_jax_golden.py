"""Regenerate tests/data/jax_small*.npz: a small CLIPPO run through the real big_vision code.

Not part of the test run (it needs jax, flax and a big_vision checkout). Run as

    PYTHONPATH=<dir holding big_vision/> python tests/_make_jax_golden.py tests/data

with big_vision/models/vit.py and models/proj/clippo/one_tower.py from the reference repo;
big_vision/utils.py and models/common.py may be empty stubs (only the model classes are used).
Writes jax_small.npz (the checkpoint, big_vision layout, as np.savez of "params/..." names)
and jax_small_io.npz (uint8 NCHW inputs and the float32 outputs JAX computed for them), and
the same for a scanned encoder (jax_small_scan*.npz).
"""
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from big_vision.models.proj.clippo import one_tower

CONFIG = dict(width=32, depth=2, mlp_dim=48, num_heads=2, patch_size=(8, 8), pool_type="map",
              head_zeroinit=False)
OUT_DIM, IMAGE = 24, 32


def make(out_dir, name, config):
    model = one_tower.Model(image=config, out_dim=OUT_DIM)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 3, IMAGE, IMAGE), dtype=np.uint8)  # NCHW, as torch
    texts = rng.integers(0, 256, (3, 3, IMAGE, IMAGE), dtype=np.uint8)
    to_jax = lambda x: jnp.asarray(x.transpose(0, 2, 3, 1), jnp.float32) / 255 * 2 - 1
    params = model.init(jax.random.PRNGKey(0), to_jax(images), to_jax(texts))["params"]
    # Init leaves biases at ~0 and LayerNorm scales at 1, which would hide layout errors in
    # those leaves: add noise to every leaf.
    flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    flat = {k: (np.asarray(v) + 0.2 * rng.normal(size=v.shape)).astype(np.float32)
            for k, v in flat.items()}
    params = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
    zimg, ztxt, out = model.apply({"params": params}, to_jax(images), to_jax(texts))
    with open(out_dir / f"{name}.npz", "wb") as f:
        np.savez(f, **{f"params/{k}": v for k, v in flat.items()})
    with open(out_dir / f"{name}_io.npz", "wb") as f:
        np.savez(f, images=images, texts=texts, zimg=np.asarray(zimg), ztxt=np.asarray(ztxt),
                 temperature=np.asarray(out["t"]),
                 img_pre_logits=np.asarray(out["img/pre_logits"]),
                 img_logits=np.asarray(out["img/logits"]))
    n = sum(v.size for v in flat.values())
    print(f"wrote {out_dir}/{name}.npz ({len(flat)} leaves, {n} parameters)")


def main(out_dir):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    make(out_dir, "jax_small", CONFIG)
    # scan=True stacks the blocks on a leading axis under Transformer/encoderblock/
    make(out_dir, "jax_small_scan", {**CONFIG, "scan": True})

    # The B/16 layout, from shapes only: leaf count and parameter count for the facts file.
    b16 = one_tower.Model(image=dict(variant="B/16", pool_type="map", head_zeroinit=False),
                          out_dim=768)
    shapes = jax.eval_shape(b16.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), None)
    leaves = traverse_util.flatten_dict(shapes["params"], sep="/")
    print(f"B/16: {len(leaves)} leaves, {sum(int(np.prod(v.shape)) for v in leaves.values())} "
          f"parameters")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "data")
