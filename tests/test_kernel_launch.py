"""What the launchers hand a GPU, checked without one: the launches are recorded instead of
made (tests/_kernel_testing.captured_launches), on fake CUDA or meta tensors.

- every kernel launches with its tensors' device current, not the process's current device;
- autotuning keys on a bucket of the row count: a Dense over one row per image (the MAP head)
  and one over every token tune apart, and a single query runs in a 16-row tile;
- fp32 products follow torch's TF32 settings (matmul for linear and attention, cuDNN conv for
  the patch embedding), so the kernels round as the torch ops they replace.
"""
import contextlib
import importlib

import pytest
import torch

from _kernel_testing import captured_launches, fake_cuda_tensors, tf32
from clippo.kernels import _triton
from clippo.kernels._backend import HAS_TRITON

pe = importlib.import_module("clippo.kernels.patch_embed")
at = importlib.import_module("clippo.kernels.attention")
ln = importlib.import_module("clippo.kernels.layer_norm")
lin = importlib.import_module("clippo.kernels.linear")

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

KERNELS = {"patch_embed_fwd_kernel", "patch_embed_grad_weight_kernel", "attn_fwd_kernel",
           "attn_bwd_delta_kernel", "attn_bwd_dkdv_kernel", "attn_bwd_dq_kernel",
           "layer_norm_fwd_kernel", "layer_norm_bwd_kernel", "linear_kernel"}


def launch_everything(empty, dtype=torch.float32, rows=2):
    """Every launcher once, at small ViT-like shapes: `rows` images of 2 x 2 patches."""
    images = empty(rows, 1, 32, 32, dtype=torch.uint8).expand(rows, 3, 32, 32)
    w, b = empty(64, 3, 16, 16, dtype=dtype), empty(64, dtype=dtype)
    tokens = pe.patch_embed_fwd(images, w, b, empty(4, 64, dtype=dtype))
    pe.patch_embed_grad_weight(images, tokens, 16)
    q = empty(rows, 4, 5, 16, dtype=dtype)
    out, lse = at.attention_fwd(q, q, q, 0.25)
    at.attention_bwd(out, q, q, q, out, lse, 0.25)
    y, mean, rstd = ln.layer_norm_fwd(tokens, b, b, 1e-6)
    ln.layer_norm_bwd(y, tokens, b, mean, rstd)
    lin.linear_fwd(tokens, empty(32, 64, dtype=dtype), None, None, "gelu", True)


def kernel_name(launch):
    return launch.fn.__name__.strip("_")


# ------------------------------------------------------------------ the launch device


@pytest.mark.parametrize("index", [1, 0])
def test_every_launch_has_its_tensors_device_current(index):
    """Tensors on cuda:1 while no device (so cuda:0) is current: each kernel must launch with
    cuda:1 current, as Triton launches on the current device."""
    with captured_launches(fake_cuda=True) as calls:
        fake_cuda_tensors(launch_everything, device=f"cuda:{index}")
    assert {kernel_name(c) for c in calls} == KERNELS
    assert [c.cuda_device for c in calls] == [index] * len(calls)


def test_cpu_tensors_never_touch_a_cuda_device():
    assert isinstance(_triton.on_device(torch.device("cpu")), contextlib.nullcontext)
    assert isinstance(_triton.on_device(torch.device("meta")), contextlib.nullcontext)


# ------------------------------------------------------------------ row buckets


def meta(*shape, dtype=torch.bfloat16):
    return torch.empty(*shape, dtype=dtype, device="meta")


