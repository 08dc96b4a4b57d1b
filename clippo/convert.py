"""big_vision .npz <-> CLIPPO, and the save_pretrained format (safetensors + config.json).

Every torch parameter maps to one big_vision leaf: the module path with "." -> "/",
"weight" -> "kernel" (Dense, Conv) or "scale" (LayerNorm), under "img/" (plus "t"). Layouts:

    Conv      kernel (P, P, 3, D) HWIO         <-> weight [D, 3, P, P]
    Dense     kernel (in, out)                 <-> weight [out, in]
    q/k/v     kernel (D, H, Dh), bias (H, Dh)  <-> weight [H*Dh, D], bias [H*Dh]
    out       kernel (H, Dh, D)                <-> weight [D, H*Dh]

Loading builds the model on the meta device and assigns tensors that are views of the arrays
np.load just read (a reshape/transpose, no copy), so a checkpoint costs about one copy of
its parameters in memory. The conv kernel is the one leaf made contiguous (it is small, and
the patch-embedding kernel wants a dense weight).

CLI: `clippo convert in.npz out_dir` (see `main`).
"""
import json
import math
import os
import uuid
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from clippo.model.vit import MultiHeadDotProductAttention

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


# -- the leaf mapping ---------------------------------------------------------------------

class _Leaf:
    """One parameter: its big_vision path and the layout change in each direction."""

    def __init__(self, torch_name, bv_path, to_torch, to_bv):
        self.torch_name, self.bv_path = torch_name, bv_path
        self.to_torch, self.to_bv = to_torch, to_bv


def _identity(x):
    return x


def _leaves(model):
    """[_Leaf] for every parameter of `model` (a CLIPPO), in state_dict order."""
    leaves = []
    for mod_name, mod in model.named_modules():
        parent = mod_name.rpartition(".")[0]
        parent_mod = model.get_submodule(parent) if mod_name else None
        for pname, p in mod.named_parameters(recurse=False):
            tname = f"{mod_name}.{pname}" if mod_name else pname
            leaf = pname
            to_torch = to_bv = _identity
            shape = tuple(p.shape)
            if isinstance(mod, nn.LayerNorm):
                leaf = {"weight": "scale", "bias": "bias"}[pname]
            elif isinstance(mod, nn.Conv2d) and pname == "weight":
                leaf = "kernel"
                to_torch = lambda a: a.permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW
                to_bv = lambda t: t.permute(2, 3, 1, 0)
            elif (isinstance(mod, nn.Linear)
                  and isinstance(parent_mod, MultiHeadDotProductAttention)):
                h, dh = parent_mod.num_heads, parent_mod.head_dim
                if mod_name.endswith(".out"):
                    if pname == "weight":
                        leaf = "kernel"
                        to_torch = lambda a, s=shape: a.reshape(s[1], s[0]).t()
                        to_bv = lambda t, h=h, dh=dh: t.t().reshape(h, dh, -1)
                else:
                    if pname == "weight":
                        leaf = "kernel"
                        to_torch = lambda a, s=shape: a.reshape(s[1], s[0]).t()
                        to_bv = lambda t, h=h, dh=dh: t.t().reshape(-1, h, dh)
                    else:
                        to_torch = lambda a: a.reshape(-1)
                        to_bv = lambda t, h=h, dh=dh: t.reshape(h, dh)
            elif isinstance(mod, nn.Linear) and pname == "weight":
                leaf = "kernel"
                to_torch = lambda a: a.t()
                to_bv = lambda t: t.t()
            bv_path = "/".join(([mod_name.replace(".", "/")] if mod_name else []) + [leaf])
            leaves.append(_Leaf(tname, bv_path, to_torch, to_bv))
    return leaves


def _bv_shape(leaf, param):
    return tuple(leaf.to_bv(torch.empty(param.shape, device="meta")).shape)


# -- reading a big_vision checkpoint ------------------------------------------------------

_SCANNED = "img/Transformer/encoderblock/"


