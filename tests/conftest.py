"""Set-up that must precede the first import of triton in the test process.

Without CUDA the Triton kernels run on CPU tensors through Triton's interpreter, which triton
reads at its first import (if a plugin imported triton earlier, the Triton-tier tests skip here
and tests/test_kernel_interpreter.py runs them in a fresh process). With a GPU the kernel tests
use each kernel's first fitting config (CLIPPO_AUTOTUNE=0) to stay quick.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("CLIPPO_AUTOTUNE", "0")
