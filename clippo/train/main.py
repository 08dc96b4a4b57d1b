"""`clippo train`: set-up, the training loop, logging, checkpoints and the final model.

    python -m clippo.train --train-data builtin --model Ti/16 --image-size 64 --steps 1000
    torchrun --nproc_per_node 8 -m clippo.train --train-data 'shards/{000000..000999}.tar' ...

Writes, under --output DIR:
    metrics.jsonl         one JSON object per logged step (step, epoch, loss, lr, samples_per_s,
                          skipped, logit_scale, grad_norm, data_time, step_time, batch_size),
                          from rank 0; TensorBoard event files too when tensorboard is installed
    checkpoints/          step_<step>.pt every --save-every steps and at the end (atomic)
    model/                the final model, as CLIPPO.save_pretrained writes it
    args.json             the resolved flags of the (latest) run

Resuming (--resume latest) restores the model, optimizer, loss, step, every rank's RNG states
and data position, and cuts metrics.jsonl back to the checkpoint's step, so the file ends up
as an uninterrupted run's would be (the timings aside).

A full disk while saving a checkpoint leaves the previous checkpoints intact: the failed save
is reported as a warning and training goes on (the next save tries again). Failing to write
the final model is an error.
"""
import contextlib
import functools
import json
import math
import os
import random
import shutil
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from clippo.train import checkpoint as ckpt_lib
from clippo.train import distributed as dist_lib
from clippo.train.data import check_sources, get_data, steps_for_epochs
from clippo.train.params import parse_args
from clippo.train.scheduler import Schedule
from clippo.train.step import ContrastiveTask, train_step

COLLAPSE_TOLERANCE = 1e-3  # |loss - log(batch)| below this: every embedding the same
COLLAPSE_STEPS = 50


class TrainError(ValueError):
    """A problem with the flags, the data or the output directory, found before training."""


# -- model and optimizer ---------------------------------------------------------------------

def build_model(args):
    """The CLIPPO model from --model / --pretrained and the size overrides (on the CPU)."""
    from clippo.factory import add_model_config, create_model

    name = args.model
    if name.lower().endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise TrainError(f"--model {name}: no such model-config file")
        try:
            add_model_config(path)
        except (ValueError, json.JSONDecodeError) as e:
            raise TrainError(f"--model {name}: {e}") from None
        name = path.stem
    overrides = {k: v for k, v in dict(
        image_size=args.image_size, patch_size=args.patch_size, width=args.width,
        depth=args.depth, num_heads=args.heads, mlp_dim=args.mlp_dim,
        out_dim=args.out_dim).items() if v is not None}
    try:
        return create_model(name, pretrained=args.pretrained, **overrides)
    except FileNotFoundError as e:
        raise TrainError(f"--pretrained: {e}") from None
    except (ValueError, TypeError, KeyError) as e:
        raise TrainError(f"cannot build model {args.model!r}: {e}") from None


def param_groups(task, weight_decay):
    """Weight decay on the Dense/Conv kernels only (big_vision's default mask; open_clip
    likewise spares gains, biases and the logit scale): no decay on biases, LayerNorm,
    the position embedding, the MAP probe, the temperature or the loss's bias."""
    decay, no_decay = [], []
    for name, p in task.named_parameters():
        if not p.requires_grad:
            continue
        is_kernel = p.ndim >= 2 and name.endswith(".weight")
        (decay if is_kernel else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(args, task):
    groups = param_groups(task, args.wd)
    if args.opt == "adamw":
        return torch.optim.AdamW(groups, lr=args.lr, betas=(args.beta1, args.beta2),
                                 eps=args.eps)
    if args.opt == "adafactor":
        return torch.optim.Adafactor(groups, lr=args.lr)
    raise TrainError(f"unknown optimizer {args.opt!r}")


def enable_grad_checkpointing(model):
    """Recompute each transformer block in the backward pass instead of keeping its
    activations (the block's forward goes through torch.utils.checkpoint)."""
    from torch.utils.checkpoint import checkpoint
    for block in model.img.Transformer.blocks():
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


# -- output ---------------------------------------------------------------------------------

class MetricsLog:
    """metrics.jsonl (and TensorBoard when installed), rank 0 only."""

    def __init__(self, out_dir, start_step, enabled):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        self._truncate(start_step)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed
            SummaryWriter = None
        if SummaryWriter is not None:
            self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=start_step + 1)

    def _truncate(self, start_step):
        """Keep the lines of steps <= start_step (a resumed run rewrites what follows)."""
        if not self.path.exists():
            return
        kept = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the line a killed run was writing
                if isinstance(record, dict) and isinstance(record.get("step"), int) \
                        and record["step"] <= start_step:
                    kept.append(json.dumps(record) + "\n")
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def write(self, record):
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and value is not None:
                    self.tb.add_scalar(f"train/{key}", value, record["step"])

    def close(self):
        if self.tb is not None:
            self.tb.close()


