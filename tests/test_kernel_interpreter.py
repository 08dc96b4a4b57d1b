"""The Triton tier in a fresh process, when this one cannot run it.

The interpreter must be switched on (TRITON_INTERPRET=1) before triton is first imported;
tests/conftest.py does so, but a plugin that imported triton earlier in this process makes the
Triton-tier tests skip (tests/_kernel_testing.TRITON_HERE). This test then runs those files
again in a fresh interpreter, so that no kernel test silently vanishes.
"""
import os
import subprocess
import sys

import pytest

from _kernel_testing import TRITON_HERE, WHY_NOT
from clippo.kernels._backend import HAS_TRITON

# the test files with Triton-tier (needs_triton) tests
TRITON_TIER = ["test_patch_embed.py", "test_attention.py", "test_attention_padding.py",
               "test_kernel_layer_norm.py",
               "test_kernel_linear.py", "test_model_kernels.py"]


def test_triton_tier_runs_somewhere():
    if TRITON_HERE or not HAS_TRITON:
        pytest.skip("the Triton tier ran in this process" if TRITON_HERE else WHY_NOT)
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           *[os.path.join(here, f) for f in TRITON_TIER]],
                          env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]


def test_the_list_names_every_triton_tier_file():
    here = os.path.dirname(os.path.abspath(__file__))
    users = set()
    for name in os.listdir(here):
        if name.startswith("test_") and name.endswith(".py") and name != os.path.basename(
                __file__):
            with open(os.path.join(here, name), encoding="utf-8") as f:
                if "needs_triton" in f.read():
                    users.add(name)
    assert users == set(TRITON_TIER)
