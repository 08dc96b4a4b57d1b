"""The registered ops torch.ops.clippo.{patch_embed, patch_embed_grad_weight, attention_fwd,
attention_bwd}: torch.library.opcheck (schema, autograd registration, fake tensors, AOT
dispatch), torch.compile(fullgraph=True), and the backend switch from the environment."""
import importlib
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import clippo.kernels as K
from _kernel_testing import ON_GPU

pe = importlib.import_module("clippo.kernels.patch_embed")

DEVICES = ["cpu"] + (["cuda"] if ON_GPU else [])


def patch_samples(device):
    g = torch.Generator().manual_seed(0)
    grey = torch.randint(0, 256, (2, 1, 16, 24), generator=g, dtype=torch.uint8)
    w = torch.randn(20, 3, 8, 8, generator=g).to(device).requires_grad_()
    b = torch.randn(20, generator=g).to(device).requires_grad_()
    pos = torch.randn(1, 6, 20, generator=g).to(device).requires_grad_()
    img = (torch.rand(1, 3, 16, 20, generator=g) * 2 - 1).to(device).requires_grad_()
    return [
        (grey.to(device).expand(2, 3, 16, 24), w, b, pos),   # uint8, channel stride 0
        (img, w, None, None),                                # float images with grad, ragged W
        (img.detach(), w, b, pos[0, :4]),                    # [N, D] pos
    ]


def attention_samples(device):
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(device).requires_grad_()
    return [
        (r(2, 3, 17, 64), r(2, 3, 9, 64), r(2, 3, 9, 64), 0.125),
        (r(1, 2, 1, 32), r(1, 2, 13, 32), r(1, 2, 13, 32), 0.3),  # one query
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_patch_embed(device):
    for args in patch_samples(device):
        torch.library.opcheck(torch.ops.clippo.patch_embed.default, args)
        images = args[0]
        n = (images.shape[2] // 8) * (images.shape[3] // 8)
        grad = torch.randn(images.shape[0], n, 20, device=device)
        torch.library.opcheck(torch.ops.clippo.patch_embed_grad_weight.default,
                              (images.detach(), grad, 8))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_attention(device):
    for q, k, v, scale in attention_samples(device):
        torch.library.opcheck(torch.ops.clippo.attention_fwd.default, (q, k, v, scale))
        out, lse = torch.ops.clippo.attention_fwd(q, k, v, scale)
        torch.library.opcheck(torch.ops.clippo.attention_bwd.default,
                              (torch.randn_like(out), q.detach(), k.detach(), v.detach(),
                               out.detach(), lse, scale))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph(device):
    """Both public functions on the op path, compiled whole, forward and backward."""
    torch._dynamo.reset()
    images, w, b, pos = patch_samples(device)[0]
    q, k, v, _ = attention_samples(device)[0]
    wq = torch.randn(20, 64, device=device)

    def fn(images, w, b, pos, q, k, v):
        x = K.patch_embed(images, w, b, pos)                    # [2, 6, 20]
        a = K.attention(q + (x.mean() * 0).to(q.dtype), k, v)   # ties the graphs together
        return x.square().mean() + (a @ wq.t()).square().mean()

    with K.use_backend("triton" if K.HAS_TRITON else "auto"):
        eager = fn(images, w, b, pos, q, k, v)
        grads_eager = torch.autograd.grad(eager, [w, b, pos, q, k, v])
        compiled = torch.compile(fn, fullgraph=True)
        got = compiled(images, w, b, pos, q, k, v)
        grads = torch.autograd.grad(got, [w, b, pos, q, k, v])
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-6)
    for g, ge in zip(grads, grads_eager):
        torch.testing.assert_close(g, ge, rtol=1e-4, atol=1e-6)


def test_autocast_casts_like_conv_and_sdpa():
    """Under autocast the op path computes in the autocast dtype, as conv2d / SDPA do."""
    images, w, b, pos = (t.detach() for t in patch_samples("cpu")[0])
    q, k, v = (t.detach() for t in attention_samples("cpu")[0][:3])
    with K.use_backend("triton" if K.HAS_TRITON else "auto"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x = K.patch_embed(images, w, b, pos)
            a = K.attention(q, k, v)
    assert x.dtype == a.dtype == torch.bfloat16
    ref_x = pe.patch_embed_ref(images, w.bfloat16(), b.bfloat16(), pos.bfloat16())
    torch.testing.assert_close(x, ref_x)
    torch.testing.assert_close(a.float(), F.scaled_dot_product_attention(q, k, v), rtol=0,
                               atol=3e-2)


def _python(code, **env):
    return subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env),
                          capture_output=True, text=True, timeout=300)


def test_backend_from_environment():
    code = "import clippo.kernels as K; print(K.get_backend())"
    proc = _python(code, CLIPPO_KERNELS="torch")
    assert proc.returncode == 0 and proc.stdout.strip() == "torch", proc.stderr
    proc = _python(code, CLIPPO_KERNELS="gpu")
    assert proc.returncode != 0 and "unknown clippo kernel backend 'gpu'" in proc.stderr


def test_fusions_from_environment():
    code = "import clippo.kernels as K; print(K.get_fusions())"
    for spec, want in (("all", "('layer_norm', 'linear')"), ("linear", "('linear',)"),
                       (" layer_norm , linear", "('layer_norm', 'linear')"), ("none", "()"),
                       ("", "()")):
        proc = _python(code, CLIPPO_FUSE=spec)
        assert proc.returncode == 0 and proc.stdout.strip() == want, (spec, proc.stderr)
    proc = _python(code, CLIPPO_FUSE="gelu")
    assert proc.returncode != 0 and "unknown clippo fusion(s) ['gelu']" in proc.stderr


def test_triton_backend_without_triton_raises():
    """A CPU install without triton: the torch paths work, asking for Triton raises."""
    code = (
        "import sys; sys.modules['triton'] = None\n"  # makes `import triton` fail
        "import torch, clippo.kernels as K\n"
        "assert not K.HAS_TRITON\n"
        "x = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)\n"
        "w = torch.randn(8, 3, 8, 8)\n"
        "assert K.patch_embed(x, w, None).shape == (1, 4, 8)\n"
        "q = torch.randn(1, 2, 4, 16)\n"
        "assert K.attention(q, q, q).shape == q.shape\n"
        "out = torch.ops.clippo.attention_fwd(q, q, q, 0.25)[0]\n"
        "try:\n"
        "    K.set_backend('triton')\n"
        "except RuntimeError as e:\n"
        "    print('raised:', e)\n")
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert "raised: the clippo 'triton' kernel backend was requested" in proc.stdout


def test_unavailable_triton_backend_leaves_the_backend_unchanged(monkeypatch):
    from clippo.kernels import _backend
    monkeypatch.setattr(_backend, "HAS_TRITON", False)
    before = K.get_backend()
    with pytest.raises(RuntimeError):
        K.set_backend("triton")
    assert K.get_backend() == before
    with pytest.raises(RuntimeError):
        with K.set_backend("triton"):
            pass
    assert K.get_backend() == before
