"""Learning-rate schedules: pure functions of the optimizer step (0 for the first update).

    lr(step) = base * warmup(step) * decay(step) * cooldown(step)
    warmup   = min(1, (step + 1) / warmup_steps)             linear, from base / warmup_steps
    decay    cosine: lr_end + (base - lr_end) * (1 + cos(pi * progress)) / 2 (applied to base),
                     progress = (step - warmup_steps) / (total_steps - warmup_steps) in [0, 1]
             rsqrt:  1 / sqrt((step + timescale - warmup_steps) / timescale) after the warm-up
                     (big_vision's "rsqrt": continuous at the end of the warm-up)
             const:  1
    cooldown = min(1, (total_steps - step) / cooldown_steps)  linear to 0 at the end

A pure function of the step is what makes a resumed run's learning rates equal an
uninterrupted run's: nothing but the step number is carried over.
"""
import math
import warnings

KINDS = ("cosine", "rsqrt", "const")


def resolve_steps(value, total_steps):
    """A step count given as steps (>= 1, or 0) or as a fraction (< 1) of total_steps."""
    if value is None:
        return 0
    if value < 1:
        return int(round(value * total_steps))
    return int(value)


def lr_at(step, *, base_lr, total_steps, kind="cosine", warmup_steps=0, cooldown_steps=0,
          timescale=None, lr_end=0.0):
    """The learning rate of update number `step` (0-based)."""
    if kind not in KINDS:
        raise ValueError(f"unknown learning-rate schedule {kind!r}; expected one of {KINDS}")
    if kind == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, max(0.0, (step - warmup_steps) / span))
        lr = lr_end + (base_lr - lr_end) * 0.5 * (1.0 + math.cos(math.pi * progress))
    elif kind == "rsqrt":
        ts = timescale or (warmup_steps or 10_000)
        lr = base_lr
        if step > warmup_steps:
            lr = base_lr / math.sqrt((step + ts - warmup_steps) / ts)
    else:
        lr = base_lr
    if warmup_steps:
        lr *= min(1.0, (step + 1) / warmup_steps)
    if cooldown_steps:
        lr *= min(1.0, max(0.0, (total_steps - step) / cooldown_steps))
    return lr


class Schedule:
    """lr_at with the run's settings bound; `schedule(step)` gives the learning rate."""

    def __init__(self, *, base_lr, total_steps, kind="cosine", warmup=0.0, cooldown=0.0,
                 timescale=None, lr_end=0.0):
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        self.base_lr, self.total_steps, self.kind = base_lr, total_steps, kind
        self.warmup_steps = resolve_steps(warmup, total_steps)
        self.cooldown_steps = resolve_steps(cooldown, total_steps)
        self.timescale, self.lr_end = timescale, lr_end
        if self.warmup_steps + self.cooldown_steps > total_steps:
            # a shortened run (a smoke test) keeps its recipe: the phases are cut to fit
            warmup = min(self.warmup_steps, total_steps)
            cooldown = min(self.cooldown_steps, total_steps - warmup)
            warnings.warn(f"warm-up ({self.warmup_steps} steps) and cool-down "
                          f"({self.cooldown_steps} steps) do not fit in {total_steps} steps: "
                          f"using {warmup} and {cooldown}", stacklevel=2)
            self.warmup_steps, self.cooldown_steps = warmup, cooldown
        if kind == "cosine" and lr_end > base_lr:
            raise ValueError(f"--lr-end {lr_end} is above --lr {base_lr}")

    def __call__(self, step):
        return lr_at(step, base_lr=self.base_lr, total_steps=self.total_steps, kind=self.kind,
                     warmup_steps=self.warmup_steps, cooldown_steps=self.cooldown_steps,
                     timescale=self.timescale, lr_end=self.lr_end)

    def state_dict(self):
        return dict(base_lr=self.base_lr, total_steps=self.total_steps, kind=self.kind,
                    warmup_steps=self.warmup_steps, cooldown_steps=self.cooldown_steps,
                    timescale=self.timescale, lr_end=self.lr_end)
