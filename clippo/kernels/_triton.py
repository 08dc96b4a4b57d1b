"""What every kernel module shares: how a Triton kernel is launched and how an op is registered.

A `Kernel` is a @triton.jit function with its launch policy: on CUDA tensors it launches with
their device current (Triton launches on the current device), autotuned over a table of
configs per dtype kind ("half" for fp16/bf16, "fp32") and per row bucket (the power of two at or
above the rows a tile covers), so that the MAP head's single query or a Dense over one row per
image tunes apart from the encoder's thousands of rows and gets tiles no taller than needed.
On CPU tensors (or with TRITON_INTERPRET=1) it runs in Triton's interpreter with fixed blocks.

`define_op` registers torch.ops.clippo.<name> from a launcher (the Triton kernels) and the
torch reference of the same signature, which is also the CPU kernel (and, without triton, the
fake kernel), with its autograd formula.

Supported triton: TRITON_VERSIONS (oldest and newest are tested). CLIPPO_AUTOTUNE=0 launches
each kernel with the first fitting config of its table instead of autotuning (quick GPU runs).
"""
import contextlib
import functools
import os

import torch

from ._backend import HAS_TRITON

if HAS_TRITON:
    import triton
    import triton.language as tl
    from torch.library import wrap_triton
else:  # pragma: no cover - depends on the install
    triton = tl = wrap_triton = None

TRITON_VERSIONS = ("3.6", "3.8")
MAX_ROW_BUCKET = 8192  # beyond this many rows, tiles many waves deep: one tuning fits all
KERNELS = []  # every Kernel, for the ahead-of-time compile check


def interpreting():
    """True when Triton kernels run through the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def autotune_enabled():
    return os.environ.get("CLIPPO_AUTOTUNE", "1").strip().lower() not in ("0", "false", "no", "off")


def row_bucket(rows):
    """The power of two at or above `rows`, from 16 (the smallest tl.dot tile) up to
    MAX_ROW_BUCKET: the row count in an autotune key."""
    return min(max(16, 1 << max(int(rows) - 1, 0).bit_length()), MAX_ROW_BUCKET)


def config_kind(dtype):
    """Which table a dtype uses: "fp32" (no or TF32 tensor cores: smaller tiles) or "half"."""
    return "fp32" if dtype == torch.float32 else "half"


def _tf32_allowed(op):
    """torch's own choice for fp32 `op` ("matmul": cuBLAS, "conv": cuDNN) on CUDA."""
    if op == "matmul":
        backend, legacy = torch.backends.cuda.matmul, "allow_tf32"
    else:
        backend, legacy = getattr(torch.backends.cudnn, "conv", None), None
    precision = getattr(backend, "fp32_precision", None)
    if precision is not None:
        return precision == "tf32"
    # torch without the fp32_precision settings
    return (torch.backends.cuda.matmul.allow_tf32 if legacy
            else torch.backends.cudnn.allow_tf32)


def dot_precision(dtype, op="matmul"):
    """tl.dot's input_precision: for fp32 what torch's `op` ("matmul" or "conv") would use, so
    that the kernels and the torch path they replace round alike ("tf32" where torch allows
    TF32, else exact "ieee"); None (Triton's default) for fp16/bf16, where it does not apply."""
    if dtype != torch.float32:
        return None
    return "tf32" if _tf32_allowed(op) else "ieee"


def on_device(device):
    """Make `device` current for a launch: Triton launches on the current CUDA device, which
    need not be the one holding the tensors."""
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def interpreted(fn):
    """The kernel itself, checked to be the interpreter's version: Triton decides at import time,
    so TRITON_INTERPRET=1 must be set before triton is first imported."""
    from triton.runtime.interpreter import InterpretedFunction
    if not isinstance(fn, InterpretedFunction):
        raise RuntimeError(
            "Triton kernels run on CPU tensors only through the interpreter: set "
            "TRITON_INTERPRET=1 before triton is first imported (or pass CUDA tensors)")
    return fn


