"""`--fsdp` (torch FSDP2 fully_shard) under `torchrun --nproc_per_node 2` on the CPU (gloo):
the same losses and final weights as DDP within float32 rounding (sigmoid loss, gradient
accumulation and checkpointing), full and sharded
checkpoints that resume exactly, and in-training evaluation split over the two ranks that
equals `clippo eval`."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from _eval_data import clippo_eval, write_eval_data
from safetensors.torch import load_file

from clippo.train import checkpoint as ck

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

TINY = ["--model", "Ti/16", "--width", "32", "--depth", "2", "--heads", "2", "--mlp-dim", "64",
        "--image-size", "32", "--patch-size", "16"]


def torchrun(out, *extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "clippo.train", "--train-data", "builtin", "--train-num-samples", "64",
           *TINY, "--batch-size", "4", "--steps", "4", "--log-every", "1", "--save-every", "1",
           # the sigmoid loss's 0-dim bias is not sharded (fully_shard cannot): its gradient
           # is averaged by clippo.train.fsdp; accumulation and recomputed blocks on top
           "--loss", "sigmoid", "--accum-freq", "2", "--grad-checkpointing", "--workers", "0", "--no-progress", "--device", "cpu", "--output", str(out), *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def records(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def losses(out):
    return [(r["step"], r["loss"]) for r in records(out) if "loss" in r]


def weights(out):
    return load_file(out / "model" / "model.safetensors")


def back_to_step(src, dst, step):
    """A copy of run `src` as a run stopped after checkpoint `step` would have left it."""
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "model")
    for path in (dst / "checkpoints").iterdir():
        if int(path.name[5:13]) > step:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """ddp and fsdp: 4 steps each, evaluating every 2; resumed-full: fsdp's copy at step 2
    resumed from its full checkpoint, writing sharded ones; resumed-sharded: that copy at
    step 3 resumed from its sharded checkpoint."""
    tmp = tmp_path_factory.mktemp("fsdp")
    val_csv, _ = write_eval_data(tmp / "data", num_zeroshot=0)
    evaluation = ["--val-data", str(val_csv), "--zeroshot-data", "builtin", "--eval-every", "2"]
    out = {"tmp": tmp, "val_csv": val_csv}
    out["ddp"] = tmp / "ddp"
    torchrun(out["ddp"], *evaluation)
    out["fsdp"] = tmp / "fsdp"
    done = torchrun(out["fsdp"], "--fsdp", *evaluation)
    assert "cpu x2" in done.stderr
    out["resumed-full"] = tmp / "resumed-full"
    back_to_step(out["fsdp"], out["resumed-full"], 2)
    out["resumed-full-log"] = torchrun(out["resumed-full"], "--fsdp", "--fsdp-checkpoint",
                                       "sharded", "--resume", "latest").stderr
    out["resumed-sharded"] = tmp / "resumed-sharded"
    back_to_step(out["resumed-full"], out["resumed-sharded"], 3)
    out["resumed-sharded-log"] = torchrun(out["resumed-sharded"], "--fsdp", "--fsdp-checkpoint",
                                          "sharded", "--resume", "latest").stderr
    return out


def test_fsdp_follows_ddp(runs):
    ddp, fsdp = runs["ddp"], runs["fsdp"]
    want, got = losses(ddp), losses(fsdp)
    assert [s for s, _ in got] == [1, 2, 3, 4]
    for (_, a), (_, b) in zip(want, got):
        assert b == pytest.approx(a, rel=1e-5)
    for a, b in zip([r for r in records(ddp) if "loss" in r], [r for r in records(fsdp)
                                                              if "loss" in r]):
        for key in ("grad_norm", "logit_scale", "logit_bias"):  # gathered from the shards
            assert b[key] == pytest.approx(a[key], rel=1e-4)
    wa, wb = weights(ddp), weights(fsdp)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5)
    # the full checkpoint has DDP's layout: the same tensors, the optimizer state included
    ca = ck.load_checkpoint(ddp / "checkpoints" / ck.checkpoint_name(4))
    cb = ck.load_checkpoint(fsdp / "checkpoints" / ck.checkpoint_name(4))
    assert ca["task"].keys() == cb["task"].keys()
    for k in ca["task"]:
        torch.testing.assert_close(cb["task"][k], ca["task"][k], rtol=1e-4, atol=1e-5)
    assert float(cb["task"]["loss.logit_bias"]) != -10.0  # the unsharded bias was trained
    assert ca["optimizer"]["param_groups"] == cb["optimizer"]["param_groups"]
    for i, state in ca["optimizer"]["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(cb["optimizer"]["state"][i][key], value, rtol=1e-4,
                                       atol=1e-6)
    # the training moved the weights: the comparison is not between two initialisations
    start = ck.load_checkpoint(fsdp / "checkpoints" / ck.checkpoint_name(2))["task"]
    assert not torch.equal(start["model.t"], cb["task"]["model.t"]) or any(
        not torch.equal(start[k], cb["task"][k]) for k in start)


def test_sharded_evaluation_equals_clippo_eval(runs, tmp_path):
    """Each rank encoded half the batches; the gathered numbers are clippo eval's."""
    run = runs["fsdp"]
    got = [r for r in records(run) if "val/loss" in r]
    assert [r["step"] for r in got] == [2, 4]
    want = clippo_eval(run / "model", runs["val_csv"], None, tmp_path)
    from clippo.eval.main import main as eval_main
    assert eval_main(["zeroshot", "--model", str(run), "--data", "builtin", "--quiet",
                      "--out", str(tmp_path / "zb.json")]) == 0
    zb = json.loads((tmp_path / "zb.json").read_text())["metrics"]
    want.update({f"zeroshot/{k}": zb[k] for k in ("acc1", "acc5", "mean_per_class_recall")})
    assert {k: got[-1][k] for k in want} == want
    ddp = [r for r in records(runs["ddp"]) if "val/loss" in r][-1]
    assert ddp["val/loss"] == pytest.approx(got[-1]["val/loss"], rel=1e-4)


