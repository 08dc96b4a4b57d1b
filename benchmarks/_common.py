"""Shared benchmark helpers: timing, environment facts, a printed table and a JSON file.

Every benchmark compares providers side by side in one run; ratios are taken against the
baseline measured in that same run, never against numbers from elsewhere. JSON goes to
benchmarks/out/ (ignored by git) unless --out says otherwise; numbers worth keeping are
copied by hand to benchmarks/results/<machine>-<date>/ with a README.
"""
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

OUT_DIR = Path(__file__).resolve().parent / "out"


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure(fn, *, device="cpu", warmup=2, reps=10, min_time=0.0):
    """Run fn() warmup times, then at least `reps` times (and at least `min_time` seconds).

    Returns seconds per call as {"p50", "p20", "p80", "n"}. On CUDA each call is timed
    with events; on the CPU with perf_counter.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    start_all = time.perf_counter()
    cuda = torch.device(device).type == "cuda"
    while len(times) < reps or time.perf_counter() - start_all < min_time:
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else times * 9
    return {"p50": statistics.median(times), "p20": q[1], "p80": q[7], "n": len(times)}


def environment():
    """Facts that make a result interpretable later: machine, versions, git revision."""
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    try:
        env["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True, cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        env["git"] = None
    return env


def print_table(rows, columns, title=None):
    """Print rows (dicts) as a markdown table with the given column keys."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return "-" if v is None else str(v)
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
              for i, c in enumerate(columns)]
    if title:
        print(f"\n{title}")
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(v.rjust(w) for v, w in zip(row, widths)) + " |")


def write_json(name, rows, extra=None, out_dir=None):
    """Write {"environment", "rows", ...extra} to <out_dir or benchmarks/out>/<name>.json."""
    out = Path(out_dir) if out_dir else OUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    payload = {"benchmark": name, "environment": environment(), "rows": rows, **(extra or {})}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    print(f"\nwrote {path}")
    return path
