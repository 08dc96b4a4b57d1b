"""Helpers shared by the kernel tests (tests/test_patch_embed.py, test_attention.py,
test_kernel_layer_norm.py, test_kernel_linear.py, test_model_kernels.py, test_kernels_ops.py).
Not part of the public API.

The Triton tier runs the launchers on CUDA tensors when a GPU is present, and otherwise on CPU
tensors through the Triton interpreter, which needs TRITON_INTERPRET=1 *before triton is first
imported*. tests/conftest.py sets it before any test module loads; if triton was imported
earlier in the same pytest process anyway (a plugin), `TRITON_HERE` is False and each kernel
test module re-runs itself in a subprocess with the variable set (`rerun_in_subprocess`), so no
test silently vanishes.
"""
import os
import subprocess
import sys

import pytest
import torch

from ._utils import HAS_TRITON, interpreting

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda" and not interpreting()


def _kernels_interpreted():
    """Whether Triton kernels run on CPU tensors in this process: a tiny kernel that uses the
    language's own jit helpers must run (if triton was imported before TRITON_INTERPRET=1 was
    set, those helpers are compiled-mode functions and the interpreter fails on them)."""
    if not HAS_TRITON or not interpreting():
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
    WHY_NOT = "triton was imported before TRITON_INTERPRET=1 was set: run in a subprocess"
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


def rerun_in_subprocess(test_file):
    """Run `test_file` in a fresh interpreter with TRITON_INTERPRET=1 (when this process cannot
    run the Triton tier itself); fails with the child's output if the child fails."""
    if TRITON_HERE or not HAS_TRITON:
        pytest.skip("the Triton tier ran in this process" if TRITON_HERE else WHY_NOT)
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           test_file], env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
