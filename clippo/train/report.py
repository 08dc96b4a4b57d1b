"""`--report-to tensorboard[,wandb]` (OpenCLIP's flag): the scalars of metrics.jsonl, also sent
to TensorBoard and/or Weights & Biases. Both are optional packages; asking for one that is not
installed is an error at start-up, before any training step.

Names: a training line's keys go under "train/" (train/loss, train/lr, ...), as OpenCLIP
names them; evaluation keys already carry their group (val/loss, zeroshot/acc1) and keep it.
"""
import json
from pathlib import Path

REPORTERS = ("tensorboard", "wandb")
_INSTALL = {"tensorboard": "pip install tensorboard", "wandb": "pip install wandb"}


def parse_report_to(text):
    """'tensorboard', 'wandb', 'tensorboard,wandb', '' or 'none' -> tuple of reporter names."""
    if text is None:
        return ()
    names = [n.strip().lower() for n in str(text).split(",") if n.strip()]
    if names in ([], ["none"]):
        return ()
    unknown = [n for n in names if n not in REPORTERS]
    if unknown:
        raise ValueError(f"--report-to: unknown {unknown} (choose from {', '.join(REPORTERS)}, "
                         f"comma-separated, or none)")
    return tuple(dict.fromkeys(names))


def check_available(reporters):
    """ValueError naming the missing package (and how to install it) for each reporter whose
    package cannot be imported."""
    missing = []
    for name in reporters:
        try:
            if name == "tensorboard":
                import tensorboard  # noqa: F401  (torch's SummaryWriter needs it)
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            else:
                import wandb  # noqa: F401
        except ImportError:
            missing.append(name)
    if missing:
        raise ValueError("--report-to " + ", ".join(missing) + ": not installed ("
                         + "; ".join(_INSTALL[m] for m in missing)
                         + "), or leave it out of --report-to")


def scalars(record):
    """{name: float} of a metrics.jsonl record's numbers (step excluded, None dropped)."""
    out = {}
    for key, value in record.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[key if "/" in key else f"train/{key}"] = float(value)
    return out


class Reporters:
    """The open reporters of one run (rank 0): write(record) sends its scalars at its step."""

    def __init__(self, reporters, out_dir, start_step, config=None, project=None):
        self.tb = self.wandb = None
        out_dir = Path(out_dir)
        if "tensorboard" in reporters:
            from torch.utils.tensorboard import SummaryWriter
            # purge_step: events of steps after a resumed checkpoint are dropped (rewritten)
            self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=start_step + 1)
        if "wandb" in reporters:
            import wandb
            id_file = out_dir / "wandb_id.txt"  # a resumed run continues the same wandb run
            run_id = id_file.read_text().strip() if id_file.exists() else None
            if not run_id:
                run_id = wandb.util.generate_id()
                id_file.write_text(run_id + "\n")
            self.wandb = wandb.init(project=project or "clippo", id=run_id, resume="allow",
                                    dir=str(out_dir), name=out_dir.name,
                                    config=json.loads(json.dumps(config or {}, default=str)))

    def write(self, record):
        values = scalars(record)
        if not values:
            return
        step = int(record["step"])
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self):
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def _report_to(text):
    import argparse
    try:
        return ",".join(parse_report_to(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(parser):
    g = parser.add_argument_group("reporting")
    g.add_argument("--report-to", type=_report_to, default="",
                   help="also send metrics.jsonl's scalars to tensorboard, wandb or "
                        "'tensorboard,wandb' (each needs its package; default: neither)")
    g.add_argument("--wandb-project-name", default="clippo",
                   help="the Weights & Biases project (with --report-to wandb)")
