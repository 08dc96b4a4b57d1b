"""The whole model through the Triton kernels (CUDA, or the CPU interpreter): every call site
of clippo.kernels in the ViT (patch embedding, attention incl. the MAP head's single query,
LayerNorm, the fused Dense epilogues with residuals) against the plain torch path.

On the CPU the registered ops run their torch CPU kernels, so here the ops are pointed at the
Triton launchers themselves (forward only), which the interpreter runs on CPU tensors."""
import importlib

import pytest
import torch

import clippo
import clippo.kernels as K
from _kernel_testing import DEVICE, needs_triton

pe = importlib.import_module("clippo.kernels.patch_embed")
at = importlib.import_module("clippo.kernels.attention")
ln = importlib.import_module("clippo.kernels.layer_norm")
lin = importlib.import_module("clippo.kernels.linear")


@pytest.fixture
def launchers_as_ops(monkeypatch):
    """The public functions' op calls go straight to the Triton launchers."""
    calls = {}

    def count(name, fn):
        def wrapped(*args):
            calls[name] = calls.get(name, 0) + 1
            return fn(*args)
        return wrapped

    monkeypatch.setattr(pe, "patch_embed_op", count("patch_embed", pe.patch_embed_fwd))
    monkeypatch.setattr(at, "attention_op",
                        count("attention", lambda q, k, v, s, lengths=None: at.attention_fwd(
                            q, k, v, q.shape[-1] ** -0.5 if s is None else s, lengths)[0]))
    monkeypatch.setattr(ln, "layer_norm_op",
                        count("layer_norm", lambda x, w, b, e: ln.layer_norm_fwd(x, w, b, e)[0]))
    monkeypatch.setattr(lin, "linear_op",
                        count("linear", lambda x, w, b, r, a: lin.linear_fwd(
                            x, w, b, r, a, False)[0]))
    return calls


@needs_triton
@pytest.mark.parametrize("uint8", [False, True], ids=["float", "uint8"])
def test_model_forward_through_kernels(launchers_as_ops, uint8):
    torch.manual_seed(0)
    depth = 2
    model = clippo.create_model("mu/16", image_size=48, width=64, depth=depth, mlp_dim=96,
                                num_heads=2, out_dim=24).to(DEVICE).eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (3, 3, 48, 48), generator=g, dtype=torch.uint8).to(DEVICE)
    if not uint8:
        images = images.float() / 255 * 2 - 1
    with torch.no_grad():
        with K.use_backend("torch"):
            want = model.encode_image(images)
        with K.use_backend("triton"):
            got = model.encode_image(images)
    # per block: 2 LayerNorms, 1 attention, 3 Dense (out, MLP x2); MAP head: 1, 1, 3; final norm 1
    assert launchers_as_ops == {"patch_embed": 1, "attention": depth + 1,
                                "layer_norm": 2 * depth + 2, "linear": 3 * depth + 3}
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@needs_triton
def test_ink_tokens_packed_through_kernels(launchers_as_ops):
    """Texts of different ink counts: the packed tokens [T, D] through the LayerNorm and Dense
    kernels, padded only for the attention kernel with lengths, equal the torch path."""
    torch.manual_seed(0)
    model = clippo.create_model("mu/16", image_size=48, width=64, depth=2, mlp_dim=96,
                                num_heads=2, out_dim=24, text_tokens="ink").to(DEVICE).eval()
    texts = ["a red circle", "", "ein Stern", "x"]  # none fills all 9 patches: one pass
    with torch.no_grad():
        with K.use_backend("torch"):
            want = model.encode_text(texts)
        with K.use_backend("triton"):
            got = model.encode_text(texts)
    assert launchers_as_ops["linear"] == 3 * 2 + 3 and launchers_as_ops["attention"] == 3
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # photos (every patch) and texts (ink) in one stream, as the training step encodes them
    rendered, ink = model.render_texts(texts, DEVICE)
    photos = torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8).to(DEVICE)
    keep = torch.cat([torch.ones(2, ink.shape[1], dtype=torch.bool, device=DEVICE), ink])
    with torch.no_grad():
        with K.use_backend("torch"):
            want = model.img(torch.cat([photos, rendered]), keep=keep)
        with K.use_backend("triton"):
            got = model.img(torch.cat([photos, rendered]), keep=keep)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@needs_triton
def test_fusions_off_under_auto_keep_torch_for_optional_kernels(launchers_as_ops):
    """Under "auto" with no fusion enabled, LayerNorm and Dense stay on torch (on a GPU the
    stable kernels still run; on the CPU nothing goes to the ops)."""
    model = clippo.create_model("mu/16", image_size=32, out_dim=8).to(DEVICE).eval()
    images = torch.zeros(1, 3, 32, 32, device=DEVICE)
    with torch.no_grad(), K.use_backend("auto"), K.use_fusions("none"):
        model.encode_image(images)
    assert "layer_norm" not in launchers_as_ops and "linear" not in launchers_as_ops


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_b16_on_gpu_every_kernel_vs_torch(dtype):
    """ViT-B/16 on the GPU with every kernel on (the registered ops, autotuned configs) against
    the model in float64: the fused model is as close to it as torch's own model in the same
    dtype is (2x rule, as the kernel tests). In fp32 torch's error is its TF32 convolution by
    default (and TF32 matmuls where enabled), which the kernels follow."""
    torch.manual_seed(0)
    model = clippo.create_model("B/16").to("cuda").eval()
    texts = [f"sample {i}: the quick brown fox" for i in range(6)]
    images = clippo.render(texts, device="cuda")
    with torch.no_grad():
        with K.use_backend("torch"):
            ref64 = model.double().encode_image(images)
            ref_same = model.to(dtype).encode_image(images).double()
        with K.use_backend("auto"), K.use_fusions("all"):
            got = model.encode_image(images).double()
    err, base = (got - ref64).abs().max().item(), (ref_same - ref64).abs().max().item()
    print(f"{dtype}: max|fused - fp64 torch| = {err:.3g}, "
          f"max|torch same dtype - fp64 torch| = {base:.3g}")
    assert err <= 2 * base + (1e-5 if dtype == torch.float32 else 2e-3)
