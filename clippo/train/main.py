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
        out_dim=args.out_dim, text_tokens=args.text_tokens).items() if v is not None}
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
            _log(env, f"clippo train: no complete checkpoint in {ckpt_dir}: starting from "
                      f"step 0")
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
    # checkpoints from before text_tokens existed encoded every text patch
    if {"text_tokens": "all", **ckpt["model_config"]} != model.config:
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


# -- the run ----------------------------------------------------------------------------------

def run(args):
    """Train as the flags in `args` (an argparse.Namespace from parse_args) say.

    Returns a summary dict: steps, start_step, final_loss, train_seconds, samples_per_s,
    output, metrics, model_dir, checkpoint.
    """
    env = dist_lib.init_distributed(args.device, args.dist_backend)
    try:
        return Trainer(args, env).train()
    finally:
        dist_lib.cleanup(env)


class Trainer:
    """One run: set up from the flags (and a checkpoint), then `train()`."""

    def __init__(self, args, env):
        self.args, self.env, self.device = args, env, env.device
        self.out_dir = Path(args.output)
        self.ckpt_dir = self.out_dir / "checkpoints"
        try:
            check_sources(args)
        except (FileNotFoundError, ValueError) as e:
            raise TrainError(str(e)) from None
        if args.pretrained and not Path(args.pretrained).exists():
            raise TrainError(f"--pretrained {args.pretrained}: no such file or directory")
        if env.is_master:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            ckpt_lib.remove_temporaries(self.ckpt_dir)
        dist_lib.barrier(env)
        self.resume_path, ckpt = _resolve_resume(args, self.ckpt_dir, env)

        _seed_everything(args.seed)  # the same initial weights on every rank
        self.model = build_model(args)
        self.image_size = self.model.config["image_size"]
        if not isinstance(self.image_size, int):
            raise TrainError(f"the trainer needs a square model image size, got "
                             f"{self.image_size}")
        from clippo.loss import create_loss
        self.loss_fn = create_loss(args.loss)
        self.task = ContrastiveTask(self.model, self.loss_fn,
                                    patch_dropout=args.force_patch_dropout or 0.0).to(self.device)
        self.optimizer = build_optimizer(args, self.task)
        if ckpt is not None:
            _check_resume_compatible(ckpt, args, env, self.model)
            self.task.load_state_dict(ckpt["task"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        if args.grad_checkpointing:
            enable_grad_checkpointing(self.model)
        if args.torchcompile:
            self.model.img.compile()
        self.module = self.task
        if env.distributed:
            from torch.nn.parallel import DistributedDataParallel
            self.module = DistributedDataParallel(
                self.task, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=False)

        try:
            self.data = get_data(args, self.image_size, env.rank, env.world_size)
        except FileNotFoundError as e:
            raise TrainError(str(e)) from None
        self.total_steps = args.steps or steps_for_epochs(args.epochs or 1.0,
                                                          self.data.steps_per_epoch)
        try:
            self.schedule = Schedule(
                base_lr=args.lr, total_steps=self.total_steps, kind=args.lr_scheduler,
                warmup=args.warmup, cooldown=args.cooldown, timescale=args.timescale,
                lr_end=args.lr_end)
        except ValueError as e:
            raise TrainError(str(e)) from None
        precision = args.precision or ("bf16" if self.device.type == "cuda" else "fp32")
        self.precision = precision
        self.autocast = (functools.partial(torch.autocast, self.device.type,
                                           dtype=torch.bfloat16) if precision == "bf16" else None)

        # what a checkpoint carries besides the weights: step, data position, RNG states, the
        # collapse watchdog and the partly filled logging interval
        self.step = 0
        self.watchdog = {"streak": 0, "warned": False}
        self.stats = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss, rows, skip
        self.interval_steps = 0
        if ckpt is not None:
            self.step = int(ckpt["step"])
            self.data.load_state_dict(ckpt["data"][env.rank])
            self.watchdog = dict(ckpt["watchdog"])
            self.stats.copy_(ckpt["log_interval"]["stats"])
            self.interval_steps = int(ckpt["log_interval"]["steps"])
        self.batches = iter(self.data)  # starts the workers (and draws their base seed)
        if ckpt is not None:
            ckpt_lib.set_rng_state(ckpt["rng"][env.rank])
        else:
            torch.manual_seed(args.seed * 1_000_003 + env.rank)
        self.start_step = self.step
        self.metrics = MetricsLog(self.out_dir, self.step, env.is_master)
        self.bar = None

    def log(self, message):
        _log(self.env, message, self.bar)

    def save_checkpoint(self):
        """Gather every rank's RNG and data state; rank 0 writes the file (atomically)."""
        states = dist_lib.all_gather_object(
            {"rng": ckpt_lib.rng_state(), "data": self.data.state_dict()}, self.env)
        if not self.env.is_master:
            return None
        payload = {
            "format": ckpt_lib.FORMAT, "version": ckpt_lib.VERSION, "step": self.step,
            "epoch": self.data.epoch(self.step), "world_size": self.env.world_size,
            "task": self.task.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": {"step": self.step, **self.schedule.state_dict()},
            "model_config": self.model.config, "args": vars(self.args),
            "watchdog": dict(self.watchdog),
            "log_interval": {"stats": self.stats.cpu(), "steps": self.interval_steps},
            "rng": [s["rng"] for s in states], "data": [s["data"] for s in states],
        }
        path = self.ckpt_dir / ckpt_lib.checkpoint_name(self.step)
        try:
            ckpt_lib.atomic_save(payload, path)
        except OSError as e:
            self.log(f"WARNING: could not write checkpoint {path} ({e}); the previous "
                     f"checkpoints are intact and training goes on")
            return None
        ckpt_lib.prune(self.ckpt_dir, self.args.keep)
        return path

    def _step(self, batch):
        """One update (none for a batch whose every sample was skipped) -> device tensors
        (loss, rows, skipped) summed over ranks, the loss as the ranks' mean."""
        args, env = self.args, self.env
        local = torch.zeros(3, dtype=torch.float64, device=self.device)
        local[2].fill_(int(batch.get("skipped", 0)))
        rows = batch["images"].shape[0] + len(batch.get("texts_a") or [])
        out = None
        if rows or env.distributed:
            try:
                out = train_step(self.module, self.task, self.optimizer, batch,
                                 device=self.device, accum_freq=args.accum_freq,
                                 grad_clip_norm=args.grad_clip_norm, autocast=self.autocast)
            except ValueError as e:  # every rank's batch empty: each rank's loss says so
                if "at least one pair" not in str(e):
                    raise
                self.optimizer.zero_grad(set_to_none=True)
        if out is not None:
            local[0].copy_(out["loss"])
            local[1].fill_(out["n"])
            self.grad_norm = out["grad_norm"]
        dist_lib.all_reduce_sum(local, env)
        local[0] /= env.world_size
        return local

    def _watch_collapse(self, step_stats):
        """Count, on the device, consecutive steps whose loss is log(rows): no sync."""
        loss, rows = step_stats[0], step_stats[1]
        near = ((loss - torch.log(rows.clamp_min(1))).abs() < COLLAPSE_TOLERANCE) & (rows > 1)
        self.streak = (self.streak + 1) * near
        self.longest = torch.maximum(self.longest, self.streak)

    def _log_interval(self, lr, elapsed, data_time):
        loss_sum, rows, skipped = self.stats.tolist()
        n = self.interval_steps
        loss = loss_sum / n
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"the loss is {loss} at step {self.step}; the last checkpoint is kept in "
                f"{self.ckpt_dir} (resume with a lower --lr)")
        record = {
            "step": self.step, "epoch": self.data.epoch(self.step - 1), "loss": loss, "lr": lr,
            "samples_per_s": rows / elapsed if elapsed > 0 else None,
            "skipped": int(skipped), "batch_size": int(rows / n),
            "logit_scale": float(self.model.temperature.item()),
            "grad_norm": float(self.grad_norm.item()) if self.grad_norm is not None else None,
            "data_time": data_time / n, "step_time": elapsed / n,
        }
        if self.args.loss == "sigmoid":
            record["logit_bias"] = float(self.loss_fn.logit_bias.item())
        self.metrics.write(record)
        self.bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{record['samples_per_s'] or 0:,.0f}",
                             refresh=False)
        self.watchdog["streak"] = int(self.streak.item())
        longest = int(self.longest.item())
        if longest >= COLLAPSE_STEPS and not self.watchdog["warned"]:
            self.watchdog["warned"] = True
            self.log(f"WARNING: the loss has sat at log(batch size) for {longest} steps (step "
                     f"{self.step}): every embedding is the same (collapse). Lower --lr (e.g. "
                     f"to {self.args.lr / 3:.2g}), keep --grad-clip-norm 1.0 and a warm-up "
                     f"(--warmup 0.1).")
        self.stats.zero_()
        self.interval_steps = 0
        return loss, rows

    def train(self):
        args, env = self.args, self.env
        if env.is_master:
            (self.out_dir / "args.json").write_text(json.dumps(vars(args), indent=2) + "\n")
        cfg = self.model.config
        self.log(f"clippo train: {args.model} (width {cfg['width']}, depth {cfg['depth']}, "
                 f"patch {cfg['patch_size']}, {self.image_size} px), "
                 f"{self.model.num_params():,} parameters, on {self.device} x{env.world_size} "
                 f"({self.precision}); data: {self.data.describe}; global batch "
                 f"{args.batch_size * env.world_size}; steps {self.step} -> {self.total_steps}"
                 + (f"; resumed from {self.resume_path}" if self.resume_path else ""))
        from tqdm import tqdm
        self.bar = tqdm(total=self.total_steps, initial=self.step, unit="step",
                        dynamic_ncols=True, disable=args.no_progress or not env.is_master)
        self.streak = torch.tensor(float(self.watchdog["streak"]), dtype=torch.float64,
                                   device=self.device)
        self.longest = self.streak.clone()
        self.grad_norm = None
        final_loss, checkpoint, samples = None, None, 0.0
        train_start = interval_start = time.perf_counter()
        data_time = 0.0
        while self.step < self.total_steps:
            lr = self.schedule(self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            t0 = time.perf_counter()
            batch = next(self.batches)
            data_time += time.perf_counter() - t0
            step_stats = self._step(batch)
            self.stats += step_stats
            if args.loss == "softmax":
                self._watch_collapse(step_stats)
            self.step += 1
            self.interval_steps += 1
            self.bar.update(1)
            if self.step % args.log_every == 0 or self.step == self.total_steps:
                now = time.perf_counter()
                final_loss, rows = self._log_interval(lr, now - interval_start, data_time)
                samples += rows
                interval_start, data_time = time.perf_counter(), 0.0
            if (args.save_every and self.step % args.save_every == 0) \
                    or self.step == self.total_steps:
                self.watchdog["streak"] = int(self.streak.item())
                checkpoint = self.save_checkpoint() or checkpoint
        self.bar.close()
        self.metrics.close()
        train_seconds = time.perf_counter() - train_start
        model_dir = self.out_dir / "model"
        if env.is_master:
            try:
                save_final_model(self.model, self.out_dir)
            except OSError as e:
                raise OSError(f"could not write the final model to {model_dir}: {e}") from e
            self.log(f"clippo train: done, {self.total_steps} steps; model in {model_dir}")
        dist_lib.barrier(env)
        return {
            "steps": self.total_steps, "start_step": self.start_step, "final_loss": final_loss,
            "train_seconds": train_seconds,
            "samples_per_s": samples / train_seconds if train_seconds > 0 else None,
            "output": str(self.out_dir), "metrics": str(self.metrics.path),
            "model_dir": str(model_dir),
            "checkpoint": str(checkpoint) if checkpoint else None,
        }


def main(argv=None):
    """Entry point of `clippo train` / `python -m clippo.train`; returns the exit status."""
    args = parse_args(argv)
    try:
        run(args)
    except (TrainError, ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"clippo train: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("clippo train: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
