"""The ViT / CLIPPO model against an independent float64 numpy port of the reference."""
import math

import numpy as np
import pytest
import torch

from _bv_reference import bv_embed, random_bv_params, save_bv_npz
from clippo.model import CLIPPO, VARIANTS, ViT, decode_variant, render_and_encode

SMALL = dict(width=64, depth=2, num_heads=4, mlp_dim=96, patch=16, out_dim=48)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """(big_vision params, CLIPPO loaded from them) for a random 64-wide, 2-deep model at 32px."""
    rng = np.random.default_rng(0)
    params = random_bv_params(rng, num_pos=4, **SMALL)
    path = tmp_path_factory.mktemp("ckpt") / "small.npz"
    save_bv_npz(path, params)
    return params, CLIPPO.from_big_vision(path)


def _images(rng, b, size, dtype="uint8"):
    if dtype == "uint8":
        return rng.integers(0, 256, (b, 3, size, size), dtype=np.uint8)
    return rng.uniform(-1, 1, (b, 3, size, size))


@pytest.mark.parametrize("dtype", ["uint8", "float"])
def test_parity_with_numpy_reference(small, dtype):
    params, model = small
    x = _images(np.random.default_rng(1), 3, 32, dtype)
    want = bv_embed(params, x)
    xt = torch.from_numpy(x) if dtype == "uint8" else torch.from_numpy(x).float()
    with torch.no_grad():
        got = model.encode_image(xt).double().numpy()
    # float32 rounding is ~3e-7 here; a GELU without the tanh approximation is off by ~1e-4,
    # LayerNorm eps 1e-5 instead of 1e-6 by ~2.5e-6.
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-6)
    # the unnormalised head output too, so normalisation cannot hide an error in scale
    with torch.no_grad():
        raw = model.encode_image(xt, normalize_output=False).double().numpy()
    np.testing.assert_allclose(raw, bv_embed(params, x, normalize=False), rtol=1e-5, atol=1e-5)
    assert all(m.eps == 1e-6 for m in model.modules() if isinstance(m, torch.nn.LayerNorm))


def test_parity_larger_grid_and_temperature(tmp_path):
    rng = np.random.default_rng(2)
    params = random_bv_params(rng, width=32, depth=1, num_heads=2, mlp_dim=64, patch=8,
                              num_pos=64, out_dim=16)
    save_bv_npz(tmp_path / "m.npz", params)
    model = CLIPPO.from_big_vision(tmp_path / "m.npz")
    assert model.config["image_size"] == 64 and model.config["patch_size"] == 8
    x = _images(rng, 2, 64)
    with torch.no_grad():
        got = model.encode_image(torch.from_numpy(x)).double().numpy()
    np.testing.assert_allclose(got, bv_embed(params, x), atol=1e-6, rtol=0)
    assert model.temperature.item() == pytest.approx(math.exp(params["t"][0]), rel=1e-6)


def test_uint8_and_float_inputs_agree(small):
    _, model = small
    x = torch.from_numpy(_images(np.random.default_rng(3), 2, 32))
    with torch.no_grad():
        a = model.encode_image(x)
        b = model.encode_image(x.float() / 255 * 2 - 1)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_forward_returns_both_embeddings_and_scale(small):
    _, model = small
    x = torch.from_numpy(_images(np.random.default_rng(4), 2, 32))
    y = torch.from_numpy(_images(np.random.default_rng(5), 2, 32))
    zimg, ztxt, scale = model(x, y)  # a rendered tensor is encoded by the same tower
    torch.testing.assert_close(zimg, model.encode_image(x))
    torch.testing.assert_close(ztxt, model.encode_image(y))
    assert scale.shape == () and scale.item() == pytest.approx(model.t.exp().item())


class _FakeRenderer:
    """Stands in for TextRenderer: a deterministic uint8 image per string."""

    def __init__(self, size):
        self.size, self.calls = size, []

    def __call__(self, texts):
        self.calls.append(list(texts))
        out = torch.full((len(texts), 3, self.size, self.size), 127, dtype=torch.uint8)
        for i, t in enumerate(texts):
            out[i, :, : len(t) % self.size, : 2 * len(t) % self.size] = 0
        return out


def test_encode_text_renders_then_uses_the_same_tower(small):
    _, model = small
    fake = _FakeRenderer(32)
    model._renderers[model.device] = fake
    try:
        texts = ["a cat", "a much longer caption"]
        ztxt = model.encode_text(texts)
        assert fake.calls == [texts]
        torch.testing.assert_close(ztxt, model.encode_image(fake(texts)))
        torch.testing.assert_close(render_and_encode(model, "a cat"), ztxt[:1])
        _, ztxt2, _ = model(None, texts)
        torch.testing.assert_close(ztxt2, ztxt)
    finally:
        model._renderers.clear()