def save_final_model(model, out_dir):
    """model.save_pretrained into OUTPUT/model, atomically (a temporary directory renamed)."""
    target = Path(out_dir) / "model"
    tmp = target.with_name(f".model.tmp-{uuid.uuid4().hex[:8]}")
    try:
        model.save_pretrained(tmp)
        old = None
        if target.exists():
            old = target.with_name(f".model.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, old)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


# -- set-up checks ----------------------------------------------------------------------------

def _resolve_resume(args, ckpt_dir, env):
    """(path, checkpoint dict) to resume from, or (None, None). Rank 0 picks the file."""
    if not args.resume:
        existing = ckpt_lib.list_checkpoints(ckpt_dir)
        if existing:
            raise TrainError(f"{ckpt_dir} already holds checkpoints (up to step "
                             f"{existing[-1][0]}): pass --resume latest to continue that run, "
                             f"or another --output")
        return None, None
    if args.resume == "latest":
        path = None
        if env.is_master:
            found, _ = ckpt_lib.find_latest(ckpt_dir)
            path = str(found) if found else None
        path = dist_lib.broadcast_object(path, env)
        if path is None:
            return None, None
    else:
        path = args.resume
    try:
        return Path(path), ckpt_lib.load_checkpoint(path)
    except (OSError, ValueError) as e:
        raise TrainError(f"--resume: {e}") from None


def _check_resume_compatible(ckpt, args, env, model):
    if ckpt["world_size"] != env.world_size:
        raise TrainError(f"the checkpoint was written by {ckpt['world_size']} processes; resume "
                         f"it with the same number (this run has {env.world_size})")
    if ckpt["model_config"] != model.config:
        raise TrainError("the checkpoint's model differs from --model and its overrides: "
                         f"checkpoint {ckpt['model_config']}, flags {model.config}")
    for key in ("batch_size", "accum_freq", "train_data", "text_pairs", "loss", "opt"):
        if ckpt["args"].get(key) != getattr(args, key):
            raise TrainError(f"--{key.replace('_', '-')} {getattr(args, key)!r} differs from the "
                             f"checkpoint's {ckpt['args'].get(key)!r}")


def _seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _log(env, message, bar=None):
    if not env.is_master:
        return
    if bar is not None:
        bar.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr, flush=True)


def _guarded_step(module, task, optimizer, batch, env, args, autocast):
    """train_step, except for a batch whose every sample was skipped: no update then (a
    zero loss and row count are reported)."""
    rows = batch["images"].shape[0] + len(batch.get("texts_a") or [])
    zero = torch.zeros((), device=env.device)
    if rows == 0 and not env.distributed:
        return {"loss": zero, "n": 0, "grad_norm": zero}
    try:
        return train_step(module, task, optimizer, batch, device=env.device,
                          accum_freq=args.accum_freq, grad_clip_norm=args.grad_clip_norm,
                          autocast=autocast)
    except ValueError as e:  # every rank's batch empty: the loss says so on every rank alike
        if "at least one pair" not in str(e):
            raise
        optimizer.zero_grad(set_to_none=True)
        return {"loss": zero, "n": 0, "grad_norm": zero}


# -- the run ----------------------------------------------------------------------------------

def run(args):
    """Train as the flags in `args` (an argparse.Namespace from parse_args) say.

    Returns a summary dict: steps, start_step, final_loss, train_seconds, samples_per_s,
    output, metrics, model_dir, checkpoint.
    """
    env = dist_lib.init_distributed(args.device, args.dist_backend)
    try:
        return _run(args, env)
    finally:
        dist_lib.cleanup(env)


