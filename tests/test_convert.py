"""big_vision .npz loading/saving, save_pretrained, and the `clippo convert` CLI."""
import json
import os
import tracemalloc

import numpy as np
import pytest
import torch

from _bv_reference import bv_embed, random_bv_params, save_bv_npz
from clippo import cli, convert
from clippo.model import CLIPPO

SIZES = dict(width=32, depth=2, num_heads=2, mlp_dim=48, patch=8, num_pos=4, out_dim=24)


@pytest.fixture()
def params():
    return random_bv_params(np.random.default_rng(0), **SIZES)


def _save(tmp_path, params, name="m.npz", **kw):
    path = tmp_path / name
    save_bv_npz(path, params, **kw)
    return path


def _embed(model, x):
    with torch.no_grad():
        return model.encode_image(torch.from_numpy(x)).double().numpy()


def test_infers_architecture(tmp_path, params):
    model = CLIPPO.from_big_vision(_save(tmp_path, params))
    cfg = model.config
    assert (cfg["width"], cfg["depth"], cfg["num_heads"], cfg["mlp_dim"], cfg["patch_size"],
            cfg["image_size"], cfg["out_dim"], cfg["pool_type"]) == (32, 2, 2, 48, 8, 16, 24, "map")
    assert model.num_params() == sum(a.size for a in params.values())


def test_round_trip_is_exact(tmp_path, params):
    model = CLIPPO.from_big_vision(_save(tmp_path, params))
    model.to_big_vision(tmp_path / "out.npz")
    with np.load(tmp_path / "out.npz", allow_pickle=False) as z:
        assert sorted(z.files) == sorted("params/" + k for k in params)
        for k, v in params.items():
            a = z["params/" + k]
            assert a.dtype == np.float32 and a.shape == v.shape, k
            np.testing.assert_array_equal(a, v, err_msg=k)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # temp file renamed


def test_prefix_optional_and_opt_ignored(tmp_path, params):
    x = np.random.default_rng(1).integers(0, 256, (2, 3, 16, 16), dtype=np.uint8)
    want = bv_embed(params, x)
    opt = {"opt/img/head/kernel": np.zeros(3, np.float32), "opt/count": np.zeros((), np.int32)}
    for prefix, extra in (("", None), ("params/", opt)):
        model = CLIPPO.from_big_vision(_save(tmp_path, params, prefix=prefix, extra=extra))
        np.testing.assert_allclose(_embed(model, x), want, atol=1e-6, rtol=0)


def test_missing_key_is_named(tmp_path, params):
    del params["img/Transformer/encoderblock_1/MlpBlock_0/Dense_1/bias"]
    with pytest.raises(KeyError, match="encoderblock_1/MlpBlock_0/Dense_1/bias"):
        CLIPPO.from_big_vision(_save(tmp_path, params))


def test_missing_temperature_is_named(tmp_path, params):
    del params["t"]
    with pytest.raises(KeyError, match="t'"):
        CLIPPO.from_big_vision(_save(tmp_path, params))


def test_extra_key_is_named(tmp_path, params):
    params["img/Transformer/encoderblock_0/LayerNorm_7/scale"] = np.ones(32, np.float32)
    with pytest.raises(ValueError, match="encoderblock_0/LayerNorm_7/scale"):
        CLIPPO.from_big_vision(_save(tmp_path, params))


def test_misshaped_key_is_named(tmp_path, params):
    k = "img/MAPHead_0/MultiHeadDotProductAttention_0/value/kernel"
    params[k] = np.zeros((32, 4, 8), np.float32)  # 4 heads where the encoder has 2
    with pytest.raises(ValueError, match=r"MAPHead_0/.*/value/kernel.*\(32, 4, 8\)"):
        CLIPPO.from_big_vision(_save(tmp_path, params))


def test_integer_array_is_refused(tmp_path, params):
    params["img/head/bias"] = np.zeros(24, np.int32)
    with pytest.raises(ValueError, match="img/head/bias.*int32"):
        CLIPPO.from_big_vision(_save(tmp_path, params))


def test_pickled_object_array_is_refused_without_unpickling(tmp_path, params):
    marker = tmp_path / "unpickled"

    class Payload:  # unpickling this would create `marker`
        def __reduce__(self):
            return (os.makedirs, (str(marker),))

    obj = np.empty((1,), dtype=object)
    obj[0] = Payload()
    params["t"] = obj
    path = tmp_path / "evil.npz"
    with open(path, "wb") as f:
        np.savez(f, **{"params/" + k: v for k, v in params.items()})
    with pytest.raises(ValueError, match="params/t"):
        CLIPPO.from_big_vision(path)
    assert not marker.exists()
    # in optimizer state it is skipped, never read
    params["t"] = np.zeros(1, np.float32)
    CLIPPO.from_big_vision(_save(tmp_path, params, extra={"opt/evil": obj}))
    assert not marker.exists()


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="junk.npz"):
        CLIPPO.from_big_vision(tmp_path / "junk.npz")


