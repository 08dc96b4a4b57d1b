"""`clippo train`: set-up, the training loop, logging, checkpoints and the final model.

    python -m clippo.train --train-data builtin --model Ti/16 --image-size 64 --steps 1000
    torchrun --nproc_per_node 8 -m clippo.train --train-data 'shards/{000000..000999}.tar' ...

Writes, under --output DIR:
    metrics.jsonl         one JSON object per logged step (step, epoch, loss, lr, samples_per_s,
                          skipped, nonfinite_steps, logit_scale, grad_norm, data_time,
                          step_time, batch_size), from rank 0 (and, with --val-data /
                          --zeroshot-data, the evaluation's lines: step, val/..., zeroshot/...);
                          --report-to sends the same scalars to TensorBoard
                          (OUTPUT/tensorboard) and/or wandb
    eval.png              the evaluation's curves (with --val-data / --zeroshot-data)
    checkpoints/          step_<step>.pt every --save-every steps, at the end and when stopped
                          by SIGINT/SIGTERM (atomic); with --fsdp-checkpoint sharded, its
                          shards in step_<step>.dcp/
    model/                the final model, as CLIPPO.save_pretrained writes it
    args.json             the resolved flags of the (latest) run: `clippo train --config
                          DIR/args.json --resume latest` continues it

Resuming (--resume latest) restores the model, optimizer, loss, step, every rank's RNG states
and data position, and appends to metrics.jsonl (lines of steps after the checkpoint's, which a
killed run wrote, are dropped), so the file ends up as an uninterrupted run's would be (the
timings aside). A resume whose model, data or schedule flags differ from the checkpoint's is
refused, naming them (--resume-allow-changes proceeds with a warning).

Non-finite steps: a step whose gradient norm is NaN/Inf makes no update (weights and optimizer
moments stay); it and a step with a NaN/Inf loss are counted (nonfinite_steps), and
--max-nonfinite of them in a row stop the run with an error naming the last checkpoint. No
checkpoint or model/ holding a NaN/Inf tensor is ever written.

Skipped samples (unreadable images, empty captions) are counted; the loss is averaged over the
steps that had samples; above 1% skipped in a logging interval a warning names a few of them,
and above --max-skip-fraction (over the samples read since the last check, made at logged
steps once 100 samples were read) the run stops with an error.

SIGINT/SIGTERM: see clippo.train.stop (checkpoint of the current step, exit code 128 + signal).

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
import signal
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from clippo.train import checkpoint as ckpt_lib
from clippo.train import distributed as dist_lib
from clippo.train import evaluate as eval_lib
from clippo.train import fsdp as fsdp_lib
from clippo.train import report as report_lib
from clippo.train.data import check_sources, get_data, steps_for_epochs
from clippo.train.nonfinite import nonfinite_tensors
from clippo.train.params import SKIP_CHECK_SAMPLES, changed_flags, parse_args, run_config
from clippo.train.scheduler import Schedule
from clippo.train.step import ContrastiveTask, count_rows, train_step
from clippo.train.stop import StopRequested, StopSignals

COLLAPSE_TOLERANCE = 1e-3  # |loss - log(batch)| below this: every embedding the same
COLLAPSE_STEPS = 50
SKIP_WARN_SHARE = 0.01  # warn when more of a logging interval's samples were skipped
SKIP_NAMES_SHOWN = 3

# the per-step statistics summed over ranks and over a logging interval (a float64 vector)
LOSS, ROWS, SKIPPED, COUNTED, NONFINITE, STOP = range(6)


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
    """AdamW (torch's fused kernel where the device has one: it skips a non-finite step on
    the device, see clippo.train.nonfinite) or Adafactor."""
    groups = param_groups(task, args.wd)
    if args.opt == "adamw":
        kw = dict(lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps)
        try:
            return torch.optim.AdamW(groups, fused=True, **kw)
        except (RuntimeError, ValueError):  # no fused kernel for these parameters
            return torch.optim.AdamW(param_groups(task, args.wd), **kw)
    if args.opt == "adafactor":
        return torch.optim.Adafactor(groups, lr=args.lr)
    raise TrainError(f"unknown optimizer {args.opt!r}")


def configure_cuda(device):
    """On CUDA, TF32 for float32 matmuls and cuDNN convolutions, as OpenCLIP's trainer sets
    them (a 10-bit mantissa inside fp32 GEMMs; bf16 autocast is unaffected)."""
    if torch.device(device).type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def clamp_logit_scale(model, logit_scale_max):
    """Keep the learned temperature t = log(logit scale) in [0, log(logit_scale_max)], as
    OpenCLIP clamps its logit_scale after every update (0: no clamp; the reference, big_vision,
    learns t unclamped)."""
    if logit_scale_max:
        with torch.no_grad():
            model.t.clamp_(0.0, math.log(logit_scale_max))


def enable_grad_checkpointing(model):
    """Recompute each transformer block in the backward pass instead of keeping its
    activations (the block's forward goes through torch.utils.checkpoint)."""
    from torch.utils.checkpoint import checkpoint
    for block in model.img.Transformer.blocks():
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


# -- output ---------------------------------------------------------------------------------

class MetricsLog:
    """metrics.jsonl (and the --report-to reporters), rank 0 only."""

    def __init__(self, out_dir, start_step, enabled, reporters=(), config=None, project=None):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.reporters = None
        if not enabled:
            return
        self._drop_after(start_step)
        self.reporters = report_lib.Reporters(reporters, out_dir, start_step, config, project)

    def _drop_after(self, start_step):
        """A resumed run appends: the file keeps every line of steps <= start_step; lines of
        later steps (written by a killed run after its last checkpoint, and written again by
        this run) or cut short are dropped. The file is rewritten (atomically) only then."""
        if not self.path.exists():
            return
        kept, dropped = [], False
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    dropped = True  # the line a killed run was writing
                    continue
                if isinstance(record, dict) and isinstance(record.get("step"), int) \
                        and record["step"] <= start_step:
                    kept.append(line if line.endswith("\n") else line + "\n")
                else:
                    dropped = True
        if not dropped:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def write(self, record):
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self.reporters.write(record)

    def close(self):
        if self.reporters is not None:
            self.reporters.close()


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


def global_batch(batch_size, accum_freq, world_size):
    """Samples per optimizer step over all ranks (OpenCLIP's effective batch)."""
    return batch_size * accum_freq * world_size


def check_world_size_change(ckpt, args, env):
    """None when the checkpoint was written with this run's processes, --batch-size and
    --accum-freq; else the message to log for a resume that splits the same global batch
    (per-process --batch-size x --accum-freq x processes) otherwise; TrainError for another
    global batch."""
    old_world = int(ckpt["world_size"])
    old = ckpt["args"]
    before = global_batch(old["batch_size"], old.get("accum_freq", 1), old_world)
    now = global_batch(args.batch_size, args.accum_freq, env.world_size)
    if before != now:
        how = [f"--batch-size {before // (args.accum_freq * env.world_size)}"
               if before % (args.accum_freq * env.world_size) == 0 else None,
               f"--accum-freq {before // (args.batch_size * env.world_size)}"
               if before % (args.batch_size * env.world_size) == 0 else None]
        how = [h for h in how if h]
        hint = (f" (keep it with {' or '.join(how)})" if how else
                f" (no per-rank --batch-size x --accum-freq gives {before} on "
                f"{env.world_size} processes)")
        raise TrainError(
            f"the checkpoint's global batch is {before} ({old['batch_size']} per rank x "
            f"accum {old.get('accum_freq', 1)} x {old_world} processes); this run's is {now} "
            f"({args.batch_size} x {args.accum_freq} x {env.world_size}): a resume must keep "
            f"the global batch{hint}")
    split = (old["batch_size"], old.get("accum_freq", 1), old_world)
    if split == (args.batch_size, args.accum_freq, env.world_size):
        return None
    return (f"clippo train: resuming a checkpoint of {split[0]} per process x accum {split[1]} "
            f"x {old_world} processes as {args.batch_size} x {args.accum_freq} x "
            f"{env.world_size}, the same global batch ({now}): the steps take the same "
            f"samples and the optimizer and schedule continue, but the run is no longer "
            f"bit-exact with an uninterrupted one")


def _check_resume_compatible(ckpt, args, env, model):
    # checkpoints from before text_tokens existed encoded every text patch
    if {"text_tokens": "all", **ckpt["model_config"]} != model.config:
        raise TrainError("the checkpoint's model differs from --model and its overrides: "
                         f"checkpoint {ckpt['model_config']}, flags {model.config}")
    # the batch flags may change when the global batch stays (check_world_size_change)
    changes = changed_flags(ckpt["args"], args, ckpt["world_size"], env.world_size,
                            keep_global_batch=True)
    if not changes:
        return
    listed = ", ".join(f"--{flag.replace('_', '-')} {old!r} -> {new!r}"
                       for flag, old, new in changes)
    if args.resume_allow_changes:
        _log(env, f"WARNING: resuming with flags that differ from the checkpoint's run "
                  f"(--resume-allow-changes): {listed}; the run no longer continues exactly")
        return
    raise TrainError(f"these flags differ from the checkpoint's run: {listed}. Resume with the "
                     f"run's own flags (clippo train --config {Path(args.output) / 'args.json'} "
                     f"--resume latest), or pass --resume-allow-changes to go on with the new "
                     f"ones")


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
        self.bar = None  # the progress bar, during train()
        self.out_dir = Path(args.output)
        self.ckpt_dir = self.out_dir / "checkpoints"
        try:
            self.reporters = report_lib.parse_report_to(args.report_to)
            report_lib.check_available(self.reporters)  # a missing package: fail before training
            check_sources(args)
        except (FileNotFoundError, ValueError) as e:
            raise TrainError(str(e)) from None
        if args.pretrained and not Path(args.pretrained).exists():
            raise TrainError(f"--pretrained {args.pretrained}: no such file or directory")
        if env.is_master:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            ckpt_lib.remove_temporaries(self.ckpt_dir)
            fsdp_lib.remove_orphan_shards(self.ckpt_dir)
        dist_lib.barrier(env)
        self.resume_path, ckpt = _resolve_resume(args, self.ckpt_dir, env)

        configure_cuda(self.device)
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
        self.world_change = None
        if ckpt is not None:
            if ckpt.get("sharded") and not args.fsdp:
                raise TrainError(f"{self.resume_path} is a sharded --fsdp checkpoint: resume "
                                 f"it with --fsdp")
            try:
                self.world_change = check_world_size_change(ckpt, args, env)
            except TrainError:  # another global batch: listed by the flag guard below
                if not args.resume_allow_changes:
                    raise
            _check_resume_compatible(ckpt, args, env, self.model)
            if ckpt.get("task") is not None:  # a sharded one is loaded once sharded
                self.task.load_state_dict(ckpt["task"])
            if not args.fsdp:
                self.optimizer.load_state_dict(ckpt["optimizer"])
        if args.grad_checkpointing:
            enable_grad_checkpointing(self.model)
        if args.torchcompile:
            self.model.img.compile()
        self.module = self.task
        if args.fsdp:
            self._shard(ckpt)
        elif env.distributed:
            from torch.nn.parallel import DistributedDataParallel
            self.module = DistributedDataParallel(
                self.task, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=False)

        try:
            self.data = get_data(args, self.image_size, env.rank, env.world_size)
        except FileNotFoundError as e:
            raise TrainError(str(e)) from None
        try:
            self.evaluator = (eval_lib.Evaluator(args, self.image_size, env)
                              if eval_lib.enabled(args) else None)
        except ValueError as e:
            raise TrainError(str(e)) from None
        self._warn_batch_larger_than_data()
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
        # streak: the collapse watchdog's; nonfinite_streak: non-finite steps in a row;
        # skip_window: (samples read, skipped) since the last --max-skip-fraction check
        self.watchdog = {"streak": 0, "warned": False, "nonfinite_streak": 0,
                         "skip_window": [0, 0]}
        self.stats = torch.zeros(STOP, dtype=torch.float64, device=self.device)  # LOSS..NONFINITE
        self.interval_steps = 0
        if ckpt is not None:
            self.step = int(ckpt["step"])
            # the global data position is the same in every rank's state; streamed shards'
            # states refuse another world size themselves
            try:
                self.data.load_state_dict(ckpt["data"][min(env.rank, len(ckpt["data"]) - 1)],
                                          strict=not args.resume_allow_changes)
            except ValueError as e:
                raise TrainError(f"--resume: {e}") from None
            self.watchdog.update(ckpt["watchdog"])
            saved = ckpt["log_interval"]["stats"]
            self.stats[:len(saved)].copy_(saved)
            self.interval_steps = int(ckpt["log_interval"]["steps"])
        self.last_checkpoint = self.resume_path
        self.batches = iter(self.data)
        if ckpt is not None and len(ckpt["rng"]) == env.world_size:
            ckpt_lib.set_rng_state(ckpt["rng"][env.rank])
        else:
            torch.manual_seed(args.seed * 1_000_003 + env.rank)
        self.start_step = self.step
        self.metrics = MetricsLog(self.out_dir, self.step, env.is_master, self.reporters,
                                  config=vars(args), project=args.wandb_project_name)
        self.skip_names = []  # a few names of this interval's skipped samples (this rank)
        self.stop_signals = StopSignals()
        self.stop_pending = None

    def log(self, message):
        _log(self.env, message, self.bar)

    # -- --fsdp (clippo.train.fsdp) ----------------------------------------------------------
    def _shard(self, ckpt):
        """fully_shard the task; the optimizer is built on the sharded parameters."""
        try:
            fsdp_lib.check_supported(self.env)
        except ValueError as e:
            raise TrainError(str(e)) from None
        fsdp_lib.shard(self.task, self.device)
        self.optimizer = build_optimizer(self.args, self.task)
        if ckpt is None:
            return
        if ckpt.get("sharded"):
            fsdp_lib.load_sharded(self.task, self.optimizer, self.resume_path)
        else:
            fsdp_lib.load_full_state(self.task, self.optimizer, ckpt["optimizer"])

    def _make_task(self):
        from clippo.loss import create_loss
        from clippo.model.clippo import CLIPPO
        return ContrastiveTask(CLIPPO.from_config(self.model.config), create_loss(self.args.loss))

    def plain_task(self):
        """The task with whole (unsharded) weights: itself, or under --fsdp a gathered copy on
        every rank (a collective: every rank calls it)."""
        if not self.args.fsdp:
            return self.task
        return fsdp_lib.plain_task(self.task, self._make_task).to(self.device)

    def _warn_batch_larger_than_data(self):
        n = self.data.num_samples
        batch = self.data.images_per_step  # one loss over the whole accumulated batch
        if n and batch > n:
            self.log(f"WARNING: the global batch of image-text pairs ({batch}) is larger than "
                     f"the dataset ({n} samples): batches repeat samples, and a repeated pair "
                     f"is a false negative of itself in the contrastive loss. Use a smaller "
                     f"--batch-size or more data.")

    def _resume_command(self):
        launcher = "clippo train"
        if self.env.distributed:  # the user's own torchrun options go where "..." stands
            launcher = "torchrun ... -m clippo.train"
        return f"{launcher} --config {self.out_dir / 'args.json'} --resume latest"

    def _check_state_finite(self):
        """FloatingPointError before a save if a weight or optimizer state is NaN/Inf."""
        task_state, optimizer_state = self.task.state_dict(), self.optimizer.state_dict()["state"]
        if self.args.fsdp:  # each rank checks its own shards
            task_state = fsdp_lib.local_shards(task_state)
            optimizer_state = fsdp_lib.local_shards(optimizer_state)
        bad = nonfinite_tensors(task_state, optimizer_state)
        if self.args.fsdp:
            bad = sorted({name for part in dist_lib.all_gather_object(bad, self.env)
                          for name in part})
        if bad:
            raise FloatingPointError(
                f"at step {self.step}, {len(bad)} tensors of the model/optimizer state are "
                f"NaN or Inf (e.g. {', '.join(bad[:3])}); nothing was saved. "
                + self._last_good())

    def _last_good(self):
        if self.last_checkpoint is None:
            return "No checkpoint was written before; start again with a lower --lr."
        return (f"The last good checkpoint is {self.last_checkpoint}: resume from it with a "
                f"lower --lr, e.g. clippo train --config {self.out_dir / 'args.json'} --resume "
                f"{self.last_checkpoint} --lr {self.args.lr / 10:.2g} --resume-allow-changes")

    def _check_nonfinite_streak(self):
        """FloatingPointError after --max-nonfinite non-finite steps in a row (checked at
        logged and saved steps from device counters: no host sync in the other steps)."""
        longest, streak = (int(v) for v in torch.stack(
            [self.nonfinite_longest, self.nonfinite_streak]).tolist())
        self.watchdog["nonfinite_streak"] = streak
        self.nonfinite_longest.copy_(self.nonfinite_streak)
        if longest >= self.args.max_nonfinite:
            raise FloatingPointError(
                f"{longest} steps in a row up to step {self.step} had a NaN/Inf gradient "
                f"norm or loss (--max-nonfinite {self.args.max_nonfinite}); their updates "
                f"were skipped. " + self._last_good())

    def save_checkpoint(self):
        """Gather every rank's RNG and data state; rank 0 writes the file (atomically).
        Never a state holding NaN/Inf (FloatingPointError instead)."""
        self._check_nonfinite_streak()
        self._check_state_finite()
        states = dist_lib.all_gather_object(
            {"rng": ckpt_lib.rng_state(), "data": self.data.state_dict()}, self.env)
        path = self.ckpt_dir / ckpt_lib.checkpoint_name(self.step)
        sharded = None
        if not self.args.fsdp:
            task_state, optimizer_state = (self.task.state_dict(), self.optimizer.state_dict()) \
                if self.env.is_master else (None, None)
        elif self.args.fsdp_checkpoint == "sharded":  # every rank writes its shards first
            task_state = optimizer_state = None
            sharded = fsdp_lib.save_sharded(self.task, self.optimizer, path).name
        else:
            task_state, optimizer_state = fsdp_lib.full_state(self.task, self.optimizer)
        if not self.env.is_master:
            return None
        payload = {
            "format": ckpt_lib.FORMAT, "version": ckpt_lib.VERSION, "step": self.step,
            "epoch": self.data.epoch(), "world_size": self.env.world_size,
            "task": task_state, "optimizer": optimizer_state, "sharded": sharded,
            "scheduler": {"step": self.step, **self.schedule.state_dict()},
            "model_config": self.model.config, "args": vars(self.args),
            "watchdog": dict(self.watchdog),
            "log_interval": {"stats": self.stats.cpu(), "steps": self.interval_steps},
            "rng": [s["rng"] for s in states], "data": [s["data"] for s in states],
        }
        try:
            ckpt_lib.atomic_save(payload, path)
        except OSError as e:
            self.log(f"WARNING: could not write checkpoint {path} ({e}); the previous "
                     f"checkpoints are intact and training goes on")
            return None
        ckpt_lib.prune(self.ckpt_dir, self.args.keep)
        if self.args.fsdp:
            fsdp_lib.remove_orphan_shards(self.ckpt_dir)
        self.last_checkpoint = path
        return path

    def _step(self, batches):
        """One update from the step's accum_freq micro-batches (none when every rank's were
        all skipped, as the row count summed over ranks says, or when the gradient is NaN/Inf)
        -> the step's statistics on the device, summed over ranks (indices LOSS ... STOP): the
        loss (the ranks' mean; 0 when the step is not counted), rows and skipped samples,
        whether the loss counts (the step had rows and all is finite), whether it was
        non-finite, and whether a rank was asked to stop."""
        args, env = self.args, self.env
        local = torch.zeros(STOP + 1, dtype=torch.float64, device=self.device)
        local[SKIPPED].fill_(sum(int(b.get("skipped", 0)) for b in batches))
        if self.stop_signals.signum is not None:
            local[STOP].fill_(1)
        for batch in batches:
            if batch.get("skipped_names") and len(self.skip_names) < SKIP_NAMES_SHOWN:
                self.skip_names += list(batch["skipped_names"])[:SKIP_NAMES_SHOWN
                                                                - len(self.skip_names)]
        out = None
        # the rows of every rank, summed on the host: every rank takes the same branch
        if dist_lib.all_reduce_host_sum(count_rows(batches), env) > 0:
            out = train_step(self.module, self.task, self.optimizer, batches,
                             device=self.device, grad_clip_norm=args.grad_clip_norm,
                             autocast=self.autocast)
        else:
            self.optimizer.zero_grad(set_to_none=True)
        if out is not None:
            local[LOSS].copy_(out["loss"])
            local[ROWS].fill_(out["n"])
            local[NONFINITE].copy_(~fsdp_lib.full_value(out["finite"]))
            self.grad_norm = fsdp_lib.full_value(out["grad_norm"])
            clamp_logit_scale(self.model, args.logit_scale_max)
        dist_lib.all_reduce_sum(local, env)
        loss = local[LOSS] / env.world_size
        ran = local[ROWS] > 0
        nonfinite = ran & ((local[NONFINITE] > 0) | ~torch.isfinite(loss))
        counted = ran & ~nonfinite
        local[LOSS] = torch.where(counted, loss, torch.zeros_like(loss))
        local[COUNTED] = counted.to(local.dtype)
        local[NONFINITE] = nonfinite.to(local.dtype)
        return local

    def evaluate(self):
        """--val-data / --zeroshot-data on the current weights (every rank takes part)."""
        task = self.plain_task()
        results = self.evaluator.run(task.model, task.loss, self.precision)
        if results is None:
            return
        # NaN (acc5 with fewer than 5 classes) as null: metrics.jsonl stays strict JSON
        results = {k: (v if v is None or math.isfinite(v) else None) for k, v in results.items()}
        self.metrics.write({"step": self.step, **results})
        if self.metrics.enabled:
            eval_lib.plot(self.metrics.path, self.out_dir / "eval.png")
        shown = ", ".join(f"{k} {v:.4f}" for k, v in results.items() if v is not None
                          and k in ("val/loss", "val/image_retrieval_recall@1", "zeroshot/acc1"))
        self.log(f"clippo train: step {self.step}: {shown}")

    def _watch_nonfinite(self, step_stats):
        """Count, on the device, consecutive non-finite steps: no sync."""
        self.nonfinite_streak = (self.nonfinite_streak + 1) * step_stats[NONFINITE]
        self.nonfinite_longest = torch.maximum(self.nonfinite_longest, self.nonfinite_streak)

    def _stop_requested(self, step_stats):
        """Whether every rank stops after this step: a rank's signal reaches the others
        through the next step's all-reduce, so all read the flag one step late, and alike
        (the read waits for the previous step's statistics only, not this step's work)."""
        if not self.env.distributed:
            return self.stop_signals.signum is not None
        previous, self.stop_pending = self.stop_pending, step_stats[STOP]
        return previous is not None and bool(previous > 0)

    def _check_skipped(self, rows, skipped):
        """At a logged step: warn above SKIP_WARN_SHARE skipped in the interval (with a few
        names); stop above --max-skip-fraction over the samples read since the last check."""
        seen = rows + skipped
        if skipped and skipped > SKIP_WARN_SHARE * seen:
            names = [n for part in dist_lib.all_gather_object(self.skip_names, self.env)
                     for n in part][:SKIP_NAMES_SHOWN]
            self.log(f"WARNING: {int(skipped)} of {int(seen)} samples ({skipped / seen:.1%}) "
                     f"were skipped in steps {self.step - self.interval_steps + 1}-{self.step} "
                     f"(unreadable or missing images, empty captions)"
                     + (f", e.g. {', '.join(names)}" if names else ""))
        self.skip_names = []
        window = self.watchdog["skip_window"]
        window[0], window[1] = window[0] + int(seen), window[1] + int(skipped)
        if window[0] < SKIP_CHECK_SAMPLES:
            return
        share = window[1] / window[0]
        self.watchdog["skip_window"] = [0, 0]
        if share > self.args.max_skip_fraction:
            raise TrainError(
                f"{window[1]} of the {window[0]} samples read up to step {self.step} "
                f"({share:.1%}) were skipped as unreadable, above --max-skip-fraction "
                f"{self.args.max_skip_fraction}: is the data there (a missing mount, wrong "
                f"paths in the CSV)? "
                + (f"Last checkpoint: {self.last_checkpoint}" if self.last_checkpoint else ""))

    def _watch_collapse(self, step_stats):
        """Count, on the device, consecutive steps whose loss is log(rows): no sync."""
        loss, rows = step_stats[LOSS], step_stats[ROWS]
        near = ((loss - torch.log(rows.clamp_min(1))).abs() < COLLAPSE_TOLERANCE) & (rows > 1)
        self.streak = (self.streak + 1) * near
        self.longest = torch.maximum(self.longest, self.streak)

    def _log_interval(self, lr, elapsed, data_time):
        loss_sum, rows, skipped, counted, nonfinite = self.stats.tolist()
        n = self.interval_steps
        # the mean over the steps that ran: none of an all-skipped or non-finite step
        loss = loss_sum / counted if counted else None
        grad_norm = float(self.grad_norm.item()) if self.grad_norm is not None else None
        record = {
            "step": self.step, "epoch": self.data.epoch(), "loss": loss, "lr": lr,
            "samples_per_s": rows / elapsed if elapsed > 0 else None,
            "skipped": int(skipped), "nonfinite_steps": int(nonfinite),
            "batch_size": int(rows / n),  # the samples in the loss per step, over all ranks
            "logit_scale": float(fsdp_lib.full_value(self.model.t.detach()).exp()[0]),
            "grad_norm": grad_norm if grad_norm is not None and math.isfinite(grad_norm) else None,
            "data_time": data_time / n, "step_time": elapsed / n,
        }
        if self.args.loss == "sigmoid":
            record["logit_bias"] = float(fsdp_lib.full_value(self.loss_fn.logit_bias.detach()))
        self.metrics.write(record)
        self.bar.set_postfix(loss=f"{loss:.4f}" if loss is not None else "-",
                             samples_s=f"{record['samples_per_s'] or 0:,.0f}", refresh=False)
        self._check_nonfinite_streak()
        self._check_skipped(rows, skipped)
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

    def _stop(self, path):
        """After a SIGINT/SIGTERM, with `path` the checkpoint of this step (None: the save
        failed): StopRequested with the command that resumes."""
        path = dist_lib.broadcast_object(path, self.env)  # rank 0 wrote it
        self.bar.close()
        self.metrics.close()
        signum = self.stop_signals.signum or signal.SIGTERM
        where = (f"checkpoint {path} written" if path is not None else
                 f"the checkpoint of this step could not be written (see above); the last one "
                 f"is {self.last_checkpoint}")
        raise StopRequested(signum, f"stopped by {signal.Signals(signum).name} after step "
                                    f"{self.step} of {self.total_steps}; {where}. Resume with: "
                                    f"{self._resume_command()}")

    def train(self):
        args, env = self.args, self.env
        if env.is_master:
            (self.out_dir / "args.json").write_text(json.dumps(run_config(args), indent=2) + "\n")
        cfg = self.model.config
        self.log(f"clippo train: {args.model} (width {cfg['width']}, depth {cfg['depth']}, "
                 f"patch {cfg['patch_size']}, {self.image_size} px), "
                 f"{self.model.num_params():,} parameters, on {self.device} x{env.world_size} "
                 f"({self.precision}); data: {self.data.describe}; global batch "
                 f"{self.data.global_batch} ({args.batch_size} per process x accum "
                 f"{args.accum_freq} x {env.world_size}); steps {self.step} -> "
                 f"{self.total_steps}"
                 + (f"; resumed from {self.resume_path}" if self.resume_path else ""))
        if self.world_change:
            self.log(self.world_change)
        from tqdm import tqdm
        self.bar = tqdm(total=self.total_steps, initial=self.step, unit="step",
                        dynamic_ncols=True, disable=args.no_progress or not env.is_master)
        self.streak = torch.tensor(float(self.watchdog["streak"]), dtype=torch.float64,
                                   device=self.device)
        self.longest = self.streak.clone()
        self.nonfinite_streak = torch.tensor(float(self.watchdog["nonfinite_streak"]),
                                             dtype=torch.float64, device=self.device)
        self.nonfinite_longest = self.nonfinite_streak.clone()
        self.grad_norm = None
        with self.stop_signals:
            return self._loop()

    def _loop(self):
        args, env = self.args, self.env
        final_loss, checkpoint, samples = None, self.last_checkpoint, 0.0
        train_start = interval_start = time.perf_counter()
        data_time = 0.0
        while self.step < self.total_steps:
            lr = self.schedule(self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            t0 = time.perf_counter()
            batches = [next(self.batches) for _ in range(args.accum_freq)]
            data_time += time.perf_counter() - t0
            step_stats = self._step(batches)
            self.stats += step_stats[:STOP]
            self._watch_nonfinite(step_stats)
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
            if self.evaluator is not None and (self.step == self.total_steps or (
                    args.eval_every and self.step % args.eval_every == 0)):
                self.evaluate()
                interval_start = time.perf_counter()
            saved, written = False, None
            if (args.save_every and self.step % args.save_every == 0) \
                    or self.step == self.total_steps:
                self.watchdog["streak"] = int(self.streak.item())
                written, saved = self.save_checkpoint(), True
                checkpoint = written or checkpoint
            if self.step < self.total_steps and self._stop_requested(step_stats):
                self.watchdog["streak"] = int(self.streak.item())
                self._stop(written if saved else self.save_checkpoint())
        self.bar.close()
        self.metrics.close()
        train_seconds = time.perf_counter() - train_start
        model_dir = self.out_dir / "model"
        final = self.plain_task().model
        if env.is_master:
            try:
                save_final_model(final, self.out_dir)
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
    except StopRequested as e:
        print(f"clippo train: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        print("clippo train: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
