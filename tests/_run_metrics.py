"""A training run's metrics.jsonl as the tests compare it: every row, timing fields left out
(they differ between runs that are otherwise equal)."""
import json
from pathlib import Path

TIMING = {"samples_per_s", "data_time", "step_time"}


def metrics(out):
    """[dict] of out/metrics.jsonl, one per logged step, without TIMING's keys."""
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