@pytest.mark.parametrize("autotune", ["1", "0"])
def test_dense_rows_are_bucketed(monkeypatch, autotune):
    """The MAP head's Dense (M = batch) and the encoder's (M = batch x tokens) at the same
    N, K: separate autotuners (each its own cache of tuned configs), the MAP head's with
    16-row tiles only; two batch sizes in one bucket share one."""
    monkeypatch.setenv("CLIPPO_AUTOTUNE", autotune)
    w, b = meta(3072, 768), meta(3072)
    with captured_launches() as calls:
        for x in (meta(8, 768), meta(8, 197, 768), meta(9, 197, 768)):
            lin.linear_fwd(x, w, b, None, "gelu", False)
    head, enc8, enc9 = (c.kernel for c in calls)
    assert head is not enc8 and enc8 is enc9
    assert {c.kwargs["BLOCK_M"] for c in head.configs} == {16}
    full = _triton.Kernel.table(lin._linear, "half")
    if autotune == "1":
        assert [c.kwargs for c in enc8.configs] == [c.kwargs for c in full]
        assert head.keys == enc8.keys == ["N", "K", "HAS_RES", "GELU", "SAVE_PRE"]
    else:  # the first config of the table that fits
        assert len(head.configs) == len(enc8.configs) == 1
        assert enc8.configs[0].kwargs == full[0].kwargs
    grid = calls[0].grid(calls[0].meta(head.configs[0]))
    assert grid == (3072 // head.configs[0].kwargs["BLOCK_N"],)  # one row tile: all 8 rows


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_single_query_attention_runs_in_a_16_row_tile(monkeypatch, dtype):
    """The MAP head: one query over 196 tokens, forward and backward."""
    monkeypatch.setenv("CLIPPO_AUTOTUNE", "1")
    q, kv = meta(8, 12, 1, 64, dtype=dtype), meta(8, 12, 196, 64, dtype=dtype)
    with captured_launches() as calls:
        out, lse = at.attention_fwd(q, kv, kv, 0.125)
        at.attention_bwd(out, q, kv, kv, out, lse, 0.125)
        at.attention_fwd(meta(8, 12, 197, 64, dtype=dtype), kv, kv, 0.125)
    fwd, delta, dkdv, dq, fwd_tokens = calls
    for launch in (fwd, dkdv, dq):
        assert {c.kwargs["BLOCK_M"] for c in launch.kernel.configs} == {16}, kernel_name(launch)
    assert fwd.grid(fwd.meta()) == (8 * 12, 1)
    assert fwd_tokens.kernel is not fwd.kernel
    assert max(c.kwargs["BLOCK_M"] for c in fwd_tokens.kernel.configs) > 16


def test_row_bucket():
    assert [_triton.row_bucket(m) for m in (0, 1, 16, 17, 197, 1576, 10 ** 6)] == [
        16, 16, 16, 32, 256, 2048, _triton.MAX_ROW_BUCKET]


def test_row_tiled_tables_have_a_tile_for_one_row():
    """So that a single row never falls back to a taller tile."""
    for kernel in (lin._linear, at._attn_fwd, at._attn_bwd_dkdv, at._attn_bwd_dq):
        for kind in kernel.tables:
            assert min(c.kwargs["BLOCK_M"] for c in kernel.table(kind)) == 16, (kernel.name, kind)


# ------------------------------------------------------------------ TF32


CONV_KERNELS = {"patch_embed_fwd_kernel", "patch_embed_grad_weight_kernel"}


@pytest.mark.parametrize("matmul, conv", [(False, True), (True, False), (True, True),
                                          (False, False)])
def test_fp32_dots_follow_torch_tf32_settings(matmul, conv):
    with tf32(matmul, conv), captured_launches() as calls:
        launch_everything(meta)  # fp32
    with tf32(matmul, conv), captured_launches() as half:
        launch_everything(lambda *s, dtype=torch.bfloat16: meta(*s, dtype=dtype), torch.bfloat16)
    seen = set()
    for c in calls:
        if "IN_PRECISION" in c.kwargs:
            allowed = conv if kernel_name(c) in CONV_KERNELS else matmul
            assert c.kwargs["IN_PRECISION"] == ("tf32" if allowed else "ieee"), kernel_name(c)
            seen.add(kernel_name(c))
    assert seen == KERNELS - {"attn_bwd_delta_kernel", "layer_norm_fwd_kernel",
                              "layer_norm_bwd_kernel"}
    assert all(c.kwargs.get("IN_PRECISION") is None for c in half)


def test_dot_precision_default_is_torch_default():
    """torch's defaults: exact fp32 matmuls, TF32 cuDNN convolutions."""
    assert _triton.dot_precision(torch.float32) == (
        "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee")
    assert _triton.dot_precision(torch.float32, "conv") == (
        "tf32" if torch.backends.cudnn.allow_tf32 else "ieee")
    assert _triton.dot_precision(torch.float16) is None