class _Checkpoint:
    """The model arrays of a big_vision .npz, by path without "params/", read on demand.

    opt/ entries (optimizer state) are skipped unread. A scanned encoder (big_vision's
    scan=True: img/Transformer/encoderblock/... stacked on a leading depth axis) is presented
    as encoderblock_{i} leaves, each a view into the stacked array.
    """

    def __init__(self, path):
        try:
            npz = np.load(path, allow_pickle=False)  # never unpickle a checkpoint
        except (ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            # (a missing file stays FileNotFoundError)
            raise ValueError(f"cannot read {path} as a .npz checkpoint: {e}") from e
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError(f"{path} holds a single array, not a .npz checkpoint")
        self.npz, self._stacked = npz, {}
        self.entries = {}  # name -> (npz key, index into the scan axis or None)
        members = set(npz.zip.namelist())
        self._member = {k: k + ".npy" if k + ".npy" in members else k for k in npz.files}
        for key in npz.files:
            if key == "opt" or key.startswith("opt/"):
                continue
            name = key[len("params/"):] if key.startswith("params/") else key
            if name.startswith(_SCANNED):
                rest = name[len(_SCANNED):]
                shape = self._header(key)
                if not shape:
                    raise ValueError(f"scanned checkpoint entry {key!r} has no layer axis")
                names = [(f"img/Transformer/encoderblock_{i}/{rest}", (key, i))
                         for i in range(shape[0])]
            else:
                names = [(name, (key, None))]
            for n, where in names:
                if n in self.entries:
                    raise ValueError(f"checkpoint holds {n!r} twice ({self.entries[n][0]!r} "
                                     f"and {key!r})")
                self.entries[n] = where

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stacked.clear()
        self.npz.close()

    def key(self, name):
        key, i = self.entries[name]
        return key if i is None else f"{key}[{i}]"

    def _header(self, key):
        """Array shape from the .npy header, without reading the data."""
        from numpy.lib import format as npformat
        with self.npz.zip.open(self._member[key]) as f:
            version = npformat.read_magic(f)
            read = (npformat.read_array_header_1_0 if version == (1, 0)
                    else npformat.read_array_header_2_0)
            shape, _, _ = read(f)
        return tuple(shape)

    def shape(self, name):
        key, i = self.entries[name]
        shape = self._header(key)
        return shape if i is None else shape[1:]

    def read(self, name):
        key, i = self.entries[name]
        if key in self._stacked:
            arr = self._stacked[key]
        else:
            try:
                arr = self.npz[key]
            except ValueError as e:  # object arrays are refused by allow_pickle=False
                raise ValueError(f"checkpoint entry {key!r} cannot be loaded without "
                                 f"unpickling (refused): {e}") from None
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
                raise ValueError(f"checkpoint entry {key!r} is damaged: {e}") from None
            if arr.dtype.kind != "f":
                raise ValueError(f"checkpoint entry {key!r} has dtype {arr.dtype}, "
                                 f"expected floats")
            if arr.dtype != np.float32:  # also fixes a non-native byte order
                arr = arr.astype(np.float32)
            if i is not None:
                self._stacked[key] = arr  # read once, sliced per layer
        return arr if i is None else arr[i]


def _need(entries, name):
    if name not in entries:
        raise KeyError(f"checkpoint is missing {name!r} (needed to infer the architecture)")
    return entries[name]


def infer_config(ckpt, pool_type=None):
    """The CLIPPO config (as `model.config`) implied by the checkpoint's array shapes."""
    entries = ckpt.entries

    def shape(name):
        _need(entries, name)
        return ckpt.shape(name)
    p0, p1, c, width = _checked(shape("img/embedding/kernel"), 4, "img/embedding/kernel")
    if p0 != p1 or c != 3:
        raise ValueError(f"img/embedding/kernel has shape {(p0, p1, c, width)}; expected "
                         f"(P, P, 3, D) with a square patch")
    _, n, _ = _checked(shape("img/pos_embedding"), 3, "img/pos_embedding")
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"img/pos_embedding has {n} positions, not a square grid")
    depth = 0
    while f"img/Transformer/encoderblock_{depth}/LayerNorm_0/scale" in entries:
        depth += 1
    if depth == 0:
        _need(entries, "img/Transformer/encoderblock_0/LayerNorm_0/scale")
    blk = "img/Transformer/encoderblock_0"
    _, heads, head_dim = _checked(shape(f"{blk}/MultiHeadDotProductAttention_0/query/kernel"), 3,
                                  f"{blk}/MultiHeadDotProductAttention_0/query/kernel")
    _, mlp_dim = _checked(shape(f"{blk}/MlpBlock_0/Dense_0/kernel"), 2,
                          f"{blk}/MlpBlock_0/Dense_0/kernel")
    if heads * head_dim != width:
        raise ValueError(f"{blk}/MultiHeadDotProductAttention_0/query/kernel: heads x head_dim "
                         f"= {heads}x{head_dim} does not equal the width {width}")
    has_map = any(e.startswith("img/MAPHead_0/") for e in entries)
    if pool_type is None:
        pool_type = "map" if has_map else "gap"
    out_dim = None
    if "img/head/kernel" in entries:
        out_dim = _checked(shape("img/head/kernel"), 2, "img/head/kernel")[1]
    return dict(variant=None, width=width, depth=depth, mlp_dim=mlp_dim, num_heads=heads,
                patch_size=p0, pool_type=pool_type, image_size=side * p0, out_dim=out_dim,
                temperature_init=10.0)