def test_render_and_encode_passes_uint8_to_the_kernel(small, monkeypatch):
    from clippo.model import vit
    _, model = small
    seen = []
    real = vit.kernels.patch_embed

    def spy(images, *args):
        seen.append(images.dtype)
        return real(images, *args)
    monkeypatch.setattr(vit.kernels, "patch_embed", spy)
    model._renderers[model.device] = _FakeRenderer(32)
    try:
        render_and_encode(model, ["x", "yy"])
    finally:
        model._renderers.clear()
    assert seen == [torch.uint8]  # no float copy of the text images on the way


def test_encode_text_with_real_renderer():
    pytest.importorskip("clippo._C", reason="compiled extension not built")
    TextRenderer = pytest.importorskip("clippo.text.render").TextRenderer
    model = CLIPPO("mu/16", image_size=32, out_dim=8)
    texts = ["hello world", "CLIPPO"]
    ref = TextRenderer(**model.render_config.to_dict(), device="cpu")(texts)
    assert ref.dtype == torch.uint8 and ref.shape == (2, 3, 32, 32)
    torch.testing.assert_close(model.encode_text(texts), model.encode_image(ref))


def test_b16_parameter_count():
    with torch.device("meta"):
        model = CLIPPO("B/16")
    assert model.num_params() == 93_474_817
    assert len(list(model.parameters())) == 215
    assert model.img.pos_embedding.shape == (1, 196, 768)
    assert model.img.embedding.weight.shape == (768, 3, 16, 16)


def test_decode_variant_and_overrides():
    assert decode_variant("B/16") == dict(width=768, depth=12, mlp_dim=3072, num_heads=12,
                                          patch_size=16)
    assert decode_variant("L/14")["patch_size"] == 14 and decode_variant("L")["depth"] == 24
    assert decode_variant("So400m/14")["mlp_dim"] == 4304
    assert decode_variant(None) == {}
    assert {"Ti", "S", "B", "L", "H"} <= set(VARIANTS)
    for bad in ("X/16", "B/0", "B/x", 16):
        with pytest.raises(ValueError):
            decode_variant(bad)
    with torch.device("meta"):
        vit = ViT("S/32", depth=2, num_heads=3, image_size=64)
        assert (vit.width, vit.depth, vit.num_heads, vit.mlp_dim) == (384, 2, 3, 1536)
        assert vit.num_patches == 4 and vit.head is None
        vit = ViT(width=64, depth=1, num_heads=2, patch_size=8, image_size=(16, 32))
        assert vit.mlp_dim == 256 and vit.num_patches == 8  # 4*width, as big_vision


@pytest.mark.parametrize("kw, match", [
    (dict(pool_type="tok"), "pool_type"),
    (dict(posemb="sincos2d"), "posemb"),
    (dict(image_size=30), "multiple of patch"),
    (dict(num_heads=5), "divisible"),
])
def test_bad_arguments_raise_value_error(kw, match):
    with pytest.raises(ValueError, match=match):
        ViT("mu/16", **{"image_size": 32, **kw})
    with pytest.raises(ValueError, match="patch_size"):
        ViT(width=32, depth=1, num_heads=2)


def test_pool_types_and_intermediates():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    for pool in ("map", "gap", "0"):
        vit = ViT("mu/16", image_size=32, pool_type=pool, num_classes=8)
        y, out = vit(x, return_intermediates=True)
        assert y.shape == (2, 8)
        assert out["encoded"].shape == (2, 4, 32) and out["pre_logits"].shape == (2, 32)
        torch.testing.assert_close(out["logits"], y)
        if pool == "gap":
            torch.testing.assert_close(out["pre_logits"], out["encoded"].mean(1))
        if pool == "0":
            torch.testing.assert_close(out["pre_logits"], out["encoded"][:, 0])


def test_image_grid_must_match_position_table():
    vit = ViT("mu/16", image_size=32)
    x = torch.zeros(1, 3, 16, 64)  # 1x4 patches = 4 positions: accepted
    assert vit(x).shape == (1, 32)
    for shape in [(1, 3, 48, 48), (1, 3, 32, 40), (1, 1, 32, 32), (3, 32, 32)]:
        with pytest.raises(ValueError, match="patch|3, H, W"):
            vit(torch.zeros(shape))


def test_gradients_reach_every_parameter(small):
    _, model = small
    model = CLIPPO.from_config(model.config)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    zimg, ztxt, scale = model(x, x.flip(0))
    (scale * (zimg @ ztxt.t())).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_init_temperature():
    model = CLIPPO("mu/16", image_size=32, out_dim=4, temperature_init=10.0)
    assert model.t.shape == (1,)
    assert model.t.item() == pytest.approx(math.log(10.0))
    assert model.temperature.item() == pytest.approx(10.0)


