"""A rehearsal of a real multi-process run, launched as a user launches it:

    torchrun --nproc_per_node 2 --max-restarts 1 -m clippo.train --train-data 'shards/...'
        --text-pairs pairs.txt --accum-freq 2 --resume latest ...

on WebDataset shards written here from real photos (scikit-learn's handwritten digits,
upscaled, captioned with the digit's name in four languages), with a corrupt shard, samples
whose photo is missing or undecodable, and text pairs. One rank is killed with SIGKILL mid-run;
torchrun restarts the group, which continues from the last checkpoint. Then:

- the metrics and final weights equal an uninterrupted run's (bit for bit);
- the skipped counts equal the bad samples the steps met (one epoch: all of them, once);
- a 1-process run over the same global batches (batch 8 x accum 2 instead of 4 x 2 x 2
  processes) gives every step's loss and the final weights within float32 rounding;
- the checkpoint of step 2 resumed on 1 and on 4 processes (keeping the global batch) gives
  the uninterrupted run's losses for the remaining steps within float32 rounding and the same
  skipped counts: every step takes the same samples, so the epoch is seen exactly once.

CPU, gloo, a tiny model. Select with `pytest -m rehearsal`.
"""
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from _procs import finish
from clippo.train import checkpoint as ck
from _run_metrics import metrics as _metrics

ROOT = Path(__file__).resolve().parents[1]
NAMES = {"en": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
         "de": ["null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht",
                "neun"],
         "fr": ["zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"],
         "ru": ["ноль", "один", "два", "три", "четыре", "пять", "шесть", "семь", "восемь",
                "девять"]}
LANGS = list(NAMES)
SHARDS, PER_SHARD = 4, 18  # 72 samples: one epoch is 6 steps of 12 image-text samples
STEPS = 6  # one epoch
TINY = ["--model", "Ti/16", "--width", "32", "--depth", "1", "--heads", "2", "--mlp-dim", "64",
        "--image-size", "32", "--patch-size", "16", "--out-dim", "16", "--lr", "1e-3",
        "--warmup", "2", "--steps", str(STEPS), "--save-every", "2", "--log-every", "1",
        "--workers", "0", "--no-progress", "--device", "cpu", "--seed", "11",
        "--text-pair-fraction", "0.25"]

pytestmark = [
    pytest.mark.rehearsal,
    pytest.mark.filterwarnings("ignore:'set_vital' is deprecated"),
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                       reason="needs torch.distributed with gloo"),
]


def _png(pixels):
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _write_data(root):
    """Shards of digit photos, a corrupt shard and a text-pair file -> (pattern, text-pair
    file, number of bad samples)."""
    from PIL import Image
    from sklearn.datasets import load_digits
    digits = load_digits()
    bad, k = 0, 0
    for s in range(SHARDS):
        with tarfile.open(root / f"digits-{s:04d}.tar", "w") as tar:
            for i in range(PER_SHARD):
                gray = (digits.images[k] * (255 / 16)).astype(np.uint8)
                photo = np.asarray(Image.fromarray(gray).resize((40, 40), Image.BILINEAR))
                label = int(digits.target[k])
                members = {"txt": f"{NAMES[LANGS[k % 4]][label]}".encode()}
                if k % 9 == 4:  # the photo is missing
                    bad += 1
                elif k % 9 == 7:  # the photo cannot be decoded
                    members["png"] = b"\x89PNG\r\n\x1a\n not really"
                    bad += 1
                else:
                    members["png"] = _png(np.stack([photo] * 3, axis=-1))
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{k:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                k += 1
    # a corrupt shard: no sample can be read from it (a warning, nothing to count)
    (root / f"digits-{SHARDS:04d}.tar").write_bytes(os.urandom(5000))
    pairs = []
    for d in range(10):
        for lang in LANGS:
            word = NAMES[lang][d]
            pairs += [f"{word} = {d}", f"{word} + 1 = {d + 1}", ""]
    (root / "pairs.txt").write_text("\n".join(pairs), encoding="utf-8")
    return str(root / f"digits-{{0000..{SHARDS:04d}}}.tar"), str(root / "pairs.txt"), bad


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _write_data(tmp_path_factory.mktemp("digits"))


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _cmd(nproc, out, data, batch, *extra):
    pattern, pairs, _ = data
    flags = ["--train-data", pattern, "--text-pairs", pairs, "--batch-size", str(batch),
             "--accum-freq", "2", "--output", str(out), *TINY, *extra]
    if nproc == 1:
        return [sys.executable, "-m", "clippo.train", *flags]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            str(nproc), "--max-restarts", "1", "-m", "clippo.train", *flags]