def test_safetensors_round_trip(tmp_path, params):
    model = CLIPPO.from_big_vision(_save(tmp_path, params), render={"font_size": 16,
                                                                     "lower": False})
    model.save_pretrained(tmp_path / "sp")
    assert sorted(os.listdir(tmp_path / "sp")) == ["config.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "sp" / "config.json").read_text())
    assert cfg["width"] == 32 and cfg["render"]["lower"] is False
    loaded = CLIPPO.from_pretrained(tmp_path / "sp")
    assert loaded.config == model.config
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_safetensors_errors_name_the_tensor(tmp_path, params):
    from safetensors.torch import save_file
    model = CLIPPO.from_big_vision(_save(tmp_path, params))
    model.save_pretrained(tmp_path / "sp")
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    sd["img.head.bias"] = torch.zeros(5)
    save_file(sd, tmp_path / "sp" / "model.safetensors")
    with pytest.raises(ValueError, match="img.head.bias"):
        CLIPPO.from_pretrained(tmp_path / "sp")
    del sd["img.head.bias"]
    save_file(sd, tmp_path / "sp" / "model.safetensors")
    with pytest.raises(KeyError, match="img.head.bias"):
        CLIPPO.from_pretrained(tmp_path / "sp")


def test_load_is_lazy_and_zero_copy(tmp_path, monkeypatch):
    """No random init runs, and parameters share the arrays np.load read (no second copy)."""
    params = random_bv_params(np.random.default_rng(2), width=128, depth=3, num_heads=4,
                              mlp_dim=512, patch=16, num_pos=16, out_dim=64)
    path = _save(tmp_path, params)
    nbytes = sum(a.nbytes for a in params.values())

    def guard(init):  # init on the meta device costs nothing; anywhere else it is waste
        def wrapped(tensor, *a, **k):
            if tensor.device.type != "meta":
                raise AssertionError(f"{init.__name__} ran on {tensor.device} during loading")
            return init(tensor, *a, **k)
        return wrapped
    for name in ("xavier_uniform_", "normal_", "trunc_normal_", "uniform_", "kaiming_uniform_",
                 "zeros_", "ones_"):
        monkeypatch.setattr(torch.nn.init, name, guard(getattr(torch.nn.init, name)))
    tracemalloc.start()  # numpy reports its buffers to tracemalloc
    try:
        model = CLIPPO.from_big_vision(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.25 * nbytes + (1 << 20), (peak, nbytes)
    storages = {}
    for p in model.parameters():
        s = p.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
    assert sum(storages.values()) == nbytes  # every byte held once, no extra copies kept
    assert model.img.embedding.weight.is_contiguous()


def test_convert_cli_round_trip(tmp_path, params, capsys):
    src = _save(tmp_path, params)
    assert cli.convert_main([str(src), str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert f"parameters: {sum(a.size for a in params.values()):,}" in printed
    assert "width: 32" in printed and "depth: 2" in printed
    model = CLIPPO.from_pretrained(tmp_path / "out")
    model.to_big_vision(tmp_path / "back.npz")
    with np.load(tmp_path / "back.npz") as z:
        for k, v in params.items():
            np.testing.assert_array_equal(z["params/" + k], v, err_msg=k)


def test_convert_cli_reports_errors(tmp_path, params, capsys):
    del params["img/pos_embedding"]
    assert cli.convert_main([str(_save(tmp_path, params)), str(tmp_path / "out")]) == 1
    assert "img/pos_embedding" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_failed_write_leaves_the_old_file(tmp_path, params, monkeypatch):
    model = CLIPPO.from_big_vision(_save(tmp_path, params))
    target = tmp_path / "out.npz"
    target.write_bytes(b"previous")

    def broken_savez(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        model.to_big_vision(target)
    assert target.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["m.npz", "out.npz"]


def test_variant_name_in_config(tmp_path):
    with torch.device("meta"):
        assert CLIPPO("B/16").config["variant"] == "B/16"
        assert CLIPPO("B/16", depth=3).config["variant"] is None


def test_scanned_checkpoint_errors_name_the_stacked_key(tmp_path):
    import pathlib
    data = pathlib.Path(__file__).parent / "data" / "jax_small_scan.npz"
    with np.load(data) as z:
        arrays = {k: z[k] for k in z.files}
    k = "params/img/Transformer/encoderblock/MlpBlock_0/Dense_1/bias"
    arrays[k] = np.concatenate([arrays[k], arrays[k][:1]])  # 3 layers where the rest have 2
    with open(tmp_path / "s.npz", "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match=r"encoderblock/MlpBlock_0/Dense_1/bias\[2\]"):
        CLIPPO.from_big_vision(tmp_path / "s.npz")
    arrays[k] = arrays[k][:2, :5]
    with open(tmp_path / "s.npz", "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match=r"encoderblock/MlpBlock_0/Dense_1/bias\[0\].*\(5,\)"):
        CLIPPO.from_big_vision(tmp_path / "s.npz")


def test_bad_files(tmp_path, params):
    with pytest.raises(FileNotFoundError):
        CLIPPO.from_big_vision(tmp_path / "nowhere.npz")
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.npz"):
        CLIPPO.from_big_vision(tmp_path / "empty.npz")
    np.save(tmp_path / "one.npy", np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="single array"):
        CLIPPO.from_big_vision(tmp_path / "one.npy")
    model = CLIPPO.from_big_vision(_save(tmp_path, params))
    model.save_pretrained(tmp_path / "sp")
    cfg = json.loads((tmp_path / "sp" / "config.json").read_text())
    (tmp_path / "sp" / "config.json").write_text(json.dumps({**cfg, "colour": "red"}))
    with pytest.raises(ValueError, match="config.json.*colour"):
        CLIPPO.from_pretrained(tmp_path / "sp")
    with pytest.raises(FileNotFoundError, match="config.json"):
        CLIPPO.from_pretrained(tmp_path)


def test_damaged_npz_is_a_value_error(tmp_path, params):
    # a truncated file and a corrupted member both give the documented ValueError
    data = _save(tmp_path, params).read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    corrupt = tmp_path / "corrupt.npz"
    mid = len(data) // 2
    corrupt.write_bytes(data[:mid - 100] + bytes(200) + data[mid + 100:])
    for path in (truncated, corrupt):
        with pytest.raises(ValueError):
            CLIPPO.from_big_vision(path)
