"""Evaluation inside `clippo train` (--val-data, --zeroshot-data, --eval-every): the numbers in
metrics.jsonl are `clippo eval`'s on the same weights, the validation loss is the training
loss over the held-out pairs, and evaluating does not change what training does."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _eval_data import clippo_eval, write_eval_data

from clippo.train.main import main as train_main

TINY = ["--model", "Ti/16", "--width", "32", "--depth", "1", "--heads", "2", "--mlp-dim", "64",
        "--image-size", "32", "--patch-size", "16"]


def eval_lines(metrics_path):
    rows = [json.loads(x) for x in Path(metrics_path).read_text().splitlines()]
    return {r["step"]: r for r in rows if "val/loss" in r or "zeroshot/acc1" in r}


def model_at(checkpoint, run_dir, target):
    """save_pretrained folder of a training checkpoint's weights."""
    from clippo.model.clippo import CLIPPO
    from clippo.train.checkpoint import load_checkpoint
    model = CLIPPO.from_pretrained(str(Path(run_dir) / "model"))
    ckpt = load_checkpoint(checkpoint)
    model.load_state_dict({k[len("model."):]: v for k, v in ckpt["task"].items()
                           if k.startswith("model.")})
    model.save_pretrained(target)
    return target


def hand_val_loss(model_dir, val_csv, batch_size):
    """The softmax contrastive loss over the decodable pairs in chunks of batch_size, in
    float64 from the model's own encoders (the chunks' mean, weighted by size)."""
    from clippo.eval.common import load_model
    from clippo.eval.data import load_image
    model = load_model(model_dir, "cpu")
    rows = [line.split("\t") for line in Path(val_csv).read_text().splitlines()[1:]]
    groups = {}
    for path, caption in rows:
        groups.setdefault(path, []).append(caption)
    pairs = [(img, c) for path, caps in groups.items()
             if (img := load_image(Path(val_csv).parent / path, 32)) is not None for c in caps]
    with torch.no_grad():
        zi = model.encode_image(torch.stack([p[0] for p in pairs])).double()
        zt = model.encode_text([p[1] for p in pairs]).double()
        scale = model.temperature.double()
    total = 0.0
    for s in range(0, len(pairs), batch_size):
        logits = scale * zi[s:s + batch_size] @ zt[s:s + batch_size].T
        n = logits.shape[0]
        ce_i = -torch.diagonal(logits.log_softmax(1)).mean()
        ce_t = -torch.diagonal(logits.log_softmax(0)).mean()
        total += float(ce_i + ce_t) / 2 * n
    return total / len(pairs), len(pairs)


