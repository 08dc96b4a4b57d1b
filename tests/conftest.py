"""Set-up that must precede the first import of triton in the test process.

Without CUDA the Triton kernels run on CPU tensors through Triton's interpreter, which triton
reads at its first import (a module that imported triton earlier in the process makes the
kernel tests re-run themselves in a subprocess: clippo/kernels/_testing.py). With a GPU the
kernel tests use each kernel's first config (CLIPPO_AUTOTUNE=0) to stay quick.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("CLIPPO_AUTOTUNE", "0")
