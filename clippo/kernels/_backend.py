"""Which implementation the public kernel functions use: the backend and the optional fusions.

Backends:
    "auto"   Triton for CUDA tensors when triton imports, plain torch otherwise.
    "triton" the registered torch.ops.clippo.* ops (Triton on CUDA, the torch reference on the
             CPU); RuntimeError if triton cannot be imported.
    "torch"  plain PyTorch (conv2d, scaled_dot_product_attention, ...); never touches triton.
The initial backend comes from the environment variable CLIPPO_KERNELS (default "auto").

Optional kernels ("layer_norm", "linear": fusions that must first show on a GPU profile that
they pay) run under "auto" only when enabled: CLIPPO_FUSE=layer_norm,linear (or "all"), or
set_fusions(...). The "triton" backend runs them always, "torch" never.

Both settings are process-wide (every thread sees them, and torch.compile guards on them).
set_backend / set_fusions change them and return a handle that, used as a context manager,
puts the previous value back: `with set_backend("torch"): ...`.
"""
import os

BACKENDS = ("auto", "triton", "torch")
OPTIONAL_KERNELS = ("layer_norm", "linear")

try:  # triton is optional: CPU-only installs use the torch references
    import triton  # noqa: F401
    HAS_TRITON = True
    TRITON_IMPORT_ERROR = None
except ImportError as e:  # pragma: no cover - depends on the install
    HAS_TRITON = False
    TRITON_IMPORT_ERROR = e


def require_triton():
    if not HAS_TRITON:
        raise RuntimeError(
            "the clippo 'triton' kernel backend was requested but triton could not be imported "
            f"({TRITON_IMPORT_ERROR}); install triton or use CLIPPO_KERNELS=auto/torch")


def _parse_backend(name):
    name = str(name).strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown clippo kernel backend {name!r}; expected one of {BACKENDS}")
    if name == "triton":
        require_triton()
    return name


def _parse_fusions(spec):
    if spec is None:
        return frozenset()
    if isinstance(spec, str):
        spec = [s for s in spec.replace(" ", "").lower().split(",") if s]
        if spec in (["none"], ["0"]):
            return frozenset()
        if spec == ["all"]:
            return frozenset(OPTIONAL_KERNELS)
    names = frozenset(spec)
    unknown = sorted(str(n) for n in names - set(OPTIONAL_KERNELS))
    if unknown:
        raise ValueError(f"unknown clippo fusion(s) {unknown}; expected names from "
                         f"{OPTIONAL_KERNELS}, 'all' or 'none'")
    return names


class _Setting:
    """A process-wide value, read by attribute (so that torch.compile guards on it)."""

    def __init__(self, parse, initial):
        self.parse = parse
        self.value = parse(initial)

    def set(self, spec):
        """Parse first (an invalid spec leaves the value unchanged), then assign."""
        new = self.parse(spec)
        restore = Restore(self, self.value)
        self.value = new
        return restore


class Restore:
    """What set_backend / set_fusions return: `.previous` is the value before the call; as a
    context manager it puts that value back on exit."""

    def __init__(self, setting, previous):
        self._setting = setting
        self.previous = previous

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._setting.value = self.previous


_backend = _Setting(_parse_backend, os.environ.get("CLIPPO_KERNELS", "auto") or "auto")
_fusions = _Setting(_parse_fusions, os.environ.get("CLIPPO_FUSE", ""))


def get_backend():
    return _backend.value


def set_backend(name):
    """Select the kernel backend ("auto", "triton", "torch") for later calls in every thread.
    Unchanged if `name` is invalid or unavailable. Returns a Restore handle:
    `with set_backend("torch"): ...` restores the previous backend after the block."""
    return _backend.set(name)


def get_fusions():
    """The optional kernels enabled under the "auto" backend, as a sorted tuple."""
    return tuple(sorted(_fusions.value))


def set_fusions(spec):
    """Enable optional kernels under "auto": "all", "none", "layer_norm,linear" or an iterable
    of names; unchanged if `spec` is invalid. Returns a Restore handle, as set_backend."""
    return _fusions.set(spec)


# the names that read best in a `with` statement
use_backend = set_backend
use_fusions = set_fusions


def use_ops(*tensors, optional=None):
    """Whether a public function should call the registered torch.ops.clippo ops; `optional`
    names an optional kernel, which "auto" runs only when it is enabled."""
    backend = _backend.value
    if backend == "torch":
        return False
    if backend == "triton":
        require_triton()
        return True
    if optional is not None and optional not in _fusions.value:
        return False
    return HAS_TRITON and all(t.is_cuda for t in tensors if t is not None)
