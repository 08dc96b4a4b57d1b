"""Checkpoint files: atomic writes, what `--resume latest` picks, pruning, RNG round trips."""
import errno
import os
import random

import numpy as np
import pytest
import torch

from clippo.train import checkpoint as ck


def _payload(step):
    return {"format": ck.FORMAT, "version": ck.VERSION, "step": step,
            "weights": torch.arange(1000, dtype=torch.float32) * step}


def test_latest_skips_temporaries_and_truncated_files(tmp_path):
    for step in (4, 8):
        ck.atomic_save(_payload(step), tmp_path / ck.checkpoint_name(step))
    # what a writer killed mid-save leaves: a temporary name, half the bytes of a real file
    good = (tmp_path / ck.checkpoint_name(8)).read_bytes()
    (tmp_path / f".{ck.checkpoint_name(16)}.tmp-999-abcd").write_bytes(good[: len(good) // 2])
    (tmp_path / f"{ck.checkpoint_name(20)}.tmp").write_bytes(good)  # not a checkpoint name
    # a final name whose contents were cut short (a failing disk): skipped with a warning
    (tmp_path / ck.checkpoint_name(12)).write_bytes(good[: len(good) - 100])
    with pytest.warns(UserWarning, match="step_00000012.pt"):
        path, ckpt = ck.find_latest(tmp_path)
    assert path.name == ck.checkpoint_name(8) and ckpt["step"] == 8
    torch.testing.assert_close(ckpt["weights"], torch.arange(1000, dtype=torch.float32) * 8)
    ck.remove_temporaries(tmp_path)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    assert ck.find_latest(tmp_path / "missing") == (None, None)


def test_failed_write_leaves_previous_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / ck.checkpoint_name(4)
    ck.atomic_save(_payload(4), target)
    before = target.read_bytes()

    def disk_full(obj, f):
        f.write(b"x" * 4096)  # part of the file made it to disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", disk_full)
    with pytest.raises(OSError) as e:
        ck.atomic_save(_payload(4), target)
    assert e.value.errno == errno.ENOSPC
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == [ck.checkpoint_name(4)]


def test_other_files_and_wrong_format_are_rejected(tmp_path):
    torch.save({"step": 3}, tmp_path / ck.checkpoint_name(3))
    with pytest.raises(ValueError, match="not a clippo training checkpoint"):
        ck.load_checkpoint(tmp_path / ck.checkpoint_name(3))
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot be read"):
        ck.load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        ck.load_checkpoint(tmp_path / "none.pt")


def test_prune_keeps_the_newest(tmp_path):
    for step in (1, 2, 3, 10):
        ck.atomic_save(_payload(step), tmp_path / ck.checkpoint_name(step))
    ck.prune(tmp_path, 0)
    assert len(ck.list_checkpoints(tmp_path)) == 4
    ck.prune(tmp_path, 2)
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [3, 10]


def test_rng_state_round_trip_through_a_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.random(), np.random.normal(), torch.rand(1)
    state = ck.rng_state()
    ck.atomic_save({**_payload(1), "rng": state}, tmp_path / "r.pt")
    want = (random.random(), np.random.normal(size=3).tolist(), torch.rand(3).tolist())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ck.set_rng_state(ck.load_checkpoint(tmp_path / "r.pt")["rng"])
    got = (random.random(), np.random.normal(size=3).tolist(), torch.rand(3).tolist())
    assert got == want
