"""torch.distributed set-up from the environment torchrun provides (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT); a plain `python -m clippo.train` is one process.

Backends: nccl when the ranks train on CUDA devices, gloo on the CPU (--dist-backend
overrides). Each rank on CUDA takes cuda:LOCAL_RANK.

Restarts (torchrun --max-restarts): torchrun shares its rendezvous store with the workers and
keeps it across restarts, but torch's env:// set-up does not separate the attempts' keys, so
a restarted group reads the previous attempt's addresses and gloo fails to connect
("connectFullMesh failed ... Connection refused"). The process group is therefore set up on
that store under a prefix naming the attempt (TORCHELASTIC_RESTART_COUNT).
"""
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this module initialised the process group (and ends it)
    # a gloo group for collectives on host values (None: the default group is gloo)
    cpu_group: object = None

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def is_master(self):
        return self.rank == 0


def _env_int(name, default):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(device=None, backend=None):
    """DistEnv for this process; initialises the process group under torchrun.

    device: "cuda", "cpu" or None (CUDA when available). A process group that is already
    initialised (a caller that set it up itself) is used as it is.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = _env_int("LOCAL_RANK", rank)
        owns = False
    else:
        rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
        local_rank = _env_int("LOCAL_RANK", 0)
        owns = world > 1
    want = torch.device(device) if device else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    if want.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but torch sees no CUDA device")
        index = want.index if want.index is not None and world == 1 else \
            local_rank % torch.cuda.device_count()
        want = torch.device("cuda", index)
        torch.cuda.set_device(want)
    elif want.type != "cpu":
        raise ValueError(f"--device must be cuda or cpu, got {device!r}")
    if owns:
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        backend = backend or ("nccl" if want.type == "cuda" else "gloo")
        kw = {"device_id": want} if want.type == "cuda" else {}
        store = _attempt_store(world)
        if store is not None:
            kw.update(store=store, rank=rank, world_size=world)
        dist.init_process_group(backend=backend, **kw)
    cpu_group = None
    if world > 1 and dist.get_backend() != "gloo":
        cpu_group = dist.new_group(backend="gloo")  # host counts without a device sync
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=want,
                   owns_group=owns, cpu_group=cpu_group)


def _attempt_store(world_size, timeout=timedelta(minutes=30)):
    """torchrun's shared store with keys prefixed by the restart attempt, or None when the
    workers do not use the agent's store (a plain env:// set-up is right then)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], _env_int("MASTER_PORT", 29500),
                          world_size, is_master=False, timeout=timeout)
    attempt = _env_int("TORCHELASTIC_RESTART_COUNT", 0)
    return dist.PrefixStore(f"clippo/attempt_{attempt}/", store)


def cleanup(env):
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env):
    if env.distributed:
        dist.barrier()


def all_gather_object(obj, env):
    """[obj of rank 0, obj of rank 1, ...] on every rank (a one-element list alone)."""
    if not env.distributed:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, env, src=0):
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_host_sum(value, env):
    """An integer summed over ranks on the host (gloo): no wait for the device."""
    if not env.distributed:
        return int(value)
    box = torch.tensor([int(value)], dtype=torch.int64)
    dist.all_reduce(box, group=env.cpu_group)
    return int(box.item())


def all_reduce_sum(tensor, env):
    """Sum over ranks in place (a no-op on one process); returns the tensor."""
    if env.distributed:
        dist.all_reduce(tensor)
    return tensor
