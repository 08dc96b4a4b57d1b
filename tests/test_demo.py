"""`clippo demo` end to end, shortened (conftest.DEMO_STEPS): trains through `clippo train`,
evaluates on the held-out split, writes the report and its figures; the model already beats
chance on combinations it never saw."""
import json
import math

import numpy as np
import pytest
from PIL import Image

from conftest import DEMO_STEPS

pytestmark = pytest.mark.filterwarnings("ignore:'set_vital' is deprecated",
                                        "ignore:warm-up .* do not fit")


@pytest.fixture(scope="module")
def demo(demo_run):
    return demo_run


def test_report_has_the_numbers(demo):
    out, report = demo
    for key in ("zero_shot_top1", "zero_shot_chance", "retrieval_t2i_r1", "retrieval_i2t_r1",
                "train_seconds", "steps", "zero_shot_72way_top1", "zero_shot_val_top1",
                "retrieval_val_t2i_r1"):
        assert key in report, key
    # the bars beside each figure, exact (tests/test_eval_baselines.py counts them by hand)
    assert report["zero_shot_best_single_attribute"] == pytest.approx(9 / 16)
    assert report["zero_shot_single_attribute"]["colour"] == 0.5
    assert report["zero_shot_72way_best_single_attribute"] == pytest.approx(1 / 8)
    assert report["zero_shot_72way_chance"] == pytest.approx(1 / 72)
    assert report["retrieval_shapes_colour_position_reader_r1"] == pytest.approx(1 / 6)
    # what makes the figures repeat (same machine) or not (another CPU's vector width)
    import torch
    assert report["torch"] == torch.__version__ and report["threads"] >= 1
    assert report["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert report["steps"] == DEMO_STEPS
    assert report["zero_shot_chance"] == pytest.approx(1 / 16)
    assert report["train_seconds"] > 0
    for key in ("zero_shot_top1", "retrieval_t2i_r1", "retrieval_i2t_r1"):
        assert 0.0 <= report[key] <= 1.0
    # two `clippo train` runs: English, then every language from the English run's weights
    assert sum(report["stage_steps"].values()) == DEMO_STEPS
    first, last = (out / "train-english"), (out / "train")
    assert json.loads((first / "metrics.jsonl").read_text().splitlines()[-1])["step"] == \
        report["stage_steps"]["english"]
    assert json.loads((last / "metrics.jsonl").read_text().splitlines()[-1])["step"] == \
        report["stage_steps"]["all-languages"]
    args = json.loads((last / "args.json").read_text())
    assert args["pretrained"] == str(first / "model")
    assert json.loads((first / "args.json").read_text())["builtin_languages"] == {"en": 1.0}


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


def test_stage_steps_split_any_total():
    from clippo.demo import STAGES, stage_steps
    assert sum(stage_steps()) == 1500
    for total in (2, 3, 10, 301):
        steps = stage_steps(total)
        assert sum(steps) == total and min(steps) >= 1 and len(steps) == len(STAGES)
    with pytest.raises(ValueError, match="at least 2 steps"):
        stage_steps(1)


def test_model_dir_loads(demo):
    from clippo.model.clippo import CLIPPO
    out, report = demo
    model = CLIPPO.from_pretrained(report["model_dir"])
    assert model.config["image_size"] == 80 and model.config["depth"] == 4


def test_figure_ticks_are_round():
    from clippo.figures import nice_ticks
    assert nice_ticks(0, 1500) == [0, 500, 1000, 1500]
    assert nice_ticks(0.57, 4.4) == [1, 2, 3, 4]
    assert nice_ticks(1, 300) == [100, 200, 300]
    assert nice_ticks(0.1, 0.13) == pytest.approx([0.1, 0.11, 0.12, 0.13])
    assert nice_ticks(2.0, 2.0) == [2.0]
