"""Training checkpoints: written atomically, found again by `--resume latest`.

A checkpoint is one file OUTPUT/checkpoints/step_<8-digit step>.pt (torch.save of a dict of
tensors and plain values, loadable with weights_only=True). It is written to a temporary file
in the same directory (a name starting with "." that never matches step_*.pt), flushed and
fsync'ed, then renamed over the final name with os.replace, and the directory is fsync'ed. So
a kill -9 or a full disk mid-write leaves at most a temporary file, which `latest` never
considers; `latest` takes the highest step among the step_*.pt files that load, skipping (with
a warning) any that do not, such as one truncated by a failing disk.
"""
import os
import random
import re
import uuid
import warnings
from pathlib import Path

import numpy as np
import torch

FORMAT = "clippo-train-checkpoint"
VERSION = 1
_NAME = re.compile(r"^step_(\d{8,})\.pt$")
_TEMP = re.compile(r"^\.step_\d+\.pt\.tmp-")


def checkpoint_name(step):
    return f"step_{step:08d}.pt"


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename is still atomic
    finally:
        os.close(fd)


def atomic_save(obj, path):
    """torch.save(obj) to `path` through a temporary file + fsync + os.replace.

    On any error the temporary file is removed and the error re-raised; `path` is then either
    absent or the complete previous file.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def list_checkpoints(directory):
    """[(step, path)] of the step_*.pt files in directory, oldest first (not checked)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        m = _NAME.match(entry.name)
        if m and entry.is_file():
            found.append((int(m.group(1)), entry))
    return sorted(found)


def load_checkpoint(path):
    """Load a checkpoint file onto the CPU; ValueError if it is not a complete one."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} not found") from None
    except Exception as e:  # truncated zip, unpickling error, ...
        raise ValueError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a clippo training checkpoint")
    if ckpt.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint version {ckpt.get('version')} is not supported "
                         f"(this clippo reads version {VERSION})")
    return ckpt


def find_latest(directory):
    """(path, checkpoint) of the newest checkpoint that loads, or (None, None)."""
    for step, path in reversed(list_checkpoints(directory)):
        try:
            ckpt = load_checkpoint(path)
        except (OSError, ValueError) as e:
            warnings.warn(f"skipping unreadable checkpoint: {e}", stacklevel=2)
            continue
        if ckpt.get("step") != step:
            warnings.warn(f"skipping {path}: it holds step {ckpt.get('step')}", stacklevel=2)
            continue
        return path, ckpt
    return None, None


def prune(directory, keep):
    """Delete all but the newest `keep` checkpoints (keep=0: delete none)."""
    if not keep:
        return
    for _, path in list_checkpoints(directory)[:-keep]:
        try:
            path.unlink()
        except OSError as e:
            warnings.warn(f"could not delete old checkpoint {path}: {e}", stacklevel=2)


def remove_temporaries(directory):
    """Delete temporary files that a writer killed mid-save left behind (call before saving)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if _TEMP.match(entry.name):
            try:
                entry.unlink()
            except OSError:
                pass


# -- random number generator states ------------------------------------------------------------

def rng_state():
    """This process's RNG states (python, numpy, torch, CUDA) as checkpoint-safe values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.uint32).view(np.int32).copy()),
                  int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().view(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
