"""`torchrun --nproc_per_node 2 -m clippo.train` on the CPU (gloo): the ranks train one model
on disjoint data over the global batch and rank 0 writes the outputs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from clippo.train import checkpoint as ck

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")


def test_torchrun_two_processes(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "clippo.train", "--train-data", "builtin", "--train-num-samples", "64",
           "--model", "mu/8", "--image-size", "32", "--out-dim", "16", "--batch-size", "4",
           "--steps", "3", "--log-every", "1", "--save-every", "2", "--workers", "0",
           "--accum-freq", "2",
           "--no-progress", "--device", "cpu", "--output", str(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cpu x2" in done.stderr
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]
    assert all(r["batch_size"] == 8 for r in lines)  # the global batch: 2 ranks x 4
    ckpt = ck.load_checkpoint(tmp_path / "checkpoints" / ck.checkpoint_name(3))
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == len(ckpt["data"]) == 2
    # each rank has its own data stream at the same position
    assert ckpt["rng"][0]["torch"].tolist() != ckpt["rng"][1]["torch"].tolist()
    assert (tmp_path / "model" / "model.safetensors").is_file()

    # step 1's loss is the single-process loss over both ranks' batches together
    import torch

    from clippo.data.builtin import BuiltinImageText
    from clippo.loss import clip_loss
    from clippo.train.data import ShardedBatchSampler
    from clippo.train.main import _seed_everything, build_model
    from clippo.train.params import parse_args
    _seed_everything(0)
    model = build_model(parse_args(cmd[cmd.index("clippo.train") + 1:]))
    data = BuiltinImageText("train", num_samples=64, image_size=32, seed=0)
    items = [data[i] for r in range(2) for i in ShardedBatchSampler(64, 4, r, 2, 0).batch(0)]
    with torch.no_grad():
        zimg = model.encode_image(torch.stack([im for im, _ in items]))
        ztxt = model.encode_text([t for _, t in items])
        want = clip_loss(zimg, ztxt, model.temperature).item()
    assert lines[0]["loss"] == pytest.approx(want, rel=1e-5)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [ck.checkpoint_name(2),
                                                            ck.checkpoint_name(3)]


def _rank_pid(parent, rank):
    """The pid of torchrun's worker process with RANK=rank, or None yet."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != parent:
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    import signal
    import time
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "clippo.train", "--train-data", "builtin", "--train-num-samples", "64",
           "--model", "mu/8", "--image-size", "32", "--out-dim", "16", "--batch-size", "4",
           "--steps", "10", "--log-every", "1", "--save-every", "100", "--workers", "0",
           "--no-progress", "--device", "cpu", "--output", str(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    agent = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.monotonic() + 180
    try:
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
            assert agent.poll() is None, agent.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.02)
        os.kill(_rank_pid(agent.pid, 1), signal.SIGTERM)  # rank 1 only: rank 0 learns of it
        _, err = agent.communicate(timeout=120)
    finally:
        if agent.poll() is None:
            agent.kill()
    saved = ck.list_checkpoints(tmp_path / "checkpoints")
    assert len(saved) == 1, err[-3000:]
    step = saved[0][0]
    assert 2 <= step < 10 and f"stopped by SIGTERM after step {step} of 10" in err
    ckpt = ck.load_checkpoint(saved[0][1])
    assert len(ckpt["data"]) == 2  # both ranks' data positions, of the same step
    assert [json.loads(x)["step"] for x in metrics.read_text().splitlines()] == \
        list(range(1, step + 1))