@functools.cache
def num_sms(device_index):
    """Streaming multiprocessors of a CUDA device (4 without CUDA: tracing on fake tensors)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(device_index).multi_processor_count
    return 4


class Kernel:
    """A @triton.jit function and how it is launched.

    names:     the meta-parameters a table row sets, in order; each row ends with
               (num_warps, num_stages)
    tables:    {"half": rows, "fp32": rows}, the first row of each the default without
               autotuning; None for a kernel launched with `fixed` meta-parameters
    key:       the arguments that make up the autotune key (besides the row bucket)
    interpret: the meta-parameters under the interpreter (autotuning there only costs time)
    fixed:     the meta-parameters on the GPU of a kernel without tables
    """

    def __init__(self, fn, *, names=(), tables=None, key=(), interpret=None, fixed=None):
        self.fn = fn
        self.names = tuple(names)
        self.tables = tables
        self.key = list(key)
        self.interpret = dict(interpret or {})
        self.fixed = dict(fixed or {})
        self._tuned = {}
        KERNELS.append(self)

    @property
    def name(self):
        return self.fn.__name__.strip("_")

    def table(self, kind):
        """Every config of one table, as triton.Config."""
        return [triton.Config(dict(zip(self.names, row[:-2])), num_warps=row[-2],
                              num_stages=row[-1]) for row in self.tables[kind]]

    def configs(self, kind, bucket=None):
        """The candidates for `kind` and a row bucket: the configs whose BLOCK_M fits in the
        bucket (else the shortest), only the first of them without autotuning."""
        configs = self.table(kind)
        if bucket is not None:
            configs = ([c for c in configs if c.kwargs["BLOCK_M"] <= bucket]
                       or [min(configs, key=lambda c: c.kwargs["BLOCK_M"])])
        return configs if autotune_enabled() else configs[:1]

    def tuned(self, kind, rows=None):
        """The autotuner for `kind` and the bucket of `rows`: one per pair, so that each keeps
        its own cache of tuned configs."""
        bucket = None if rows is None else row_bucket(rows)
        key = kind, bucket, autotune_enabled()
        if key not in self._tuned:
            self._tuned[key] = triton.autotune(self.configs(kind, bucket), key=self.key)(self.fn)
        return self._tuned[key]

    def __call__(self, grid, *args, device, dtype=None, rows=None, **consts):
        """Launch on `device`: grid(meta) -> the launch grid; `dtype` picks the table, `rows`
        (the extent BLOCK_M tiles) the row bucket; `consts` are the constexpr arguments (and
        launch options such as num_warps)."""
        if interpreting() or device.type == "cpu":
            meta = {**consts, **self.interpret}
            interpreted(self.fn)[grid(meta)](*args, **meta)
            return
        if self.tables is None:
            fn, consts = self.fn, {**consts, **self.fixed}
        else:
            fn = self.tuned(config_kind(dtype), rows)
        with on_device(device):
            wrap_triton(fn)[grid](*args, **consts)


def define_op(name, launcher, reference, *, backward=None, setup_context=None):
    """Register torch.ops.clippo.<name> and return it.

    `launcher` runs the Triton kernels on CUDA tensors and gives the op its schema (from its
    type annotations); `reference`, torch code with the same signature, is the CPU kernel and,
    without triton, the fake kernel (with triton, triton_op runs the same dispatch on fake
    tensors). `backward` / `setup_context` as for torch.library.register_autograd.
    """
    qualname = f"clippo::{name}"

    @functools.wraps(launcher)
    def body(*args):
        # torch.compile decomposes a triton_op into this body whatever the device
        return (launcher if args[0].device.type == "cuda" else reference)(*args)

    if HAS_TRITON:
        torch.library.triton_op(qualname, body, mutates_args=())
    else:
        torch.library.custom_op(qualname, body, mutates_args=(),
                                device_types="cpu").register_fake(reference)
    torch.library.register_kernel(qualname, "cpu", reference)
    if backward is not None:
        torch.library.register_autograd(qualname, backward, setup_context=setup_context)
    return getattr(torch.ops.clippo, name)


if HAS_TRITON:
    @triton.jit
    def gemm_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
        """This program's output tile of an [M, N] GEMM: (rows, row mask, columns, column
        mask), rows as int64. Tiles go in grouped order: GROUP_M consecutive row tiles walk the
        column tiles together, so the weight tiles they share stay in L2."""
        tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16)
        pid = tl.program_id(0)
        tiles_m = tl.cdiv(M, BLOCK_M)
        tiles_n = tl.cdiv(N, BLOCK_N)
        per_group = GROUP_M * tiles_n
        first_m = (pid // per_group) * GROUP_M
        group_size = tl.minimum(tiles_m - first_m, GROUP_M)
        pid_m = first_m + (pid % per_group) % group_size
        pid_n = (pid % per_group) // group_size
        rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        return rows, rows < M, cols, cols < N
