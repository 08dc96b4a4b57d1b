"""The CLIPPO trainer: `clippo train`, `python -m clippo.train`, `torchrun ... -m clippo.train`.

    from clippo.train import parse_args, run
    summary = run(parse_args(["--train-data", "builtin", "--model", "Ti/16", "--steps", "100"]))

Modules: params (flags, --config, what each flag means for a resume), main (set-up and
loop), step (the training step), nonfinite (skipping NaN/Inf updates, checking state before a
save), stop (SIGINT/SIGTERM), scheduler (learning-rate schedules), checkpoint (atomic
checkpoints, --resume), distributed (torchrun set-up), data (resumable loaders).
"""
from clippo.train.main import main, run
from clippo.train.params import parse_args

__all__ = ["main", "run", "parse_args"]
