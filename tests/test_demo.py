"""`clippo demo` end to end, shortened: trains through `clippo train`, evaluates on the held-out
split, writes the report and its figures; the model already beats chance on combinations it
never saw."""
import json
import math

import numpy as np
import pytest
from PIL import Image

from clippo import cli

pytestmark = pytest.mark.filterwarnings("ignore:'set_vital' is deprecated",
                                        "ignore:warm-up .* do not fit")

STEPS = 100


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert cli.main(["demo", "--out", str(out), "--steps", str(STEPS), "--workers", "0",
                     "--no-progress"]) == 0
    return out, json.loads((out / "report.json").read_text())


def test_report_has_the_numbers(demo):
    out, report = demo
    for key in ("zero_shot_top1", "zero_shot_chance", "retrieval_t2i_r1", "retrieval_i2t_r1",
                "train_seconds", "steps"):
        assert key in report, key
    assert report["steps"] == STEPS
    assert report["zero_shot_chance"] == pytest.approx(1 / 16)
    assert report["train_seconds"] > 0
    for key in ("zero_shot_top1", "retrieval_t2i_r1", "retrieval_i2t_r1"):
        assert 0.0 <= report[key] <= 1.0
    lines = (out / "train" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == STEPS


def test_model_learned_beyond_chance(demo):
    """Held-out colour x position pairs: even this short run beats chance twice over, and its
    loss has left log(batch), where a collapsed model sits."""
    out, report = demo
    assert report["zero_shot_top1"] >= 2 * report["zero_shot_chance"], report
    assert report["final_loss"] < math.log(report["recipe"]["batch_size"]) - 0.5, report


def test_figures_are_pictures(demo):
    out, report = demo
    names = {p.split("/")[-1] for p in report["figures"]}
    assert names == {"captions.png", "training_curve.png", "retrieval_examples.png"}
    for name in names:
        with Image.open(out / name) as img:
            arr = np.asarray(img.convert("RGB"))
        assert arr.shape[0] > 50 and arr.shape[1] > 50
        assert arr.std() > 10, name  # drawn on, not a blank canvas


def test_model_dir_loads(demo):
    from clippo.model.clippo import CLIPPO
    out, report = demo
    model = CLIPPO.from_pretrained(report["model_dir"])
    assert model.config["image_size"] == 80 and model.config["depth"] == 4
