"""How the demo's recipe is chosen (benchmarks/demo_recipes.py): by the val pairs' figures
only, never the test pairs the README reports; and the overrides it runs the demo with."""
import importlib.util
from pathlib import Path

import pytest

from clippo import demo
from clippo.train import parse_args

_SPEC = importlib.util.spec_from_file_location(
    "demo_recipes", Path(__file__).resolve().parents[1] / "benchmarks" / "demo_recipes.py")
demo_recipes = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(demo_recipes)


def _report(val, test):
    r = {k: val for k in demo_recipes.SELECTION_KEYS}
    r.update({k: test for k in demo_recipes.REPORTED_KEYS}, train_seconds=1.0)
    return r


def test_choice_follows_val_and_ignores_test():
    rows = [demo_recipes.row("a", _report(0.5, 0.99)), demo_recipes.row("b", _report(0.6, 0.1)),
            demo_recipes.row("c", _report(0.55, 0.5))]
    assert demo_recipes.choose(rows)["name"] == "b"  # best val, worst test
    tie = [demo_recipes.row("first", _report(0.7, 0.1)),
           demo_recipes.row("second", _report(0.7, 0.9))]
    assert demo_recipes.choose(tie)["name"] == "first"
    assert demo_recipes.val_score(_report(0.25, 1.0)) == pytest.approx(0.25)
    assert not set(demo_recipes.SELECTION_KEYS) & set(demo_recipes.REPORTED_KEYS)
    assert all("val" in k for k in demo_recipes.SELECTION_KEYS)


def test_candidates_include_the_recipe_and_change_only_its_keys():
    assert {"lr": demo.RECIPE["lr"]} in demo_recipes.CANDIDATES.values()
    for overrides in demo_recipes.CANDIDATES.values():
        demo.recipe(overrides)  # known keys only


def test_overrides_reach_every_stage_and_unknown_keys_are_refused(tmp_path):
    for stage in range(len(demo.STAGES)):
        args = parse_args(demo.recipe_argv(tmp_path, stage, overrides={"seed": 3, "lr": 1e-3}))
        assert args.seed == 3 and args.lr == 1e-3
        assert parse_args(demo.recipe_argv(tmp_path, stage)).seed == demo.RECIPE["seed"]
    with pytest.raises(ValueError, match="unknown demo recipe keys"):
        demo.recipe({"learning_rate": 1e-3})


def test_cli_demo_seed_is_passed_on(monkeypatch):
    from clippo import cli
    seen = {}
    monkeypatch.setattr(demo, "run", lambda *a, **k: seen.update(k))
    assert cli.main(["demo", "--seed", "2", "--out", "x"]) == 0
    assert seen["overrides"] == {"seed": 2}
    assert cli.main(["demo", "--out", "x"]) == 0
    assert seen["overrides"] is None


def test_demo_run_again_in_the_same_folder_starts_over(tmp_path, capsys):
    """Today: `clippo train` refuses the first stage's folder (it holds checkpoints) and the
    demo stops with advice about --resume, a flag the demo does not have."""
    from clippo import cli
    argv = ["demo", "--out", str(tmp_path), "--steps", "2", "--workers", "0", "--no-progress"]
    assert cli.main(argv) == 0
    assert cli.main(argv + ["--seed", "1"]) == 0, capsys.readouterr().err
    assert "replacing the earlier run" in capsys.readouterr().out
    import json
    assert json.loads((tmp_path / "report.json").read_text())["recipe"]["seed"] == 1
