"""Non-finite steps: an update whose gradient is NaN/Inf is skipped, and no checkpoint or
final model is written while any tensor of the state is non-finite.

The skip stays on the device where the optimizer allows it: torch's fused AdamW takes a
`found_inf` flag (as GradScaler uses it) and leaves the weights, both moments and its step
count as they were when the flag is set, so the trainer needs no host sync per step. Other
optimizers read the flag on the host.
"""
import torch

__all__ = ["guarded_step", "skips_on_device", "nonfinite_tensors"]


def skips_on_device(optimizer):
    """Whether optimizer.step() honours a `found_inf` flag (torch's fused Adam/AdamW)."""
    return isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)) and \
        all(group.get("fused") for group in optimizer.param_groups)


def guarded_step(optimizer, finite):
    """optimizer.step() unless `finite` (a bool tensor) is False: then nothing changes."""
    if skips_on_device(optimizer):
        optimizer.found_inf = (~finite).to(torch.float32).reshape(())
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif bool(finite):
        optimizer.step()


def _tensors(obj, prefix):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors(value, f"{prefix}.{i}" if prefix else str(i))


def nonfinite_tensors(*states):
    """Names of the floating-point tensors holding a NaN or Inf in the given (nested) state
    dicts, e.g. a model's and an optimizer's state_dict() (one host sync for all)."""
    named = [(name, t) for state in states for name, t in _tensors(state, "")
             if t.is_floating_point() and t.numel()]
    by_device = {}
    for name, t in named:
        by_device.setdefault(t.device, []).append((name, t))
    bad = []
    for group in by_device.values():
        flags = torch.stack([torch.isfinite(t).all() for _, t in group]).tolist()
        bad += [name for (name, _), ok in zip(group, flags) if not ok]
    return bad