def _start(cmd):
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _finish(proc, timeout=150):
    code, out = finish(proc, timeout)  # kills torchrun and its workers on a timeout
    assert code is not None, f"timed out:\n{out[-3000:]}"
    assert code == 0, out[-4000:]
    return out


def _weights(out):
    from safetensors.torch import load_file
    return load_file(Path(out) / "model" / "model.safetensors")


def _rank_pids(agent_pid, rank):
    """The pid of the torchrun worker with RANK=rank (a child of the agent)."""
    children = Path(f"/proc/{agent_pid}/task/{agent_pid}/children").read_text().split()
    for pid in children:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    return None


def test_rehearsal_kill_restart_and_other_world_sizes(tmp_path, data):
    bad = data[2]
    ref_dir, killed_dir, single_dir = tmp_path / "ref", tmp_path / "killed", tmp_path / "one"
    # the uninterrupted run, the one whose rank 1 is killed once it wrote a checkpoint, and
    # one process over the same global batches (8 per micro-batch instead of 4 on 2 ranks)
    ref = _start(_cmd(2, ref_dir, data, 4))
    victim = _start(_cmd(2, killed_dir, data, 4, "--resume", "latest"))
    single = _start(_cmd(1, single_dir, data, 8))
    deadline = time.monotonic() + 150
    while not (killed_dir / "checkpoints").is_dir() or \
            not ck.list_checkpoints(killed_dir / "checkpoints"):
        assert victim.poll() is None, victim.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    pid = _rank_pids(victim.pid, 1)
    assert pid is not None, "rank 1 not found"
    os.kill(pid, signal.SIGKILL)
    log = _finish(victim, timeout=200)
    _finish(ref, timeout=200)
    assert "resumed from" in log, log[-3000:]  # torchrun brought the group back; it resumed
    killed_at = int(log.split("resumed from")[1].split("step_")[1][:8])
    assert 2 <= killed_at < STEPS

    want = _metrics(ref_dir)
    assert [r["step"] for r in want] == list(range(1, STEPS + 1))
    # (3 photos + 1 pair) x accum 2 x 2 processes, less the skipped samples
    assert [r["batch_size"] + r["skipped"] for r in want] == [16] * STEPS
    assert _metrics(killed_dir) == want
    a, b = _weights(ref_dir), _weights(killed_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # one epoch is 6 steps of 12 image-text samples: its skipped counts are the bad samples
    assert sum(r["skipped"] for r in want) == bad and [r["epoch"] for r in want] == [0] * 6

    # the step-2 checkpoint resumed on 1 process (batch 8) and on 4 (batch 2)
    resumed = {}
    for world in (1, 4):
        resumed[world] = tmp_path / f"resumed-{world}"
        shutil.copytree(ref_dir, resumed[world])
        for step in range(3, STEPS + 1):
            (resumed[world] / "checkpoints" / ck.checkpoint_name(step)).unlink(missing_ok=True)
        shutil.rmtree(resumed[world] / "model")
    runs = [_start(_cmd(world, resumed[world], data, 8 // world, "--resume", "latest"))
            for world in (1, 4)]
    logs = [_finish(p, timeout=240) for p in runs]
    assert all("no longer bit-exact" in log for log in logs)
    _finish(single, timeout=60)

    def close(got, rows):
        assert [r["step"] for r in got] == [r["step"] for r in rows]
        assert [r["skipped"] for r in got] == [r["skipped"] for r in rows]
        assert [r["batch_size"] for r in got] == [r["batch_size"] for r in rows]
        assert [r["epoch"] for r in got] == [r["epoch"] for r in rows]
        np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in rows],
                                   rtol=2e-5)

    assert len({r["loss"] for r in want}) == STEPS  # the losses move: several steps compared
    close(_metrics(single_dir), want)
    w1 = _weights(single_dir)
    for key in a:
        torch.testing.assert_close(w1[key], a[key], rtol=1e-4, atol=2e-5)
    for world in (1, 4):
        close(_metrics(resumed[world]), want)  # the same samples in every step, then
        got = _weights(resumed[world])
        for key in a:
            torch.testing.assert_close(got[key], a[key], rtol=1e-4, atol=2e-5)
