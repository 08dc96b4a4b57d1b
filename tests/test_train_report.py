"""--report-to tensorboard[,wandb]: the scalars of metrics.jsonl, each reporter optional; a
reporter whose package is missing is an error at start-up."""
import json
import sys
import types

import pytest

from clippo.train.main import main as train_main
from clippo.train.report import scalars

TINY = ["--model", "Ti/16", "--width", "32", "--depth", "1", "--heads", "2", "--mlp-dim", "64",
        "--image-size", "32", "--patch-size", "16"]


def _argv(out, *extra):
    return ["--train-data", "builtin", "--train-num-samples", "64", *TINY, "--batch-size", "8",
            "--steps", "3", "--log-every", "1", "--workers", "0", "--no-progress",
            "--output", str(out), *extra]


def _expected(out):
    """{(name, step): value} that metrics.jsonl holds, under the reporters' names."""
    want = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        want.update({(k, record["step"]): v for k, v in scalars(record).items()})
    return want


def test_missing_package_is_an_error_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    assert train_main(_argv(tmp_path / "run", "--report-to", "tensorboard,wandb")) == 1
    err = capsys.readouterr().err
    assert "--report-to wandb: not installed (pip install wandb)" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_unknown_reporter_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        train_main(_argv("x", "--report-to", "tensorbord"))
    assert e.value.code == 2
    assert "unknown ['tensorbord']" in capsys.readouterr().err


def test_tensorboard_gets_the_metrics_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "run"
    assert train_main(_argv(out, "--report-to", "tensorboard", "--zeroshot-data", "builtin",
                            "--eval-every", "2")) == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    got = {(tag, e.step): e.value for tag in events.Tags()["scalars"]
           for e in events.Scalars(tag)}
    want = _expected(out)
    assert {"train/loss", "train/lr", "zeroshot/acc1"} <= {k for k, _ in want}
    assert got.keys() == want.keys()
    assert all(got[k] == pytest.approx(want[k], rel=1e-6, abs=1e-12) for k in want)


def test_no_reporter_by_default(tmp_path):
    out = tmp_path / "run"
    assert train_main(_argv(out)) == 0
    assert not (out / "tensorboard").exists()


def test_wandb_gets_the_metrics_scalars(tmp_path, monkeypatch):
    """A stand-in wandb module records what the trainer sends: the same scalars, at their
    steps, one run id kept across a resume."""
    calls = {"init": [], "log": [], "finish": 0}

    class Run:
        def log(self, values, step):
            calls["log"].append((step, dict(values)))

        def finish(self):
            calls["finish"] += 1

    def init(**kw):
        calls["init"].append(kw)
        return Run()

    fake = types.ModuleType("wandb")
    fake.init = init
    fake.util = types.SimpleNamespace(generate_id=lambda: "run123")
    monkeypatch.setitem(sys.modules, "wandb", fake)
    out = tmp_path / "run"
    assert train_main(_argv(out, "--report-to", "wandb", "--save-every", "2")) == 0
    got = {(k, step): v for step, values in calls["log"] for k, v in values.items()}
    assert got == _expected(out)
    assert calls["finish"] == 1 and calls["init"][0]["id"] == "run123"
    assert calls["init"][0]["project"] == "clippo"
    # resuming continues the same wandb run
    argv = _argv(out, "--report-to", "wandb", "--save-every", "2", "--resume", "latest")
    assert train_main(argv) == 0
    assert calls["init"][1]["id"] == "run123" and calls["init"][1]["resume"] == "allow"
