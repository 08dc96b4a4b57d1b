"""A trainer left alone: non-finite steps skipped and never saved, skipped samples counted and
bounded, resume refusing changed flags, SIGTERM ending in a checkpoint that the README's own
command resumes, the logit-scale clamp, TF32 on CUDA, and the smaller set-up checks."""
import importlib
import io
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clippo.train import checkpoint as ck
from clippo.train import main, parse_args, run
from _run_metrics import metrics as _metrics

train_main = importlib.import_module("clippo.train.main")  # the module, not main()
params = importlib.import_module("clippo.train.params")

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "Ti/16", "--width", "32", "--depth", "1", "--heads", "2", "--mlp-dim", "64",
        "--image-size", "32", "--patch-size", "16", "--batch-size", "8", "--no-progress",
        "--seed", "3"]
BUILTIN = ["--train-data", "builtin", "--train-num-samples", "64"]

pytestmark = pytest.mark.filterwarnings("ignore:'set_vital' is deprecated")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("WORLD_SIZE", None)
    return env


# -- non-finite steps -----------------------------------------------------------------------

@pytest.mark.parametrize("opt", ["fused-adamw", "adafactor"])
def test_a_nonfinite_gradient_changes_no_weight_and_no_moment(opt):
    from clippo.train.nonfinite import guarded_step
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    o = (torch.optim.AdamW([p], lr=0.1, weight_decay=0.1, fused=True) if opt == "fused-adamw"
         else torch.optim.Adafactor([p], lr=0.1))
    p.grad = torch.randn(5)
    guarded_step(o, torch.tensor(True))
    before = (p.detach().clone(), {k: v.clone() for k, v in o.state[p].items()})
    p.grad = torch.tensor([1.0, float("nan"), 0, 0, float("inf")])
    guarded_step(o, torch.isfinite(p.grad.norm()))
    assert torch.equal(p, before[0])
    assert all(torch.equal(o.state[p][k], v) for k, v in before[1].items())  # step count too
    p.grad = torch.ones(5)
    guarded_step(o, torch.tensor(True))
    assert not torch.equal(p, before[0])


def _all_finite(state):
    if isinstance(state, torch.Tensor):
        return bool(torch.isfinite(state).all())
    if isinstance(state, dict):
        return all(_all_finite(v) for v in state.values())
    return True


