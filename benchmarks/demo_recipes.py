"""The demo's recipe chosen on the held-out VAL pairs, and the spread of its figures over seeds.

The demo reports its held-out figures on the TEST pairs (clippo.data.builtin.heldout_part); a
recipe must not be chosen by looking at them. Two modes, each a list of full `clippo demo`
runs (about 7 minutes each on 2 CPU cores; a run whose report.json exists is reused, so an
interrupted sweep resumes):

    python benchmarks/demo_recipes.py select [--out DIR]
        every CANDIDATES entry at seed 0, text tokens "all"; the one with the best VAL score
        (SELECTION_KEYS averaged) is chosen; ties go to the earlier candidate. The test
        figures are recorded beside, not used.

    python benchmarks/demo_recipes.py seeds --seeds 0,1,2 --text-tokens all,ink [--out DIR]
        the demo's recipe (clippo.demo.RECIPE) at each seed and text_tokens setting: mean,
        spread and the ink - all difference of every reported figure.

Prints a table and writes <out>/demo_recipes_<mode>.json.
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from _common import print_table, write_json  # noqa: E402

from clippo import demo  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "out" / "demo-recipes"

# Fixed before any of them was run: the learning rate around the one the demo had (5e-4).
CANDIDATES = {
    "lr5e-4": {"lr": 5e-4},
    "lr2.5e-4": {"lr": 2.5e-4},
    "lr1e-3": {"lr": 1e-3},
}
# what a recipe is chosen by: the val pairs' figures only
SELECTION_KEYS = ("zero_shot_val_top1", "retrieval_val_t2i_r1", "retrieval_val_i2t_r1")
# what the README reports, on the test pairs
REPORTED_KEYS = ("zero_shot_top1", "zero_shot_72way_top1", "retrieval_t2i_r1",
                 "retrieval_i2t_r1", "retrieval_shapes_t2i_r1", "retrieval_shapes_i2t_r1")


def val_score(report):
    return sum(report[k] for k in SELECTION_KEYS) / len(SELECTION_KEYS)


def run_once(out_dir, overrides, text_tokens, workers, steps=None):
    """One demo run into out_dir (reused when its report.json exists); steps: None = the
    recipe's (shorter only for a smoke test)."""
    report_path = Path(out_dir) / "report.json"
    if report_path.exists():
        print(f"reusing {report_path}", flush=True)
        return json.loads(report_path.read_text())
    print(f"running the demo: {out_dir} ({overrides}, text tokens {text_tokens})", flush=True)
    return demo.run(out_dir, steps=steps, workers=workers, progress=False,
                    text_tokens=text_tokens, overrides=overrides)


def row(name, report, **extra):
    return dict(name=name, **extra, val_score=val_score(report),
                **{k: report[k] for k in SELECTION_KEYS + REPORTED_KEYS},
                train_seconds=report["train_seconds"])


def choose(rows):
    """The row with the best val score; ties go to the earlier one (max keeps the first)."""
    return max(rows, key=lambda r: r["val_score"])


def select(out, workers, steps=None):
    rows = []
    for name, overrides in CANDIDATES.items():
        report = run_once(out / name, dict(overrides, seed=0), "all", workers, steps)
        rows.append(row(name, report, overrides=overrides))
    chosen = choose(rows)
    for r in rows:
        r["chosen"] = r is chosen
    print_table(rows, ["name", "chosen", "val_score"] + list(SELECTION_KEYS) +
                list(REPORTED_KEYS), title="demo recipes: chosen on the val pairs")
    print(f"chosen on val: {chosen['name']} {chosen['overrides']}")
    return {"selection_keys": SELECTION_KEYS, "candidates": CANDIDATES,
            "chosen": chosen["name"], "runs": rows}


def spread(values):
    return {"mean": statistics.fmean(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def seeds(out, seed_list, tokens_list, workers, steps=None):
    rows, summary = [], {}
    for seed in seed_list:  # seed by seed: an interrupted sweep has both settings so far
        for tokens in tokens_list:
            report = run_once(out / f"{tokens}-seed{seed}", {"seed": seed}, tokens, workers,
                              steps)
            rows.append(row(f"{tokens} seed {seed}", report, text_tokens=tokens, seed=seed))
    for tokens in tokens_list:
        mine = [r for r in rows if r["text_tokens"] == tokens]
        summary[tokens] = {k: spread([r[k] for r in mine])
                           for k in REPORTED_KEYS + SELECTION_KEYS + ("train_seconds",)}
    print_table(rows, ["text_tokens", "seed"] + list(REPORTED_KEYS) + ["train_seconds"],
                title="demo recipe over seeds (held-out test pairs)")
    result = {"seeds": seed_list, "runs": rows, "summary": summary}
    if {"all", "ink"} <= set(tokens_list):
        diff = {k: summary["ink"][k]["mean"] - summary["all"][k]["mean"] for k in REPORTED_KEYS}
        result["ink_minus_all"] = diff
        print_table([dict(figure=k, all=summary["all"][k]["mean"], ink=summary["ink"][k]["mean"],
                          ink_minus_all=d) for k, d in diff.items()],
                    ["figure", "all", "ink", "ink_minus_all"],
                    title=f"means over seeds {seed_list}")
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("select", "seeds"))
    p.add_argument("--seeds", default="0,1,2", help="seeds mode: comma-separated seeds")
    p.add_argument("--text-tokens", default="all,ink", help="seeds mode: all, ink or all,ink")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers per run")
    p.add_argument("--steps", type=int, default=None,
                   help="steps per run (default: the recipe's; fewer only for a smoke test)")
    p.add_argument("--out", default=None, help=f"folder for the runs and JSON "
                   f"(default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    out = Path(args.out or DEFAULT_OUT)
    if args.mode == "select":
        result = select(out, args.workers, args.steps)
    else:
        tokens = [t for t in args.text_tokens.split(",") if t]
        bad = [t for t in tokens if t not in ("all", "ink")]
        if bad:
            p.error(f"--text-tokens takes all and/or ink, got {bad}")
        result = seeds(out, [int(s) for s in args.seeds.split(",")], tokens, args.workers,
                       args.steps)
    rows = result.pop("runs")
    write_json(f"demo_recipes_{args.mode}", rows, extra=result, out_dir=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
