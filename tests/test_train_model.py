"""Where the trained model comes from: a model-config JSON with flag overrides, and
--pretrained weights (a save_pretrained directory) that training starts from."""
import json

import pytest
import torch

import clippo
from clippo.train import parse_args, run

pytestmark = pytest.mark.filterwarnings("ignore:'set_vital' is deprecated")

FLAGS = ["--train-data", "builtin", "--train-num-samples", "32", "--batch-size", "4",
         "--steps", "2", "--workers", "0", "--no-progress", "--save-every", "0"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def test_model_config_json_with_overrides(tmp_path):
    cfg = tmp_path / "tiny-clippo.json"
    cfg.write_text(json.dumps({"variant": "mu/8", "image_size": 32, "out_dim": 24,
                               "temperature_init": 5.0}))
    summary = run(parse_args(FLAGS + ["--model", str(cfg), "--depth", "2", "--mlp-dim", "64",
                                      "--output", str(tmp_path / "run")]))
    model = clippo.CLIPPO.from_pretrained(summary["model_dir"])
    c = model.config
    assert (c["width"], c["depth"], c["mlp_dim"], c["patch_size"]) == (32, 2, 64, 8)
    assert (c["image_size"], c["out_dim"], c["temperature_init"]) == (32, 24, 5.0)


def test_training_starts_from_pretrained_weights(tmp_path):
    torch.manual_seed(7)
    start = clippo.create_model("mu/8", image_size=32, out_dim=16)
    start.save_pretrained(tmp_path / "start")
    common = FLAGS + ["--model", "mu/8", "--image-size", "32", "--out-dim", "16",
                      "--pretrained", str(tmp_path / "start")]
    # learning rate 0: AdamW changes nothing (its weight decay is scaled by the rate too)
    frozen = run(parse_args(common + ["--lr", "0", "--output", str(tmp_path / "a")]))
    got = clippo.CLIPPO.from_pretrained(frozen["model_dir"]).state_dict()
    assert all(torch.equal(v, got[k]) for k, v in start.state_dict().items())
    trained = run(parse_args(common + ["--output", str(tmp_path / "b")]))
    moved = clippo.CLIPPO.from_pretrained(trained["model_dir"]).state_dict()
    assert not torch.equal(moved["img.head.weight"], start.state_dict()["img.head.weight"])
