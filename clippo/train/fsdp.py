"""`--fsdp`: parameters, gradients and optimizer state sharded over the ranks with torch's FSDP2
(`torch.distributed.fsdp.fully_shard`): each transformer block is one unit (its parameters
all-gathered for its forward and backward, then freed), and the whole task (embedding, head,
temperature, the loss's bias) the root unit. The gradients are averaged over the ranks as
DDP's are, so a run under --fsdp follows the same losses and weights as one under DDP (within
float32 rounding: the reductions are ordered differently).

Checkpoints (`--fsdp-checkpoint`):
    full     the usual step_<step>.pt holding the whole model and optimizer state, gathered
             onto rank 0: the same format as a DDP run's (the optimizer state indexed by
             parameter number), so either kind of run resumes from it.
    sharded  every rank writes its shards with torch.distributed.checkpoint into the folder
             step_<step>.dcp/, then rank 0 writes step_<step>.pt with everything else (step,
             data positions, RNG states); that file is written last, so `--resume latest`
             never picks a half-written folder. Resume it with --fsdp.

The final model (OUTPUT/model) and the in-training evaluation use a plain, unsharded copy of
the weights, gathered on every rank.
"""
import shutil
from pathlib import Path

import torch

CHECKPOINT_KINDS = ("full", "sharded")


def add_arguments(parser):
    g = parser.add_argument_group("sharded data parallel")
    g.add_argument("--fsdp", action="store_true",
                   help="shard parameters, gradients and optimizer state over the ranks "
                        "(torch FSDP2 fully_shard: each transformer block, then the model)")
    g.add_argument("--fsdp-checkpoint", choices=CHECKPOINT_KINDS, default="full",
                   help="with --fsdp: 'full' (one file, gathered on rank 0, as DDP's) or "
                        "'sharded' (torch.distributed.checkpoint, each rank its shards)")


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(**kw)


def shard(task, device):
    """fully_shard the task in place: every transformer block, then the root.

    fully_shard cannot shard a 0-dim parameter (the sigmoid loss's bias): such parameters stay
    whole on every rank and their gradient is averaged over the ranks after each backward
    pass, as DDP would (with accumulation too: the part already averaged is the same on every
    rank, so averaging the sum again only averages the new part)."""
    from torch.distributed.fsdp import fully_shard
    for block in task.model.img.Transformer.blocks():
        fully_shard(block)
    scalars = {p for p in task.parameters() if p.ndim == 0 and p.requires_grad}
    fully_shard(task, ignored_params=scalars or None)
    for p in scalars:
        p.register_post_accumulate_grad_hook(_average_gradient)
    return task


def _average_gradient(param):
    import torch.distributed as dist
    dist.all_reduce(param.grad)
    param.grad.div_(dist.get_world_size())


def full_value(tensor):
    """A plain tensor of a (possibly sharded) parameter or result."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


# -- optimizer state: FSDP's names <-> torch.optim's parameter numbers ---------------------------

def _by_index(named):
    """torch.optim's state_dict layout (parameters numbered across the groups in order) of an
    optimizer state dict keyed by parameter names."""
    order = [name for group in named["param_groups"] for name in group["params"]]
    number = {name: i for i, name in enumerate(order)}
    return {"state": {number[name]: value for name, value in named["state"].items()},
            "param_groups": [{**g, "params": [number[n] for n in g["params"]]}
                             for g in named["param_groups"]]}


def _by_name(indexed, named_layout):
    """The reverse of _by_index, with the names of `named_layout`'s groups."""
    order = [name for group in named_layout["param_groups"] for name in group["params"]]
    return {"state": {order[int(i)]: value for i, value in indexed["state"].items()},
            "param_groups": [{**g, "params": [order[int(i)] for i in g["params"]]}
                             for g in indexed["param_groups"]]}


def full_state(task, optimizer):
    """(task state, optimizer state) of the whole model, in the plain (DDP) layout, on rank 0
    (empty dicts on the other ranks). Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import get_state_dict
    model_sd, optim_sd = get_state_dict(task, optimizer,
                                        options=_options(full_state_dict=True, cpu_offload=True))
    if not model_sd:
        return {}, {}
    return model_sd, _by_index(optim_sd)


def load_full_state(task, optimizer, optimizer_state):
    """Load a plain-layout optimizer state (the task's weights are loaded before sharding)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, \
        set_optimizer_state_dict
    layout = get_optimizer_state_dict(task, optimizer, options=_options(full_state_dict=True))
    set_optimizer_state_dict(task, optimizer, _by_name(optimizer_state, layout),
                             options=_options(full_state_dict=True))


def plain_task(task, make_task):
    """An unsharded copy of the task with the current weights, on every rank (a collective).
    make_task() builds an empty task of the same architecture."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    state = get_model_state_dict(task, options=_options(full_state_dict=True))
    copy = make_task()
    copy.load_state_dict(state)
    return copy


# -- sharded checkpoints ----------------------------------------------------------------------

def shard_dir(checkpoint_path):
    """step_<step>.pt -> its shards' folder step_<step>.dcp."""
    path = Path(checkpoint_path)
    return path.with_name(path.stem + ".dcp")


def save_sharded(task, optimizer, checkpoint_path):
    """Every rank writes its shards of the model and optimizer into shard_dir(path)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    model_sd, optim_sd = get_state_dict(task, optimizer)
    target = shard_dir(checkpoint_path)
    dcp.save({"task": model_sd, "optimizer": optim_sd}, checkpoint_id=str(target))
    return target


def load_sharded(task, optimizer, checkpoint_path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    source = shard_dir(checkpoint_path)
    if not source.is_dir():
        raise FileNotFoundError(f"{checkpoint_path} is a sharded checkpoint but its shards "
                                f"{source} are missing")
    model_sd, optim_sd = get_state_dict(task, optimizer)
    state = {"task": model_sd, "optimizer": optim_sd}
    dcp.load(state, checkpoint_id=str(source))
    set_state_dict(task, optimizer, model_state_dict=state["task"],
                   optim_state_dict=state["optimizer"])


def remove_orphan_shards(ckpt_dir):
    """Delete step_*.dcp folders whose step_*.pt is gone (pruned, or a save that was killed
    before its .pt was written)."""
    for folder in Path(ckpt_dir).glob("step_*.dcp"):
        if folder.is_dir() and not folder.with_suffix(".pt").exists():
            shutil.rmtree(folder, ignore_errors=True)


@torch.no_grad()
def check_supported(env):
    if not env.distributed:
        raise ValueError("--fsdp shards over the ranks of a torchrun job: start it with "
                         "torchrun --nproc_per_node N (N > 1)")


def local_shards(state):
    """A (nested) state dict with every sharded tensor replaced by this rank's shard."""
    if hasattr(state, "to_local"):
        return state.to_local()
    if isinstance(state, dict):
        return {k: local_shards(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(local_shards(v) for v in state)
    return state