def _run(args, env):
    out_dir = Path(args.output)
    ckpt_dir = out_dir / "checkpoints"
    device = env.device
    try:
        check_sources(args)
    except (FileNotFoundError, ValueError) as e:
        raise TrainError(str(e)) from None
    if args.pretrained and not Path(args.pretrained).exists():
        raise TrainError(f"--pretrained {args.pretrained}: no such file or directory")
    if env.is_master:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        ckpt_lib.remove_temporaries(ckpt_dir)
    dist_lib.barrier(env)

    resume_path, ckpt = _resolve_resume(args, ckpt_dir, env)

    _seed_everything(args.seed)  # the same initial weights on every rank
    model = build_model(args)
    image_size = model.config["image_size"]
    if not isinstance(image_size, int):
        raise TrainError(f"the trainer needs a square model image size, got {image_size}")
    from clippo.loss import create_loss
    loss_fn = create_loss(args.loss)
    task = ContrastiveTask(model, loss_fn).to(device)
    optimizer = build_optimizer(args, task)
    if ckpt is not None:
        _check_resume_compatible(ckpt, args, env, model)
        task.load_state_dict(ckpt["task"])
        optimizer.load_state_dict(ckpt["optimizer"])
    if args.grad_checkpointing:
        enable_grad_checkpointing(model)
    if args.torchcompile:
        model.img.compile()

    module = task
    if env.distributed:
        from torch.nn.parallel import DistributedDataParallel
        module = DistributedDataParallel(
            task, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=False)

    try:
        data = get_data(args, image_size, env.rank, env.world_size)
    except FileNotFoundError as e:
        raise TrainError(str(e)) from None
    total_steps = args.steps or steps_for_epochs(args.epochs or 1.0, data.steps_per_epoch)
    try:
        schedule = Schedule(base_lr=args.lr, total_steps=total_steps, kind=args.lr_scheduler,
                            warmup=args.warmup, cooldown=args.cooldown, timescale=args.timescale,
                            lr_end=args.lr_end)
    except ValueError as e:
        raise TrainError(str(e)) from None

    start_step = 0
    watchdog = {"streak": 0, "warned": False}
    resumed_interval = None
    if ckpt is not None:
        start_step = int(ckpt["step"])
        data.load_state_dict(ckpt["data"][env.rank])
        watchdog = dict(ckpt.get("watchdog", watchdog))
        resumed_interval = ckpt["log_interval"]
    batches = iter(data)  # starts the workers (and draws their base seed)
    if ckpt is not None:
        ckpt_lib.set_rng_state(ckpt["rng"][env.rank])
    else:
        torch.manual_seed(args.seed * 1_000_003 + env.rank)
    del ckpt  # the optimizer and model hold their copies

    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    autocast = (functools.partial(torch.autocast, device.type, dtype=torch.bfloat16)
                if precision == "bf16" else None)

    metrics = MetricsLog(out_dir, start_step, env.is_master)
    if env.is_master:
        (out_dir / "args.json").write_text(json.dumps(vars(args), indent=2) + "\n")
    global_batch = args.batch_size * env.world_size
    cfg = model.config
    _log(env, f"clippo train: {args.model} (width {cfg['width']}, depth {cfg['depth']}, "
              f"patch {cfg['patch_size']}, {image_size} px), "
              f"{sum(p.numel() for p in model.parameters()):,} parameters, on {device} "
              f"x{env.world_size} ({precision}); data: {data.describe}; global batch "
              f"{global_batch}; steps {start_step} -> {total_steps}"
              + (f"; resumed from {resume_path}" if resume_path else ""))

    def save_checkpoint(step):
        states = dist_lib.all_gather_object(
            {"rng": ckpt_lib.rng_state(), "data": data.state_dict()}, env)
        if not env.is_master:
            return None
        payload = {
            "format": ckpt_lib.FORMAT, "version": ckpt_lib.VERSION, "step": step,
            "epoch": data.epoch(step), "world_size": env.world_size,
            "task": task.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": {"step": step, **schedule.state_dict()},
            "model_config": model.config, "args": vars(args), "watchdog": dict(watchdog),
            # the partly filled logging interval, so the next metrics line averages the same
            # steps as an uninterrupted run's
            "log_interval": {"stats": stats.cpu(), "steps": interval["steps"]},
            "rng": [s["rng"] for s in states], "data": [s["data"] for s in states],
        }
        path = ckpt_dir / ckpt_lib.checkpoint_name(step)
        try:
            ckpt_lib.atomic_save(payload, path)
        except OSError as e:
            _log(env, f"WARNING: could not write checkpoint {path} ({e}); the previous "
                      f"checkpoints are intact and training goes on", bar)
            return None
        ckpt_lib.prune(ckpt_dir, args.keep)
        return path

    from tqdm import tqdm
    bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
               disable=args.no_progress or not env.is_master)
    stats = torch.zeros(3, dtype=torch.float64, device=device)  # loss, rows, skipped (interval)
    streak = torch.tensor(float(watchdog["streak"]), dtype=torch.float64, device=device)
    longest = streak.clone()
    interval = {"steps": 0, "data": 0.0, "start": time.perf_counter()}
    if resumed_interval is not None:
        stats.copy_(resumed_interval["stats"])
        interval["steps"] = int(resumed_interval["steps"])
    last = {"loss": None, "checkpoint": None}
    train_start = time.perf_counter()
    samples_total = 0.0
    step = start_step

    while step < total_steps:
        lr = schedule(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        batch = next(batches)
        interval["data"] += time.perf_counter() - t0
        out = _guarded_step(module, task, optimizer, batch, env, args, autocast)
        skipped = int(batch.get("skipped", 0))
        local = torch.stack([out["loss"].double(),
                             torch.tensor(float(out["n"]), dtype=torch.float64, device=device),
                             torch.tensor(float(skipped), dtype=torch.float64, device=device)])
        dist_lib.all_reduce_sum(local, env)
        step_loss, rows = local[0] / env.world_size, local[1]
        stats += torch.stack([step_loss, rows, local[2]])
        if args.loss == "softmax":  # collapse: loss == log(rows), no sync needed
            near = ((step_loss - torch.log(rows.clamp_min(1))).abs() < COLLAPSE_TOLERANCE) \
                & (rows > 1)
            streak = (streak + 1) * near
            longest = torch.maximum(longest, streak)
        step += 1
        interval["steps"] += 1
        bar.update(1)

        if step % args.log_every == 0 or step == total_steps:
            values = stats.tolist()
            elapsed = time.perf_counter() - interval["start"]
            n = interval["steps"]
            last["loss"] = values[0] / n
            samples_total += values[1]
            record = {
                "step": step, "epoch": data.epoch(step - 1), "loss": last["loss"], "lr": lr,
                "samples_per_s": values[1] / elapsed if elapsed > 0 else None,
                "skipped": int(values[2]), "batch_size": int(values[1] / n),
                "logit_scale": float(model.temperature.item()),
                "grad_norm": float(out["grad_norm"].item()),
                "data_time": interval["data"] / n, "step_time": elapsed / n,
            }
            if args.loss == "sigmoid":
                record["logit_bias"] = float(loss_fn.logit_bias.item())
            metrics.write(record)
            bar.set_postfix(loss=f"{last['loss']:.4f}",
                            samples_s=f"{record['samples_per_s'] or 0:,.0f}", refresh=False)
            watchdog["streak"] = int(streak.item())
            if int(longest.item()) >= COLLAPSE_STEPS and not watchdog["warned"]:
                watchdog["warned"] = True
                _log(env, f"WARNING: the loss has sat at log(batch size) for "
                          f"{int(longest.item())} steps (step {step}): every embedding is the "
                          f"same (collapse). Lower --lr (e.g. to {args.lr / 3:.2g}), keep "
                          f"--grad-clip-norm 1.0 and a warm-up (--warmup 0.1).", bar)
            stats.zero_()
            interval.update(steps=0, data=0.0, start=time.perf_counter())

        if (args.save_every and step % args.save_every == 0) or step == total_steps:
            watchdog["streak"] = int(streak.item())
            path = save_checkpoint(step)
            last["checkpoint"] = str(path) if path else last["checkpoint"]

    bar.close()
    metrics.close()
    train_seconds = time.perf_counter() - train_start
    model_dir = None
    if env.is_master:
        try:
            model_dir = save_final_model(model, out_dir)
        except OSError as e:
            raise OSError(f"could not write the final model to {out_dir / 'model'}: {e}") from e
        _log(env, f"clippo train: done, {total_steps} steps; model in {model_dir}")
    dist_lib.barrier(env)
    return {
        "steps": total_steps, "start_step": start_step, "final_loss": last["loss"],
        "train_seconds": train_seconds,
        "samples_per_s": samples_total / train_seconds if train_seconds > 0 else None,
        "output": str(out_dir), "metrics": str(metrics.path),
        "model_dir": str(model_dir) if model_dir else str(out_dir / "model"),
        "checkpoint": last["checkpoint"],
    }


def main(argv=None):
    """Entry point of `clippo train` / `python -m clippo.train`; returns the exit status."""
    args = parse_args(argv)
    try:
        run(args)
    except (TrainError, ValueError, FileNotFoundError) as e:
        print(f"clippo train: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("clippo train: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