def test_in_training_numbers_equal_clippo_eval(tmp_path):
    val_csv, zeroshot_dir = write_eval_data(tmp_path / "data")
    out = tmp_path / "run"
    argv = ["--train-data", "builtin", "--train-num-samples", "64", *TINY, "--batch-size", "8",
            "--steps", "3", "--eval-every", "2", "--save-every", "2", "--log-every", "1",
            "--workers", "0", "--no-progress", "--output", str(out), "--val-data", str(val_csv),
            "--zeroshot-data", str(zeroshot_dir), "--zeroshot-templates", "short"]
    assert train_main(argv) == 0
    lines = eval_lines(out / "metrics.jsonl")
    assert sorted(lines) == [2, 3]  # every --eval-every steps and after the last one
    keys = {"val/loss", "zeroshot/acc1", "zeroshot/acc5", "zeroshot/mean_per_class_recall"} | {
        f"val/{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)}
    assert set(lines[3]) == keys | {"step"}
    assert lines[3]["zeroshot/acc5"] is None  # 4 classes: no top-5 (NaN in clippo eval)

    step2 = model_at(out / "checkpoints" / "step_00000002.pt", out, tmp_path / "m2")
    for step, model_dir in ((3, out / "model"), (2, step2)):
        want = clippo_eval(model_dir, val_csv, zeroshot_dir, tmp_path / f"eval{step}")
        got = {k: lines[step][k] for k in want}
        assert got == want  # exactly: the same embeddings, the same metric functions
        loss, pairs = hand_val_loss(model_dir, val_csv, batch_size=8)
        assert pairs == 105  # 70 images, every other one with two captions; the broken left out
        assert lines[step]["val/loss"] == pytest.approx(loss, rel=1e-5)
    assert lines[2] != lines[3]
    assert (out / "eval.png").is_file()


def test_evaluating_does_not_change_training(tmp_path):
    """The same run with and without evaluation: the same losses and final weights (the
    evaluation's loaders must not draw from the training's random stream)."""
    val_csv, _ = write_eval_data(tmp_path / "data", num_val=12)
    from safetensors.torch import load_file
    base = ["--train-data", "builtin", "--train-num-samples", "64", *TINY, "--batch-size",
            "8", "--steps", "3", "--log-every", "1", "--workers", "0", "--no-progress",
            "--random-resized-crop"]
    assert train_main(base + ["--output", str(tmp_path / "a")]) == 0
    assert train_main(base + ["--output", str(tmp_path / "b"), "--val-data", str(val_csv),
                              "--eval-every", "1"]) == 0
    losses = [[r["loss"] for r in map(json.loads, (tmp_path / d / "metrics.jsonl")
                                      .read_text().splitlines()) if "loss" in r]
              for d in "ab"]
    assert losses[0] == losses[1] and len(losses[0]) == 3
    wa = load_file(tmp_path / "a" / "model" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "model" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("flags, message", [
    (["--val-data", "{tmp}/missing.csv"], "--val-data"),
    (["--zeroshot-data", "{tmp}/nowhere"], "--zeroshot-data"),
    (["--zeroshot-data", "{tmp}/empty"], "no class folders"),
    (["--val-data", "{tmp}/nocaption.csv"], "--csv-caption-key"),
    (["--zeroshot-data", "builtin", "--zeroshot-templates", "{tmp}/missing.txt"], "missing.txt"),
])
def test_bad_evaluation_data_fails_before_training(tmp_path, capsys, flags, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "nocaption.csv").write_text("filepath\tother\na.png\tx\n")
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    argv = ["--train-data", "builtin", "--train-num-samples", "64", *TINY, "--steps", "2",
            "--workers", "0", "--no-progress", "--output", str(tmp_path / "run"), *flags]
    assert train_main(argv) == 1
    err = capsys.readouterr().err
    assert "error" in err and message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_builtin_zeroshot_and_plot(tmp_path):
    out = tmp_path / "run"
    argv = ["--train-data", "builtin", "--train-num-samples", "64", *TINY, "--batch-size", "8",
            "--steps", "2", "--workers", "0", "--no-progress", "--output", str(out),
            "--zeroshot-data", "builtin"]
    assert train_main(argv) == 0
    from clippo.eval.main import main as eval_main
    assert eval_main(["zeroshot", "--model", str(out), "--data", "builtin", "--quiet",
                      "--out", str(tmp_path / "z.json")]) == 0
    want = json.loads((tmp_path / "z.json").read_text())["metrics"]
    got = eval_lines(out / "metrics.jsonl")[2]
    assert [got[f"zeroshot/{k}"] for k in ("acc1", "acc5")] == [want["acc1"], want["acc5"]]
    from PIL import Image
    image = np.asarray(Image.open(out / "eval.png"))
    assert image.ndim == 3 and image.shape[0] >= 400 and (image < 250).any()


def test_evaluation_leaves_the_random_stream_alone(tmp_path):
    from clippo.loss import create_loss
    from clippo.train.distributed import DistEnv
    from clippo.train.evaluate import Evaluator
    from clippo.train.main import build_model
    from clippo.train.params import parse_args
    val_csv, _ = write_eval_data(tmp_path, num_val=4, num_zeroshot=0)
    args = parse_args(["--train-data", "builtin", *TINY, "--val-data", str(val_csv)])
    model = build_model(args)
    state = torch.get_rng_state()
    assert Evaluator(args, 32, DistEnv()).run(model, create_loss("softmax"), "fp32")
    assert torch.equal(torch.get_rng_state(), state)
    assert model.training  # the training mode is given back