def test_factory_configs():
    from clippo.factory import create_model, get_model_config, list_models
    from clippo.model.clippo import RenderConfig
    assert "clippo-B-16" in list_models()
    assert get_model_config("clippo-B-16")["variant"] == "B/16"
    model = create_model("clippo-B-16", device="meta")
    assert model.num_params() == 93_474_817
    cfg = model.config
    assert (cfg["image_size"], cfg["out_dim"], cfg["pool_type"]) == (224, 768, "map")
    assert model.render_config == RenderConfig()  # CLIPPO's render settings are the defaults
    assert model.temperature_init == 10.0
    # a plain variant works, and keyword arguments override the config
    small = create_model("mu/16", image_size=32, out_dim=8, depth=2, render={"lower": False})
    assert (small.img.depth, small.img.width, small.config["out_dim"]) == (2, 32, 8)
    assert small.render_config.image_size == 32 and small.render_config.lower is False
    with pytest.raises(ValueError, match="unknown model"):
        create_model("clippo-X-99")
    with pytest.raises(ValueError, match="patch size"):
        create_model("B", device="meta")


def test_factory_pretrained(tmp_path):
    from clippo.factory import create_model
    rng = np.random.default_rng(6)
    params = random_bv_params(rng, width=32, depth=1, num_heads=2, mlp_dim=128, patch=16,
                              num_pos=4, out_dim=8)
    save_bv_npz(tmp_path / "m.npz", params)
    model = create_model("mu/16", image_size=32, out_dim=8, pretrained=tmp_path / "m.npz")
    x = _images(rng, 2, 32)
    with torch.no_grad():
        got = model.encode_image(torch.from_numpy(x)).double().numpy()
    np.testing.assert_allclose(got, bv_embed(params, x), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="does not match"):
        create_model("mu/16", image_size=32, out_dim=16, pretrained=tmp_path / "m.npz")


def test_init_follows_big_vision_initialisers():
    torch.manual_seed(0)
    vit = ViT(width=256, depth=1, num_heads=4, mlp_dim=512, patch_size=16, image_size=256,
              num_classes=128)
    w = vit.embedding.weight  # lecun_normal: std 1/sqrt(fan_in), truncated at 2 std
    std = 1 / math.sqrt(3 * 16 * 16)
    assert w.std().item() == pytest.approx(std, rel=0.03)
    assert w.abs().max().item() <= 2 * std / 0.87962566103423978 + 1e-6
    assert vit.pos_embedding.std().item() == pytest.approx(1 / 16, rel=0.03)
    dense = vit.Transformer.encoderblock_0.MlpBlock_0.Dense_0.weight  # xavier_uniform
    bound = math.sqrt(6 / (256 + 512))
    assert dense.abs().max().item() <= bound
    assert dense.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)
    assert torch.equal(vit.Transformer.encoder_norm.weight, torch.ones(256))
    assert vit.MAPHead_0.probe.abs().max().item() <= math.sqrt(6 / 257)


DATA = __import__("pathlib").Path(__file__).parent / "data"


@pytest.mark.parametrize("name", ["jax_small", "jax_small_scan"])
def test_matches_outputs_of_the_jax_reference(tmp_path, name):
    """A small CLIPPO run through big_vision's own flax code (tests/_make_jax_golden.py);
    jax_small_scan has the blocks stacked on a layer axis (scan=True)."""
    io = np.load(DATA / f"{name}_io.npz")
    model = CLIPPO.from_big_vision(DATA / f"{name}.npz")
    assert (model.img.width, model.img.depth, model.img.patch_size) == (32, 2, 8)
    with torch.no_grad():
        zimg, ztxt, scale = model(torch.from_numpy(io["images"]), torch.from_numpy(io["texts"]))
        raw = model.encode_image(torch.from_numpy(io["images"]), normalize_output=False)
    # float32 rounding: ~6e-7 on unit vectors, ~1e-6 relative on the head output (|z| ~ 7)
    np.testing.assert_allclose(zimg.numpy(), io["zimg"], atol=3e-6, rtol=0)
    np.testing.assert_allclose(ztxt.numpy(), io["ztxt"], atol=3e-6, rtol=0)
    np.testing.assert_allclose(raw.numpy(), io["img_logits"], atol=3e-5, rtol=1e-5)
    assert scale.item() == pytest.approx(io["temperature"].item(), rel=1e-6)
    # writing back gives the very arrays big_vision saved (unscanned: one entry per layer)
    model.to_big_vision(tmp_path / "back.npz")
    with np.load(DATA / f"{name}.npz") as a, np.load(tmp_path / "back.npz") as b:
        back = {k: b[k] for k in b.files}
        for k in a.files:
            if "/encoderblock/" in k:
                for i, layer in enumerate(a[k]):
                    np.testing.assert_array_equal(
                        layer, back.pop(k.replace("/encoderblock/", f"/encoderblock_{i}/")))
            else:
                np.testing.assert_array_equal(a[k], back.pop(k), err_msg=k)
        assert not back
    # and the float64 numpy port used by the other tests agrees with JAX too
    params = {k[len("params/"):]: v for k, v in back_params(tmp_path / "back.npz").items()}
    np.testing.assert_allclose(bv_embed(params, io["images"]), io["zimg"], atol=3e-6, rtol=0)


def back_params(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
