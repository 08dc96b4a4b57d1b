"""`clippo train` flags and --config files (YAML and JSON; flags override the file)."""
import json
import re

import pytest

from clippo.train.params import parse_args

BASE = ["--train-data", "builtin"]


def test_defaults_are_the_documented_recipe():
    a = parse_args(BASE)
    assert (a.opt, a.lr, a.beta1, a.beta2, a.eps) == ("adamw", 5e-4, 0.9, 0.98, 1e-6)
    assert (a.grad_clip_norm, a.warmup, a.lr_scheduler, a.loss) == (1.0, 0.1, "cosine", "softmax")
    assert a.steps is None and a.epochs is None and a.accum_freq == 1


def test_yaml_config_then_flags_override(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("train-data: builtin\nbatch_size: 32\nlr: 0.001\nsteps: 50\n"
                   "grad-checkpointing: true\nlr-scheduler: rsqrt\n")
    a = parse_args(["--config", str(cfg), "--lr", "3e-4"])
    assert (a.batch_size, a.lr, a.steps, a.grad_checkpointing, a.lr_scheduler) == \
        (32, 3e-4, 50, True, "rsqrt")
    # the command line's --epochs replaces the file's steps
    a = parse_args(["--config", str(cfg), "--epochs", "2"])
    assert (a.steps, a.epochs) == (None, 2.0)


def test_json_config(tmp_path):
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"train_data": "x.csv", "workers": 0, "precision": "bf16"}))
    a = parse_args(["--config", str(cfg)])
    assert (a.train_data, a.workers, a.precision) == ("x.csv", 0, "bf16")


@pytest.mark.parametrize("text, message", [
    ("train-data: builtin\nlearning_rate: 0.1\n", "unknown keys \\['learning_rate'\\]"),
    ("train-data: builtin\nopt: sgd\n", "opt must be one of"),
    ("train-data: builtin\nbatch-size: -4\n", "batch-size"),
    ("train-data: builtin\nno-progress: 3\n", "true or false"),
    ("- a\n- b\n", "mapping"),
    ("train-data: [unclosed\n", "invalid YAML"),
])
def test_bad_config_is_a_clear_error(tmp_path, capsys, text, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(SystemExit) as e:
        parse_args(["--config", str(cfg)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert str(cfg) in err
    assert re.search(message, err)


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "0"], "positive integer"),
    (["--steps", "10", "--epochs", "1"], "not allowed with"),
    (["--lr-scheduler", "linear"], "invalid choice"),
    (["--warmup", "2.5"], "whole number of steps"),
    (["--text-pair-fraction", "1.0"], "fraction"),
    (["--beta2", "1.5"], "below 1"),
    (["--logit-scale-max", "0.5"], "0 (no clamp) or at least 1"),
    (["--epochs", "0"], "expected a number > 0"),
    (["--max-skip-fraction", "1.5"], "fraction in [0, 1]"),
    (["--builtin-languages", "en,fr"], "unknown language 'fr'"),
    (["--builtin-languages", "en=x"], "bad weight"),
    (["--builtin-languages", "en=0,de=0"], "no language with a positive weight"),
    ([], None),
])
def test_bad_flags(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        parse_args(BASE + argv if message else argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert (message or "--train-data is required") in err


def test_builtin_language_mix_flag():
    args = parse_args(["--train-data", "builtin", "--steps", "1", "--builtin-languages",
                       "en=0.5,zh=0.25,ru"])
    assert args.builtin_languages == {"en": 0.5, "zh": 0.25, "ru": 1.0}
    assert parse_args(["--train-data", "builtin", "--steps", "1"]).builtin_languages is None


def test_builtin_languages_needs_builtin_data(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--train-data", "x.csv", "--steps", "1", "--builtin-languages", "en"])
    assert "for --train-data builtin" in capsys.readouterr().err