def _checked(shape, ndim, name):
    if len(shape) != ndim:
        raise ValueError(f"{name} has shape {shape}, expected {ndim} dimensions")
    return shape


def _state_dict_from_checkpoint(model, ckpt):
    """{torch name: tensor} for `model`, checking that keys and shapes match exactly."""
    entries = ckpt.entries
    leaves = _leaves(model)
    params = dict(model.named_parameters())
    expected = {leaf.bv_path for leaf in leaves}
    missing = sorted(expected - set(entries))
    extra = sorted(set(entries) - expected)
    if missing:
        raise KeyError(f"checkpoint is missing {len(missing)} entries: "
                       + ", ".join(f"params/{m}" for m in missing[:10]))
    if extra:
        raise ValueError(f"checkpoint has {len(extra)} entries this model does not use: "
                         + ", ".join(ckpt.key(e) for e in extra[:10]))
    state = {}
    for leaf in leaves:
        want = _bv_shape(leaf, params[leaf.torch_name])
        got = ckpt.shape(leaf.bv_path)
        if got != want:
            raise ValueError(f"checkpoint entry {ckpt.key(leaf.bv_path)!r} has shape {got}, "
                             f"expected {want}")
        state[leaf.torch_name] = leaf.to_torch(torch.from_numpy(ckpt.read(leaf.bv_path)))
    return state


def load_big_vision(path, model_cls, *, render=None, pool_type=None, device=None):
    """A `model_cls` (CLIPPO) from a big_vision .npz (params/ prefix optional, opt/ entries
    ignored, scanned or unscanned encoder). The model class is passed in, not imported: the
    model calls this module, never the other way round."""
    with _Checkpoint(path) as ckpt:
        config = infer_config(ckpt, pool_type)
        if config["out_dim"] is None:
            raise KeyError("checkpoint is missing 'params/img/head/kernel': a CLIPPO model "
                           "projects to out_dim with a Dense head")
        _need(ckpt.entries, "t")
        if render is not None:
            config["render"] = render
        model = model_cls.from_config(config, device="meta")
        state = _state_dict_from_checkpoint(model, ckpt)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device) if device is not None else model


# -- writing ------------------------------------------------------------------------------

def _atomic_write(path, write):
    """write(temp path) next to path, then rename over path: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # umask applies
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def big_vision_arrays(model):
    """{"params/...": float32 array} in big_vision layout."""
    params = dict(model.named_parameters())
    out = {}
    for leaf in _leaves(model):
        t = leaf.to_bv(params[leaf.torch_name].detach()).to("cpu", torch.float32)
        out["params/" + leaf.bv_path] = np.ascontiguousarray(t.numpy())
    return out


def save_big_vision(model, path):
    arrays = big_vision_arrays(model)

    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, **arrays)
    _atomic_write(path, write)


def save_pretrained(model, directory):
    from safetensors.torch import save_file

    directory = Path(directory)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    _atomic_write(directory / WEIGHTS_NAME,
                  lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    config = json.dumps(model.config, indent=2) + "\n"
    _atomic_write(directory / CONFIG_NAME, lambda tmp: tmp.write_text(config))


def pretrained_dir(directory):
    """The save_pretrained directory meant by `directory`: itself, or its model/ folder when
    it is a `clippo train` output folder (which holds the final model there)."""
    directory = Path(directory)
    if not (directory / CONFIG_NAME).exists() and (directory / "model" / CONFIG_NAME).exists():
        return directory / "model"
    return directory


def load_pretrained(directory, model_cls, device=None):
    from safetensors import safe_open

    directory = pretrained_dir(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} not found (written by save_pretrained)")
    config = json.loads((directory / CONFIG_NAME).read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{directory / CONFIG_NAME} must hold a JSON object")
    try:
        model = model_cls.from_config(config, device="meta")
    except (TypeError, ValueError) as e:
        raise ValueError(f"{directory / CONFIG_NAME}: {e}") from None
    params = dict(model.named_parameters())
    with safe_open(directory / WEIGHTS_NAME, framework="pt", device=str(device or "cpu")) as f:
        keys = set(f.keys())
        missing, extra = sorted(set(params) - keys), sorted(keys - set(params))
        if missing:
            raise KeyError(f"{directory / WEIGHTS_NAME} is missing {missing[:10]}")
        if extra:
            raise ValueError(f"{directory / WEIGHTS_NAME} has unexpected tensors {extra[:10]}")
        state = {}
        for k in params:
            t = f.get_tensor(k)
            if t.shape != params[k].shape:
                raise ValueError(f"tensor {k!r} has shape {tuple(t.shape)}, expected "
                                 f"{tuple(params[k].shape)}")
            state[k] = t
    model.load_state_dict(state, strict=True, assign=True)
    return model