@pytest.mark.parametrize("kind", ["full", "sharded"])
def test_fsdp_resume_is_exact(runs, kind):
    """Resumed from a full (step 2) or a sharded (step 3) checkpoint: the uninterrupted run's
    losses and final weights, bit for bit (the kind of checkpoint written does not matter)."""
    resumed = runs[f"resumed-{kind}"]
    step = 2 if kind == "full" else 3
    assert f"steps {step} -> 4; resumed from" in runs[f"resumed-{kind}-log"]
    assert losses(resumed) == losses(runs["fsdp"])
    wa, wb = weights(runs["fsdp"]), weights(resumed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sharded_checkpoint_files(runs):
    names = sorted(p.name for p in (runs["resumed-sharded"] / "checkpoints").iterdir())
    assert names == ["step_00000001.pt", "step_00000002.pt", "step_00000003.dcp",
                     "step_00000003.pt", "step_00000004.dcp", "step_00000004.pt"]
    meta = ck.load_checkpoint(runs["resumed-sharded"] / "checkpoints" / "step_00000004.pt")
    assert meta["sharded"] == "step_00000004.dcp" and meta["task"] is None
    assert meta["optimizer"] is None and len(meta["rng"]) == 2


def test_sharded_checkpoint_needs_fsdp(runs, tmp_path, capsys):
    from clippo.train.main import main as train_main
    resumed = tmp_path / "run"
    back_to_step(runs["resumed-sharded"], resumed, 3)
    assert train_main(["--train-data", "builtin", "--train-num-samples", "64", *TINY,
                       "--loss", "sigmoid", "--steps", "4", "--workers", "0", "--no-progress",
                       "--output", str(resumed), "--resume", "latest"]) == 1
    err = capsys.readouterr().err
    assert "resume it with --fsdp" in err and "Traceback" not in err
