"""Backend choice and small helpers shared by the Triton kernels.

Backends:
    "auto"   Triton for CUDA tensors when triton imports, the torch reference otherwise.
    "triton" the registered torch.ops.clippo.* ops (Triton on CUDA, the torch reference on the
             CPU); raises RuntimeError if triton cannot be imported.
    "torch"  plain PyTorch (conv2d / scaled_dot_product_attention); never touches triton.

The initial value comes from the environment variable CLIPPO_KERNELS (default "auto").
CLIPPO_AUTOTUNE=0 (read at import) turns Triton autotuning off (first config of each kernel).

Optional kernels ("layer_norm", "linear": fusions that must first show on a GPU profile that
they pay) run under "auto" only when enabled: CLIPPO_FUSE=layer_norm,linear (or "all"), or
set_fusions / use_fusions. The "triton" backend runs them always, "torch" never.
"""
import contextlib
import functools
import os

BACKENDS = ("auto", "triton", "torch")
OPTIONAL_KERNELS = ("layer_norm", "linear")

try:  # triton is optional: CPU-only installs use the torch references
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401
    HAS_TRITON = True
    TRITON_IMPORT_ERROR = None
except ImportError as e:  # pragma: no cover - depends on the install
    triton = tl = None
    HAS_TRITON = False
    TRITON_IMPORT_ERROR = e


def interpreting():
    """True when Triton kernels run through the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _check(name):
    name = str(name).strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown clippo kernel backend {name!r}; expected one of {BACKENDS}")
    return name


_backend = _check(os.environ.get("CLIPPO_KERNELS", "auto") or "auto")


def get_backend():
    return _backend


def set_backend(name):
    """Select the kernel backend for all later calls, in every thread (the choice is
    process-wide); returns the previous one. Unchanged if `name` is invalid or unavailable."""
    global _backend
    name = _check(name)
    if name == "triton":
        require_triton()
    prev, _backend = _backend, name
    return prev


@contextlib.contextmanager
def use_backend(name):
    """Context manager: `with clippo.kernels.use_backend("torch"): ...` (process-wide while
    the block runs, like set_backend)."""
    prev = set_backend(name)
    try:
        yield
    finally:
        set_backend(prev)


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


_fusions = _parse_fusions(os.environ.get("CLIPPO_FUSE", ""))


def get_fusions():
    """The optional kernels enabled under the "auto" backend, as a sorted tuple."""
    return tuple(sorted(_fusions))


def set_fusions(spec):
    """Enable optional kernels under "auto": "all", "none", "layer_norm,linear" or an iterable
    of names. Process-wide; returns the previous set (unchanged if `spec` is invalid)."""
    global _fusions
    prev, _fusions = _fusions, _parse_fusions(spec)
    return prev


@contextlib.contextmanager
def use_fusions(spec):
    """`with clippo.kernels.use_fusions("all"): ...` (process-wide while the block runs)."""
    prev = set_fusions(spec)
    try:
        yield
    finally:
        set_fusions(prev)


def require_triton():
    if not HAS_TRITON:
        raise RuntimeError(
            "the clippo 'triton' kernel backend was requested but triton could not be imported "
            f"({TRITON_IMPORT_ERROR}); install triton or use CLIPPO_KERNELS=auto/torch")


def use_ops(*tensors, optional=None):
    """Whether a public function should call the registered torch.ops.clippo ops; `optional`
    names an optional kernel, which "auto" runs only when it is enabled (set_fusions)."""
    if _backend == "torch":
        return False
    if _backend == "triton":
        require_triton()
        return True
    if optional is not None and optional not in _fusions:
        return False
    return HAS_TRITON and all(t.is_cuda for t in tensors if t is not None)


def autotune_enabled():
    """CLIPPO_AUTOTUNE=0 (read at import) launches each kernel with its first, conservative
    config instead of autotuning: quick GPU test runs."""
    return os.environ.get("CLIPPO_AUTOTUNE", "1").strip().lower() not in ("0", "false", "no", "off")


def tune_configs(configs):
    return configs if autotune_enabled() else configs[:1]


def interpret_for(t):
    """Launch through the interpreter? For CPU tensors (the only way Triton runs there) and for
    any tensor when TRITON_INTERPRET=1."""
    return interpreting() or t.device.type == "cpu"


def interpreted(kernel):
    """The kernel itself, checked to be the interpreter's version: Triton decides at import time,
    so TRITON_INTERPRET=1 must be set before triton is first imported."""
    from triton.runtime.interpreter import InterpretedFunction
    if not isinstance(kernel, InterpretedFunction):
        raise RuntimeError(
            "Triton kernels run on CPU tensors only through the interpreter: set "
            "TRITON_INTERPRET=1 before triton is first imported (or pass CUDA tensors)")
    return kernel


def launcher(kernel):
    """kernel[grid](...) callable, wrap_triton'd so that torch.compile can trace it."""
    import torch
    return torch.library.wrap_triton(kernel)


@functools.cache
def num_sms(device_index=0):
    import torch
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(device_index).multi_processor_count
    return 4


def config_kind(dtype):
    """Which autotune table a dtype uses: "fp32" (exact products, smaller tiles) or "half"."""
    import torch
    return "fp32" if dtype == torch.float32 else "half"


def gemm_configs(table):
    """Autotune configs of a tiled GEMM from (BLOCK_M, BLOCK_N, BLOCK_K, num_warps,
    num_stages) rows; the first row is the default when autotuning is off."""
    return tune_configs([
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8},
                      num_warps=warps, num_stages=stages)
        for bm, bn, bk, warps, stages in table])


if HAS_TRITON:
    @triton.jit
    def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     GROUP_M: tl.constexpr):
        """Program id -> (tile row, tile column) in grouped order: GROUP_M consecutive row
        tiles walk the column tiles together, so the weight tiles they share stay in L2."""
        tiles_m = tl.cdiv(M, BLOCK_M)
        tiles_n = tl.cdiv(N, BLOCK_N)
        per_group = GROUP_M * tiles_n
        first_m = (pid // per_group) * GROUP_M
        group_size = tl.minimum(tiles_m - first_m, GROUP_M)
        pid_m = first_m + (pid % per_group) % group_size
        pid_n = (pid % per_group) // group_size
        return pid_m, pid_n


def dot_precision(dtype):
    """tl.dot input_precision: exact fp32 products ("ieee") for fp32 inputs, as torch's matmul
    (no TF32 by default); None (Triton's default) for fp16/bf16, where it does not apply."""
    import torch
    return "ieee" if dtype == torch.float32 else None
