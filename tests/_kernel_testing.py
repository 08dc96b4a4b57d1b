"""Helpers shared by the kernel tests (test_patch_embed.py, test_attention.py,
test_kernel_*.py, test_kernels_ops.py, test_model_kernels.py).

The Triton tier runs the launchers on CUDA tensors when a GPU is present, and otherwise on CPU
tensors through the Triton interpreter, which needs TRITON_INTERPRET=1 *before triton is first
imported*. tests/conftest.py sets it before any test module loads; if triton was imported
earlier in the same pytest process anyway (a plugin), `TRITON_HERE` is False, the Triton-tier
tests skip, and tests/test_kernel_interpreter.py runs them again in a fresh process.

`captured_launches` runs the launchers' CUDA branch without a GPU: launches are recorded
instead of made (with the CUDA device that is current at each), so tests can check what a GPU
would be given: the device, the autotuner and its configs, the constexprs.
"""
import contextlib
import os
import types

import pytest
import torch

from clippo.kernels import _triton
from clippo.kernels._backend import HAS_TRITON

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda" and not _triton.interpreting()


def _kernels_interpreted():
    """Whether Triton kernels run on CPU tensors in this process: a tiny kernel that uses the
    language's own jit helpers must run (if triton was imported before TRITON_INTERPRET=1 was
    set, those helpers are compiled-mode functions and the interpreter fails on them)."""
    if not HAS_TRITON or not _triton.interpreting():
        return False
    import triton
    import triton.language as tl

    @triton.jit
    def _probe(out_ptr, N: tl.constexpr):
        offs = tl.arange(0, N)
        tl.store(out_ptr + offs, tl.zeros((N,), dtype=tl.float32) + tl.cdiv(offs + 1, 1))

    out = torch.empty(16)
    try:
        _probe[(1,)](out, N=16)
    except Exception:
        return False
    return bool(torch.equal(out, torch.arange(1.0, 17.0)))


TRITON_HERE = HAS_TRITON and (ON_GPU or _kernels_interpreted())
if not HAS_TRITON:
    WHY_NOT = "triton is not installed"
elif not TRITON_HERE:
    WHY_NOT = ("triton was imported before TRITON_INTERPRET=1 was set: "
               "tests/test_kernel_interpreter.py runs these in a fresh process")
else:
    WHY_NOT = ""

needs_triton = pytest.mark.skipif(not TRITON_HERE, reason=WHY_NOT)
# the project's `gpu` marker (pytest.ini) also makes `pytest -k "cuda or gpu"` (the GPU
# session script) select these
needs_gpu = [pytest.mark.gpu,
             pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU (bf16 / full-size shapes)")]

# Float dtypes the Triton tier runs: the interpreter multiplies bf16 by its raw bits in tl.dot,
# so bf16 only on a GPU.
DTYPES = [torch.float32, torch.float16,
          pytest.param(torch.bfloat16, marks=needs_gpu)]

# the "small atol" of the tolerance rule, by dtype
ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def assert_rule(out, ref64, ref_same, atol, what=""):
    """flash-attention's tolerance rule: max|out - ref64| <= 2 * max|torch_same - ref64| + atol."""
    assert out.shape == ref64.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref64.shape)}"
    assert out.dtype == ref_same.dtype, f"{what}: dtype {out.dtype} != {ref_same.dtype}"
    err = (out.double() - ref64.double()).abs().max().item()
    base = (ref_same.double() - ref64.double()).abs().max().item()
    print(f"{what}: max|out-ref64| = {err:.3g}, max|torch-ref64| = {base:.3g}")
    assert err <= 2 * base + atol, (
        f"{what}: max|out - ref64| = {err:.3g} > 2 * {base:.3g} + {atol:g} (torch same dtype)")


class Launch(types.SimpleNamespace):
    """One recorded launch: kernel (what wrap_triton got: an Autotuner or a JITFunction),
    grid, args, kwargs, and cuda_device (the CUDA device index current at the launch, None
    if none was made current)."""

    def meta(self, config=None):
        """The launch's constexprs plus a config's (an Autotuner's first by default)."""
        cfg = config or (self.kernel.configs[0] if hasattr(self.kernel, "configs") else None)
        return {**self.kwargs, **(cfg.kwargs if cfg is not None else {})}

    @property
    def fn(self):
        return getattr(self.kernel, "fn", self.kernel)


class _CurrentCuda:
    """Stands in for torch.cuda.device on a machine without CUDA: tracks which index a block
    made current."""
    index = None

    def __init__(self, device):
        self.idx = torch.device(device).index if not isinstance(device, int) else device

    def __enter__(self):
        self.prev, _CurrentCuda.index = _CurrentCuda.index, self.idx

    def __exit__(self, *exc):
        _CurrentCuda.index = self.prev


@contextlib.contextmanager
def captured_launches(fake_cuda=False):
    """Record the launchers' compiled-mode launches instead of making them (yields the list of
    Launch). The interpreter is switched off for the block, so tensors that are not on the CPU
    (meta tensors, or fake CUDA tensors) take the CUDA branch. fake_cuda=True also pretends a
    CUDA build with GPUs (torch.cuda.is_available / device / get_device_properties), so that
    the device a launch is made on can be checked without one."""
    calls = []

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                calls.append(Launch(kernel=self.kernel, grid=grid, args=args, kwargs=kwargs,
                                    cuda_device=_CurrentCuda.index))
            return launch

    saved_env = os.environ.get("TRITON_INTERPRET")
    saved = [(_triton, "wrap_triton", _triton.wrap_triton)]
    if fake_cuda:
        props = types.SimpleNamespace(multi_processor_count=132)
        saved += [(torch.cuda, name, getattr(torch.cuda, name))
                  for name in ("is_available", "device", "get_device_properties")]
        torch.cuda.is_available = lambda: True
        torch.cuda.device = _CurrentCuda
        torch.cuda.get_device_properties = lambda index=None: props
    _triton.wrap_triton = Recorder
    _triton.num_sms.cache_clear()
    os.environ["TRITON_INTERPRET"] = "0"
    try:
        yield calls
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
        _triton.num_sms.cache_clear()
        if saved_env is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved_env


def fake_cuda_tensors(fn, device="cuda:1"):
    """Run fn(empty) under FakeTensorMode, where empty(*shape, dtype=...) makes a fake tensor
    on `device` (no GPU or CUDA build needed)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode(allow_non_fake_inputs=True):
        return fn(lambda *shape, dtype=torch.float32: torch.empty(*shape, dtype=dtype,
                                                                  device=device))


@contextlib.contextmanager
def tf32(matmul, conv):
    """torch's TF32 switches for cuBLAS matmuls and cuDNN convolutions, restored after."""
    mm, cv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    if hasattr(mm, "fp32_precision") and hasattr(cv, "fp32_precision"):
        saved = mm.fp32_precision, cv.fp32_precision
        mm.fp32_precision = "tf32" if matmul else "ieee"
        cv.fp32_precision = "tf32" if conv else "ieee"
        try:
            yield
        finally:
            mm.fp32_precision, cv.fp32_precision = saved
    else:  # torch without the fp32_precision settings
        saved = mm.allow_tf32, torch.backends.cudnn.allow_tf32
        mm.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, conv
        try:
            yield
        finally:
            mm.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
