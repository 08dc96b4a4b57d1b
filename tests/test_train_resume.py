"""End to end on built-in data with a tiny model: kill -9 then --resume latest reproduces the
uninterrupted run exactly; a full disk keeps the last good checkpoint; the final model loads
with CLIPPO.from_pretrained; bad set-ups fail before training with a clear message."""
import errno
import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clippo.train import checkpoint as ck
from clippo.train import main, parse_args, run
from _run_metrics import metrics as _metrics

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--train-data", "builtin", "--train-num-samples", "96", "--model", "mu/8",
        "--image-size", "32", "--out-dim", "16", "--batch-size", "8", "--log-every", "1",
        "--no-progress", "--seed", "3", "--lr", "1e-3"]

pytestmark = pytest.mark.filterwarnings("ignore:'set_vital' is deprecated")


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("WORLD_SIZE", None)
    return env


def _train_cmd(out, *extra):
    return [sys.executable, "-m", "clippo.train", *TINY, "--output", str(out), *extra]


def test_kill_9_then_resume_latest_matches_uninterrupted_run(tmp_path):
    steps = ["--steps", "20", "--save-every", "4", "--workers", "1"]
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "killed"
    ref = subprocess.Popen(_train_cmd(ref_dir, *steps), cwd=ROOT, env=_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    victim = subprocess.Popen(_train_cmd(run_dir, *steps), cwd=ROOT, env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while not [s for s, _ in ck.list_checkpoints(run_dir / "checkpoints") if s >= 4]:
            assert victim.poll() is None, victim.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(30)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == -signal.SIGKILL
    assert not (run_dir / "model").exists(), "the run finished before it was killed"
    killed_at = ck.find_latest(run_dir / "checkpoints")[1]["step"]
    assert 4 <= killed_at < 20

    resumed = subprocess.run(_train_cmd(run_dir, *steps, "--resume", "latest"), cwd=ROOT,
                             env=_env(), capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {run_dir / 'checkpoints' / ck.checkpoint_name(killed_at)}" in \
        resumed.stderr
    assert ref.wait(180) == 0, ref.stderr.read().decode()

    want, got = _metrics(ref_dir), _metrics(run_dir)
    assert [r["step"] for r in got] == list(range(1, 21))
    assert got == want  # loss, lr, logit_scale, grad_norm, epoch ... all bit-equal
    assert len({r["loss"] for r in want}) == 20 and want[-1]["epoch"] == 1  # 2 epochs of 96
    from safetensors.torch import load_file
    a = load_file(ref_dir / "model" / "model.safetensors")
    b = load_file(run_dir / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_full_disk_keeps_previous_checkpoint_and_training_goes_on(tmp_path, monkeypatch,
                                                                  capsys, one_thread):
    real_save = torch.save
    calls = []

    def save(obj, f, *args, **kw):
        calls.append(obj.get("step") if isinstance(obj, dict) else None)
        if calls[-1] == 8:  # the second checkpoint hits a full disk halfway
            f.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kw)

    monkeypatch.setattr(ck.torch, "save", save)
    args = parse_args(TINY + ["--steps", "12", "--save-every", "4", "--workers", "0",
                              "--output", str(tmp_path)])
    summary = run(args)
    err = capsys.readouterr().err
    assert err.count("WARNING: could not write checkpoint") == 1
    assert f"{ck.checkpoint_name(8)} ([Errno {errno.ENOSPC}] No space left on device)" in err
    names = sorted(os.listdir(tmp_path / "checkpoints"))
    assert names == [ck.checkpoint_name(4), ck.checkpoint_name(12)]  # no step 8, no temporary
    assert ck.load_checkpoint(tmp_path / "checkpoints" / ck.checkpoint_name(4))["step"] == 4
    assert [r["step"] for r in _metrics(tmp_path)] == list(range(1, 13))
    assert summary["steps"] == 12 and summary["checkpoint"].endswith(ck.checkpoint_name(12))

    # the final model is the trained one, as CLIPPO.from_pretrained and the checkpoint hold it
    from clippo import CLIPPO
    model = CLIPPO.from_pretrained(summary["model_dir"])
    final = ck.load_checkpoint(summary["checkpoint"])
    for name, value in model.state_dict().items():
        assert torch.equal(value, final["task"][f"model.{name}"]), name
    assert model.config["image_size"] == 32 and model.config["out_dim"] == 16

    # a finished run resumed is a no-op that keeps its metrics; a new run may not overwrite it
    monkeypatch.setattr(ck.torch, "save", real_save)
    again = run(parse_args(TINY + ["--steps", "12", "--workers", "0", "--output",
                                   str(tmp_path), "--resume", "latest"]))
    assert again["start_step"] == 12 and len(_metrics(tmp_path)) == 12
    assert main(TINY + ["--steps", "12", "--output", str(tmp_path)]) == 1


def test_collapse_watchdog_warns_once(tmp_path, capsys, monkeypatch, one_thread):
    # a model whose embeddings ignore the input sits at loss = log(batch) from step 1
    train_main = importlib.import_module("clippo.train.main")  # the module, not main()
    real = train_main.build_model

    def constant_model(args):
        model = real(args)
        torch.nn.init.zeros_(model.img.head.weight)
        model.img.head.weight.requires_grad_(False)
        return model

    monkeypatch.setattr(train_main, "build_model", constant_model)
    monkeypatch.setattr(train_main, "COLLAPSE_STEPS", 5)
    args = parse_args(TINY + ["--steps", "8", "--workers", "0", "--output", str(tmp_path),
                              "--save-every", "0", "--log-every", "4"])
    run(args)
    err = capsys.readouterr().err
    assert err.count("WARNING: the loss has sat at log(batch size)") == 1 and "Lower --lr" in err


@pytest.mark.parametrize("flags, message", [
    (["--train-data", "/nonexistent/train.csv"], "/nonexistent/train.csv: no such file"),
    (["--image-size", "36"], "not a multiple of patch"),
    (["--pretrained", "/nonexistent/model"], "/nonexistent/model"),
    (["--model", "B/16x"], "unknown"),
])
def test_bad_setups_fail_before_training(tmp_path, capsys, flags, message, one_thread):
    code = main(TINY + ["--steps", "12", "--workers", "0", "--output", str(tmp_path / "o")]
                + flags)
    assert code == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "metrics.jsonl").exists()


def test_pretrained_must_fit_the_image_size(tmp_path, capsys, one_thread):
    import clippo
    clippo.create_model("mu/8", image_size=32, out_dim=16).save_pretrained(tmp_path / "m")
    code = main(TINY + ["--steps", "2", "--workers", "0", "--output", str(tmp_path / "o"),
                        "--pretrained", str(tmp_path / "m"), "--image-size", "48"])
    assert code == 1
    assert "does not match" in capsys.readouterr().err
