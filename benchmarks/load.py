"""Checkpoint loading: seconds and peak memory of CLIPPO.from_big_vision.

Writes a synthetic big_vision .npz (random weights, the released files' layout) for a variant
(default B/16) to a temp dir, or takes --npz; then loads it in fresh subprocesses, so each
measurement sees a cold model (the file is in the page cache after the first run). Reports the
load time and the peak RSS growth during the load against the parameter bytes; the target is
under 5 s and under 2x the parameter bytes.

    python benchmarks/load.py [--variant B/16] [--npz path] [--runs 3] [--out DIR]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from _common import print_table, write_json  # noqa: E402

# Runs in the child: imports first (not counted), then one load, measured.
# Peak memory is VmHWM of this process (ru_maxrss would also count the parent's RSS at fork:
# Linux carries the pre-exec high-water mark over), reset just before the load where allowed.
_CHILD = r"""
import json, sys, time
import torch
from clippo.model import CLIPPO
from clippo import convert  # noqa: F401  (import cost outside the measurement)

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
rss = lambda: status("VmRSS")
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
except OSError:
    pass
before = rss()
t0 = time.perf_counter()
model = CLIPPO.from_big_vision(sys.argv[1])
seconds = time.perf_counter() - t0
peak = status("VmHWM")
nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"seconds": seconds, "rss_before": before, "peak_rss": peak,
                  "after_rss": rss(), "param_bytes": nbytes, "params": model.num_params(),
                  "config": {k: v for k, v in model.config.items() if k != "render"}}))
"""


def write_synthetic(variant, path):
    from clippo.factory import create_model
    image_size = 224
    patch = int(variant.split("/")[1]) if "/" in variant else 16
    if image_size % patch:
        image_size = 16 * patch
    model = create_model(variant, image_size=image_size)
    model.to_big_vision(path)
    return model.num_params()


def load_in_subprocess(npz):
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, "-c", _CHILD, str(npz)], capture_output=True, text=True,
                         env=env, check=False)
    if out.returncode:
        raise RuntimeError(f"load subprocess failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="B/16", help="variant for the synthetic checkpoint")
    ap.add_argument("--npz", help="load this checkpoint instead of a synthetic one")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", "--out-dir", dest="out_dir",
                    help="folder for load.json (default benchmarks/out)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        npz = args.npz
        if npz is None:
            npz = Path(tmp) / "synthetic.npz"
            t0 = time.perf_counter()
            write_synthetic(args.variant, npz)
            print(f"wrote synthetic {args.variant} checkpoint ({os.path.getsize(npz) / 2**20:,.0f} "
                  f"MiB) in {time.perf_counter() - t0:.1f} s")
        rows = []
        for i in range(args.runs):
            r = load_in_subprocess(npz)
            delta = r["peak_rss"] - r["rss_before"]
            rows.append({"run": i, "seconds": r["seconds"], "params": r["params"],
                         "param_MiB": r["param_bytes"] / 2**20, "peak_rss_delta_MiB": delta / 2**20,
                         "delta_over_params": delta / r["param_bytes"]})
        config = r["config"]
    print_table(rows, ["run", "seconds", "params", "param_MiB", "peak_rss_delta_MiB",
                       "delta_over_params"], title=f"from_big_vision ({args.npz or args.variant})")
    summary = {"seconds_p50": statistics.median(x["seconds"] for x in rows),
               "delta_over_params_max": max(x["delta_over_params"] for x in rows),
               "targets": {"seconds": 5.0, "delta_over_params": 2.0}}
    ok = summary["seconds_p50"] < 5.0 and summary["delta_over_params_max"] <= 2.0
    print(f"\nmedian {summary['seconds_p50']:.2f} s, peak RSS growth up to "
          f"{summary['delta_over_params_max']:.2f}x parameter bytes: "
          f"{'within' if ok else 'OUTSIDE'} the targets (< 5 s, <= 2x)")
    write_json("load", rows, extra={"summary": summary, "config": config,
                                    "source": args.npz or f"synthetic {args.variant}"},
               out_dir=args.out_dir)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
