"""A task that scores no sample at all (every image missing or undecodable) is an error: exit
code 1 and one line naming the data and the image root tried, never a traceback or a metric
over zero samples written with exit code 0."""
import json

import pytest
import torch

from clippo.eval.main import main as eval_main
from clippo.model.clippo import CLIPPO


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = CLIPPO(None, image_size=32, patch_size=16, width=32, depth=1, num_heads=2,
                   mlp_dim=64, out_dim=16).eval()
    d = tmp_path_factory.mktemp("model")
    model.save_pretrained(str(d))
    return d


def _run(argv, capsys):
    rc = eval_main(argv + ["--quiet", "--device", "cpu"])
    err = capsys.readouterr().err
    return rc, err


def _one_line_error(rc, err, data, root):
    assert rc == 1, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert str(data) in err and f"image root tried: {root}" in err, err


def test_zeroshot_without_one_decodable_image(model_dir, tmp_path, capsys):
    """Today: `mat1 and mat2 shapes cannot be multiplied` from an empty feature matrix."""
    csv = tmp_path / "val.csv"
    csv.write_text("filepath,label\nimg/a.jpg,cat\nimg/b.jpg,dog\n")
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    out = tmp_path / "r.json"
    rc, err = _run(["zeroshot", "--model", str(model_dir), "--data", str(csv), "--templates",
                    "name", "--out", str(out)], capsys)
    _one_line_error(rc, err, csv, tmp_path)
    assert "2 skipped" in err and not out.exists()


def test_zeroshot_image_root_named(model_dir, tmp_path, capsys):
    csv = tmp_path / "val.csv"
    csv.write_text("filepath,label\na.jpg,cat\nb.jpg,dog\n")
    rc, err = _run(["zeroshot", "--model", str(model_dir), "--data", str(csv), "--templates",
                    "name", "--image-root", str(tmp_path / "elsewhere"), "--out",
                    str(tmp_path / "r.json")], capsys)
    _one_line_error(rc, err, csv, tmp_path / "elsewhere")


def test_retrieval_karpathy_images_missing(model_dir, tmp_path, capsys):
    doc = {"images": [{"filepath": "val2014", "filename": f"COCO_val2014_{i:012d}.jpg",
                       "split": "test", "sentences": [{"raw": f"caption {i}"}]}
                      for i in range(3)], "dataset": "coco"}
    data = tmp_path / "dataset_coco.json"
    data.write_text(json.dumps(doc))
    rc, err = _run(["retrieval", "--model", str(model_dir), "--data", str(data), "--out",
                    str(tmp_path / "r.json")], capsys)
    _one_line_error(rc, err, data, tmp_path)


def test_vqa_every_image_skipped(model_dir, tmp_path, capsys):
    """Today: exit 0 with "vqa_accuracy": null."""
    def write(name, subtype, n):
        q = {"data_subtype": subtype, "questions": [
            {"question_id": i, "image_id": i, "question": "what colour?"} for i in range(n)]}
        a = {"annotations": [{"question_id": i, "answer_type": "other",
                              "answers": [{"answer": "red", "answer_id": j + 1}
                                          for j in range(10)]} for i in range(n)]}
        (tmp_path / f"q_{name}.json").write_text(json.dumps(q))
        (tmp_path / f"a_{name}.json").write_text(json.dumps(a))
    write("train", "train2014", 4)
    write("val", "val2014", 3)
    from PIL import Image
    train_root = tmp_path / "train2014"
    train_root.mkdir()
    for i in range(4):  # the training images exist, the evaluation images do not
        Image.new("RGB", (40, 40), (200, 30, 30)).save(
            train_root / f"COCO_train2014_{i:012d}.jpg")
    out = tmp_path / "r.json"
    rc, err = _run(["vqa", "--model", str(model_dir), "--data", str(tmp_path / "q_val.json"),
                    "--annotations", str(tmp_path / "a_val.json"), "--train-data",
                    str(tmp_path / "q_train.json"), "--train-annotations",
                    str(tmp_path / "a_train.json"), "--train-image-root", str(train_root),
                    "--image-root", str(tmp_path / "val2014"), "--epochs", "2",
                    "--out", str(out)], capsys)
    _one_line_error(rc, err, tmp_path / "q_val.json", tmp_path / "val2014")
    assert "no test image could be decoded (3 skipped)" in err and not out.exists()


def test_fewshot_no_training_image(model_dir, tmp_path, capsys):
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        (tmp_path / split / "x.csv").write_text("filepath,label\nmissing.png,cat\n")
    rc, err = _run(["fewshot", "--model", str(model_dir), "--train",
                    str(tmp_path / "train" / "x.csv"), "--data",
                    str(tmp_path / "test" / "x.csv"), "--shots", "1", "--out",
                    str(tmp_path / "r.json")], capsys)
    _one_line_error(rc, err, tmp_path / "test" / "x.csv", tmp_path / "train")
    assert "no training image could be decoded" in err


@pytest.mark.parametrize("flag", ["--out", "--markdown"])
def test_output_that_is_a_directory_is_refused_before_evaluating(model_dir, tmp_path, capsys,
                                                                 monkeypatch, flag):
    """Today: every task evaluated, then `Is a directory` when the JSON is written."""
    import clippo.eval.main as M
    monkeypatch.setattr(M, "run_all", lambda args: pytest.fail("evaluated before the check"))
    argv = ["all", "--model", str(model_dir), "--data", "builtin"]
    if flag == "--markdown":
        argv += ["--out", str(tmp_path / "all.json")]
    rc, err = _run(argv + [flag, str(tmp_path)], capsys)
    assert rc == 1 and "is a directory; give a file path" in err, err
    assert len(err.strip().splitlines()) == 1