def test_nonfinite_steps_are_skipped_counted_and_never_saved(tmp_path, capsys):
    # the reproduction: an absurd learning rate, no clipping, saves between log steps
    out = tmp_path / "run"
    code = main(TINY + BUILTIN + ["--lr", "1e6", "--grad-clip-norm", "0", "--save-every", "3",
                                  "--log-every", "4", "--steps", "40", "--workers", "0",
                                  "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    saved = ck.list_checkpoints(out / "checkpoints")
    assert saved, err
    for _, path in saved:  # every checkpoint finite: weights and optimizer state
        state = ck.load_checkpoint(path)
        assert _all_finite(state["task"]) and _all_finite(state["optimizer"]["state"]), path
    assert not (out / "model").exists()
    # steps 1-2 update; from step 3 on every gradient is NaN: checkpoints 3, 6 and 9 (finite),
    # the streak of 10 (--max-nonfinite's default) found at the log step 12
    assert [s for s, _ in saved] == [3, 6, 9]
    assert "10 steps in a row up to step 12" in err
    assert f"The last good checkpoint is {saved[-1][1]}" in err
    lines = _metrics(out)
    assert [(r["step"], r["nonfinite_steps"]) for r in lines] == [(4, 2), (8, 4), (12, 4)]
    assert math.isfinite(lines[0]["loss"]) and lines[1]["loss"] is None  # steps 1-2 only
    assert lines[2]["loss"] is None
    # the skipped steps changed nothing: not a weight, not a moment, not the step count
    a, b = (ck.load_checkpoint(p) for _, p in saved[::2])
    assert all(torch.equal(a["task"][k], b["task"][k]) for k in a["task"])
    for i, state in a["optimizer"]["state"].items():
        assert all(torch.equal(v, b["optimizer"]["state"][i][k]) for k, v in state.items())


def test_a_nonfinite_state_is_never_saved(tmp_path, capsys, monkeypatch):
    """A weight gone NaN (however it happened) stops the run before any checkpoint."""
    real = train_main.build_model

    def poisoned(args):
        model = real(args)
        with torch.no_grad():
            model.img.head.bias[0] = float("nan")
        model.img.head.bias.requires_grad_(False)  # the gradient stays finite
        return model

    monkeypatch.setattr(train_main, "build_model", poisoned)
    out = tmp_path / "run"
    code = main(TINY + BUILTIN + ["--steps", "2", "--workers", "0", "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "NaN or Inf" in err and "No checkpoint was written" in err
    assert ck.list_checkpoints(out / "checkpoints") == [] and not (out / "model").exists()


# -- skipped samples ------------------------------------------------------------------------

def _png(color, size=40):
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), color, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _csv(tmp_path, good, missing):
    rows = ["filepath\ttitle"]
    for i in range(good):
        (tmp_path / f"{i}.png").write_bytes(_png((20 * i % 256, 100, 200)))
        rows.append(f"{i}.png\tcolour number {i}")
    rows += [f"gone_{i}.png\ta photo that is not there" for i in range(missing)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    return str(tmp_path / "train.csv")


def test_loss_averages_over_the_steps_that_ran(tmp_path, capsys):
    data = _csv(tmp_path, good=6, missing=10)
    flags = TINY + ["--train-data", data, "--batch-size", "2", "--steps", "12", "--workers", "0",
                    "--lr", "1e-3"]
    assert main(flags + ["--log-every", "1", "--output", str(tmp_path / "each")]) == 0
    capsys.readouterr()
    each = _metrics(tmp_path / "each")
    empty = [r["step"] for r in each if r["batch_size"] == 0]
    assert empty, "the test needs a step whose every sample was skipped"
    assert main(flags + ["--log-every", "4", "--output", str(tmp_path / "by4")]) == 0
    by4 = _metrics(tmp_path / "by4")
    err = capsys.readouterr().err
    for r in by4:
        ran = [e["loss"] for e in each[r["step"] - 4:r["step"]] if e["batch_size"] > 0]
        assert r["loss"] == pytest.approx(sum(ran) / len(ran), rel=1e-6)
        assert r["skipped"] == sum(e["skipped"] for e in each[r["step"] - 4:r["step"]])
    assert all(e["loss"] is None for e in each if e["batch_size"] == 0)
    # warned once per interval with the share and a file name
    warnings = [line for line in err.splitlines() if "were skipped in steps" in line]
    assert len(warnings) == sum(r["skipped"] > 0 for r in by4) == 3
    assert re.search(r"\d+ of 8 samples \(\d+\.\d%\) were skipped in steps 1-4", err)
    assert str(tmp_path / "gone_") in warnings[0]


def test_too_many_skipped_samples_stop_the_run(tmp_path, capsys):
    data = _csv(tmp_path, good=2, missing=30)
    code = main(TINY + ["--train-data", data, "--steps", "40", "--workers", "0",
                        "--log-every", "5", "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1 and "above --max-skip-fraction 0.5" in err
    # the first check: at step 15, once 120 (>= 100) samples were read
    assert len(_metrics(tmp_path / "run")) == 3


# -- resume guard ---------------------------------------------------------------------------

def test_every_flag_is_classified_for_resume():
    dests = {a.dest for a in params.build_parser()._actions if a.dest != "help"}
    assert dests == set(params.FLAG_KINDS)
    assert set(params.FLAG_KINDS.values()) <= set(params.FLAG_KIND_NAMES)


def test_changed_flags_rules():
    old = vars(parse_args(BUILTIN + ["--batch-size", "64", "--steps", "10"]))
    new = parse_args(BUILTIN + ["--batch-size", "32", "--accum-freq", "2", "--steps", "10",
                                "--workers", "0", "--output", "elsewhere", "--seed", "1"])
    assert params.changed_flags(old, new) == [("seed", 0, 1), ("batch_size", 64, 32),
                                              ("accum_freq", 1, 2)]
    # the batch flags as a group: the same global batch may be reached another way
    assert params.changed_flags(old, new, keep_global_batch=True) == [("seed", 0, 1)]
    assert params.changed_flags(old, new, 1, 2, keep_global_batch=True)[1:] == \
        [("batch_size", 64, 32), ("accum_freq", 1, 2)]
    # a checkpoint from before a flag existed: its default
    del old["logit_scale_max"]
    assert params.changed_flags(old, parse_args(BUILTIN + ["--batch-size", "64", "--steps",
                                                           "10"])) == []


def test_resume_refuses_changed_flags_and_allows_them_when_asked(tmp_path, capsys):
    out = tmp_path / "run"
    base = TINY + BUILTIN + ["--workers", "0", "--log-every", "1", "--save-every", "2",
                             "--output", str(out)]
    assert main(base + ["--steps", "2"]) == 0
    capsys.readouterr()
    changed = ["--steps", "4", "--seed", "4", "--text-pairs", "builtin",
               "--text-pair-fraction", "0.5", "--lr-scheduler", "const", "--workers", "1"]
    assert main(base + changed + ["--resume", "latest"]) == 1
    err = capsys.readouterr().err
    for listed in ("--steps 2 -> 4", "--seed 3 -> 4", "--text-pairs None -> 'builtin'",
                   "--text-pair-fraction 0.25 -> 0.5", "--lr-scheduler 'cosine' -> 'const'"):
        assert listed in err
    assert "--workers" not in err and "--resume-allow-changes" in err
    assert len(_metrics(out)) == 2
    assert main(base + changed + ["--resume", "latest", "--resume-allow-changes"]) == 0
    err = capsys.readouterr().err
    assert "WARNING: resuming with flags that differ" in err and "--seed 3 -> 4" in err
    assert [r["step"] for r in _metrics(out)] == [1, 2, 3, 4]
    assert "resume_allow_changes" not in json.loads((out / "args.json").read_text())


# -- SIGTERM, and the README's resume command -------------------------------------------------

def _readme_resume_command():
    text = (ROOT / "README.md").read_text()
    found = re.findall(r"^(clippo train --config (\S+)/args\.json --resume latest)", text, re.M)
    assert found, "README.md has no `clippo train --config OUT/args.json --resume latest`"
    return found[0]


def test_sigterm_checkpoints_the_step_and_the_readme_command_resumes(tmp_path):
    command, out_name = _readme_resume_command()
    # stopped between logged steps: the partly filled logging interval goes into the checkpoint
    flags = TINY + BUILTIN + ["--steps", "12", "--log-every", "4", "--save-every", "100",
                              "--workers", "1", "--lr", "1e-3"]
    train = [sys.executable, "-m", "clippo", "train", *flags]
    ref = subprocess.Popen(train + ["--output", str(tmp_path / "ref")], cwd=tmp_path,
                           env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # SIGTERM to the whole process group (a cluster's preemption): the DataLoader worker too
    victim = subprocess.Popen(train + ["--output", out_name], cwd=tmp_path, env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    metrics = tmp_path / out_name / "metrics.jsonl"
    deadline = time.monotonic() + 120
    try:
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 1):
            assert victim.poll() is None, victim.stderr.read()
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.01)
        os.killpg(victim.pid, signal.SIGTERM)
        _, err = victim.communicate(timeout=60)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == 128 + signal.SIGTERM, err
    assert f"Resume with: {command}" in err
    stopped = ck.list_checkpoints(tmp_path / out_name / "checkpoints")
    assert len(stopped) == 1, err
    step = stopped[0][0]
    assert 4 <= step < 12 and f"stopped by SIGTERM after step {step} of 12" in err
    before = metrics.read_text()
    assert [json.loads(line)["step"] for line in before.splitlines()] == \
        list(range(4, step + 1, 4))

    argv = shlex.split(command)
    assert argv[:2] == ["clippo", "train"]
    resumed = subprocess.run([sys.executable, "-m", "clippo", *argv[1:]], cwd=tmp_path,
                             env=_env(), capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert ref.wait(180) == 0, ref.stderr.read().decode()
    assert metrics.read_text().startswith(before)  # appended, never rewritten
    got, want = _metrics(tmp_path / out_name), _metrics(tmp_path / "ref")
    assert [r["step"] for r in got] == [4, 8, 12] and got == want
    from safetensors.torch import load_file
    a = load_file(tmp_path / "ref" / "model" / "model.safetensors")
    b = load_file(tmp_path / out_name / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_args_json_round_trips_through_config(tmp_path):
    args = parse_args(BUILTIN + ["--builtin-languages", "en=0.5,de=0.5", "--steps", "7",
                                 "--csv-separator", "\t", "--resume-allow-changes"])
    path = tmp_path / "args.json"
    path.write_text(json.dumps(params.run_config(args)))
    again = parse_args(["--config", str(path)])
    assert {**vars(again), "resume_allow_changes": True, "config": None} == vars(args)
    # args.json of older runs held "config": null
    path.write_text(json.dumps({**params.run_config(args), "config": None}))
    assert parse_args(["--config", str(path)]).steps == 7


# -- logit scale, TF32 ----------------------------------------------------------------------

def test_clamp_logit_scale_as_openclip():
    import clippo
    model = clippo.create_model("mu/8", image_size=32, out_dim=16)
    for t, limit, want in [(math.log(150), 100, math.log(100)), (-0.5, 100, 0.0),
                           (math.log(50), 100, math.log(50)), (math.log(150), 0, math.log(150))]:
        with torch.no_grad():
            model.t.fill_(t)
        train_main.clamp_logit_scale(model, limit)
        assert model.t.item() == pytest.approx(want, abs=1e-7)


@pytest.mark.parametrize("limit, want", [("100", 100.0), ("0", 150.0)])
def test_trainer_clamps_the_logit_scale_after_each_update(tmp_path, monkeypatch, limit, want):
    real = train_main.build_model

    def hot(args):
        model = real(args)
        with torch.no_grad():
            model.t.fill_(math.log(150.0))
        return model

    monkeypatch.setattr(train_main, "build_model", hot)
    out = tmp_path / limit
    run(parse_args(TINY + BUILTIN + ["--steps", "1", "--lr", "0", "--workers", "0",
                                     "--logit-scale-max", limit, "--output", str(out)]))
    assert _metrics(out)[0]["logit_scale"] == pytest.approx(want, rel=1e-5)


def test_tf32_on_cuda_only():
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32
    try:
        matmul.allow_tf32 = cudnn.allow_tf32 = False
        train_main.configure_cuda(torch.device("cpu"))
        assert not matmul.allow_tf32 and not cudnn.allow_tf32
        train_main.configure_cuda(torch.device("cuda", 0))  # flags only: no GPU needed
        assert matmul.allow_tf32 and cudnn.allow_tf32
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


def test_trainer_sets_up_cuda_for_its_device(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(train_main, "configure_cuda", seen.append)
    run(parse_args(TINY + BUILTIN + ["--steps", "1", "--workers", "0",
                                     "--output", str(tmp_path)]))
    assert seen == [torch.device("cpu")]


# -- smaller checks -------------------------------------------------------------------------

def test_zero_epochs_is_an_error(capsys):
    with pytest.raises(SystemExit):
        parse_args(BUILTIN + ["--epochs", "0"])
    assert "--epochs" in capsys.readouterr().err


def test_global_batch_larger_than_the_data_is_warned_about(tmp_path, capsys):
    assert main(TINY + ["--train-data", "builtin", "--train-num-samples", "12",
                        "--batch-size", "16", "--steps", "1", "--workers", "0",
                        "--output", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "global batch of image-text pairs (16) is larger than the dataset (12 samples)" in err


def test_default_workers_fit_the_machine(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert params.default_workers() == 2
    assert params.build_parser().parse_args(["--train-data", "x"]).workers == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert params.default_workers() == 4


def test_from_pretrained_takes_a_run_folder(tmp_path):
    import clippo
    model = clippo.create_model("mu/8", image_size=32, out_dim=16)
    model.save_pretrained(tmp_path / "run" / "model")
    loaded = clippo.CLIPPO.from_pretrained(tmp_path / "run")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 loaded.state_dict().values()))
    from clippo.eval.common import load_model  # what `clippo eval --model RUN_DIR` loads
    evaluated = load_model(tmp_path / "run", device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 evaluated.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="config.json"):
        clippo.CLIPPO.from_pretrained(tmp_path)  # neither a model nor a run folder
