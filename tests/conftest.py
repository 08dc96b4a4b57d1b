"""Set-up that must precede the first import of triton in the test process.

Without CUDA the Triton kernels run on CPU tensors through Triton's interpreter, which triton
reads at its first import (if a plugin imported triton earlier, the Triton-tier tests skip here
and tests/test_kernel_interpreter.py runs them in a fresh process). With a GPU the kernel tests
use each kernel's first fitting config (CLIPPO_AUTOTUNE=0) to stay quick.
"""
import json
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("CLIPPO_AUTOTUNE", "0")


# `clippo demo` shortened to DEMO_STEPS steps (its recipe, its data, through `clippo train`),
# run once per test session: tests/test_demo.py checks the run, and the evaluation tests use
# the model it trained as their "demo-trained model". At this length the model reads colours
# in every language and script; positions and shapes take the full recipe.
DEMO_STEPS = 300


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """(output folder, report dict) of the shortened `clippo demo`."""
    from clippo import cli
    out = tmp_path_factory.mktemp("demo")
    assert cli.main(["demo", "--out", str(out), "--steps", str(DEMO_STEPS), "--workers", "0",
                     "--no-progress"]) == 0
    return out, json.loads((out / "report.json").read_text())


@pytest.fixture(scope="session")
def demo_model_dir(demo_run):
    """The demo-trained model's save_pretrained folder."""
    out, report = demo_run
    return report["model_dir"]


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (training runs compared bit for bit)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
