"""Readers of clippo.eval.data: each format read back, and malformed files named by file and
line; undecodable images are skipped and counted, never fatal."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from clippo.eval import data as D


def _png(path, color=(200, 30, 30), size=20):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)
    return path


def test_load_image_resizes_and_skips_broken(tmp_path):
    img = D.load_image(_png(tmp_path / "a.png", size=40), 32)
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 32)
    assert img[:, 0, 0].tolist() == [200, 30, 30]
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    assert D.load_image(tmp_path / "broken.jpg", 32) is None
    assert D.load_image(tmp_path / "missing.png", 32) is None


def test_collate_drops_and_counts_undecodable(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"garbage")
    ds = D.ImageDataset([_png(tmp_path / "ok.png"), tmp_path / "bad.png",
                         torch.zeros(3, 16, 16, dtype=torch.uint8)], [0, 1, 2], 16)
    batch = next(iter(D.loader(ds, batch_size=8)))
    assert batch["images"].shape == (2, 3, 16, 16)
    assert batch["targets"] == [0, 2] and batch["indices"] == [0, 2]
    assert batch["skipped"] == [1]


def test_image_folder(tmp_path):
    _png(tmp_path / "great_white_shark" / "x.png")
    _png(tmp_path / "ant" / "sub" / "y.JPG")
    (tmp_path / "empty").mkdir()
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    classes, samples = D.read_image_folder(tmp_path)
    assert classes == ["ant", "great white shark"]
    assert [s[1] for s in samples] == [0, 1]
    with pytest.raises(D.DataFormatError, match="no class folders"):
        D.read_image_folder(tmp_path / "empty")


def test_classification_csv(tmp_path):
    f = tmp_path / "data.csv"
    f.write_text("filepath,label\nimg/a.png,cat\nimg/b.png,dog\n/abs/c.png,cat\n")
    classes, samples = D.read_classification_csv(f)
    assert classes == ["cat", "dog"]
    assert samples == [(str(tmp_path / "img/a.png"), 0), (str(tmp_path / "img/b.png"), 1),
                       ("/abs/c.png", 0)]
    # integer labels index --classnames; a name also works
    f.write_text("filepath,label\na.png,1\nb.png,zebra\n")
    classes, samples = D.read_classification_csv(f, classnames=["zebra", "yak"])
    assert [s[1] for s in samples] == [1, 0]
    f.write_text("filepath,label\na.png,1\n")
    with pytest.raises(D.DataFormatError, match=r"data\.csv:2: integer labels need"):
        D.read_classification_csv(f)


@pytest.mark.parametrize("body, line, message", [
    ("filepath,label\na.png,cat\nb.png\n", 3, "1 fields, the header has 2"),
    ("filepath,label\na.png,cat\n,dog\n", 3, "empty image path"),
    ("path,label\na.png,cat\n", 1, "no column 'filepath'"),
    ('filepath,label\na.png,"cat\n', 2, "bad CSV"),
    ("filepath,label\na.png,cat\nb.png,\n", 3, "empty label"),
])
def test_classification_csv_errors_name_file_and_line(tmp_path, body, line, message):
    f = tmp_path / "bad.csv"
    f.write_text(body)
    with pytest.raises(D.DataFormatError, match=message) as e:
        D.read_classification_csv(f)
    assert str(e.value).startswith(f"{f}:{line}:")
    assert e.value.line == line


def test_not_utf8_names_the_line(tmp_path):
    f = tmp_path / "bad.csv"
    f.write_bytes(b"filepath,label\na.png,cat\nb.png,\xff\xfe\n")
    with pytest.raises(D.DataFormatError, match=r"bad\.csv:3: not UTF-8"):
        D.read_classification_csv(f)


def test_retrieval_csv_groups_captions(tmp_path):
    f = tmp_path / "caps.tsv"
    f.write_text("filepath\ttitle\na.png\ta dog\nb.png\ta cat\na.png\ta brown dog\n")
    assert D.read_retrieval_csv(f) == [(str(tmp_path / "a.png"), ["a dog", "a brown dog"]),
                                       (str(tmp_path / "b.png"), ["a cat"])]


KARPATHY = {"images": [
    {"filepath": "val2014", "filename": "a.jpg", "split": "test",
     "sentences": [{"raw": "A dog."}, {"raw": "A brown dog."}]},
    {"filepath": "val2014", "filename": "b.jpg", "split": "train",
     "sentences": [{"raw": "A cat."}]},
    {"filename": "c.jpg", "split": "test", "sentences": [{"raw": "A bird."}]},
], "dataset": "coco"}


def test_karpathy_json(tmp_path):
    f = tmp_path / "dataset_coco.json"
    f.write_text(json.dumps(KARPATHY, indent=1))
    got = D.read_karpathy_json(f, "test", image_root=tmp_path / "coco")
    assert got == [(str(tmp_path / "coco/val2014/a.jpg"), ["A dog.", "A brown dog."]),
                   (str(tmp_path / "coco/c.jpg"), ["A bird."])]
    assert len(D.read_karpathy_json(f, "all")) == 3
    with pytest.raises(D.DataFormatError, match=r"no images in split 'val'"):
        D.read_karpathy_json(f, "val")


def test_karpathy_json_errors_name_line(tmp_path):
    bad = json.loads(json.dumps(KARPATHY))
    del bad["images"][2]["sentences"]
    f = tmp_path / "k.json"
    text = json.dumps(bad, indent=1)
    f.write_text(text)
    # the entry's line: where its "{" starts in the file
    lines = text.splitlines()
    want = [i for i, s in enumerate(lines, 1) if s == "  {"][2]  # entries: indent 2
    with pytest.raises(D.DataFormatError, match=r"images\[2\] has no 'sentences'") as e:
        D.read_karpathy_json(f)
    assert e.value.line == want and str(e.value).startswith(f"{f}:{want}:")
    f.write_text('{"images": [\n {"filename": "a.jpg",\n  "split": "test" "x": 1}]}')
    with pytest.raises(D.DataFormatError, match=r"k\.json:3: invalid JSON"):
        D.read_karpathy_json(f)


def test_xm3600_jsonl(tmp_path):
    f = tmp_path / "captions.jsonl"
    rows = [{"image/key": "k1", "en": {"caption": ["a dog"]}, "de": {"caption": ["ein Hund"]}},
            {"image": "x/2.png", "en": ["a cat", "cat"], "de": "eine Katze"}]
    f.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    pairs, langs = D.read_xm3600(f, image_root=tmp_path / "images")
    assert langs == ["de", "en"]
    assert pairs == [(str(tmp_path / "images/k1.jpg"), {"de": ["ein Hund"], "en": ["a dog"]}),
                     (str(tmp_path / "images/x/2.png"),
                      {"de": ["eine Katze"], "en": ["a cat", "cat"]})]
    f.write_text(json.dumps(rows[0]) + "\n" + '{"image/key": "k2", "en": ["a"]}\n')
    with pytest.raises(D.DataFormatError, match=r"captions\.jsonl:2: no captions in \['de'\]"):
        D.read_xm3600(f)
    f.write_text(json.dumps(rows[0]) + "\n\n{broken\n")
    with pytest.raises(D.DataFormatError, match=r"captions\.jsonl:3: invalid JSON"):
        D.read_xm3600(f)


def test_glue_tsv(tmp_path):
    f = tmp_path / "dev.tsv"
    f.write_text('sentence\tlabel\nit\'s "great"\t1\nawful\t0\n')
    a, b, y = D.read_glue_tsv(f, "sst2")
    assert a == ['it\'s "great"', "awful"] and b is None and y == [1, 0]
    cola = tmp_path / "cola.tsv"
    cola.write_text("gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n"
                    "gj04\t0\t*\tThe more we study verbs, the crazier they get get.\n")
    a, b, y = D.read_glue_tsv(cola, "cola")
    assert y == [1, 0] and a[0].startswith("The sailors")
    sts = tmp_path / "sts.tsv"
    sts.write_text("index\tgenre\tsentence1\tsentence2\tscore\n0\tx\tA man.\tA person.\t3.8\n")
    a, b, y = D.read_glue_tsv(sts, "stsb")
    assert b == ["A person."] and y == [3.8]


@pytest.mark.parametrize("task, body, line, message", [
    ("sst2", "sentence\tlabel\ngood\t1\nbad\t2\n", 3, "label '2' is not one of"),
    ("sst2", "sentence\tlabel\ngood\t1\nbad\n", 3, "1 fields, the header has 2"),
    ("stsb", "sentence1\tsentence2\tscore\na\tb\t4.0\na\tb\thigh\n", 3, "not a number"),
    ("rte", "sentence1\tlabel\na\tentailment\n", 1, "no column 'sentence2'"),
    ("cola", "gj04\t1\t\tok\ngj04\t1\n", 2, "expected at least 4"),
])
def test_glue_errors_name_file_and_line(tmp_path, task, body, line, message):
    f = tmp_path / "train.tsv"
    f.write_text(body)
    with pytest.raises(D.DataFormatError, match=message) as e:
        D.read_glue_tsv(f, task)
    assert str(e.value).startswith(f"{f}:{line}:")


def _vqa_files(tmp_path, questions=None, annotations=None):
    q = tmp_path / "q.json"
    a = tmp_path / "a.json"
    q.write_text(json.dumps({"data_subtype": "val2014", "questions": questions or [
        {"image_id": 42, "question": "What color?", "question_id": 420},
        {"image_id": 7, "question": "How many?", "question_id": 70}]}, indent=1))
    a.write_text(json.dumps({"annotations": annotations or [
        {"question_id": 420, "answer_type": "other",
         "answers": [{"answer": "red", "answer_id": i} for i in range(10)]},
        {"question_id": 70, "answer_type": "number",
         "answers": [{"answer": "2"}] * 10}]}, indent=1))
    return q, a


def test_vqa_json(tmp_path):
    q, a = _vqa_files(tmp_path)
    recs = D.read_vqa(q, a, image_root=tmp_path / "img")
    assert recs[0] == {"question_id": 420, "question": "What color?", "answers": ["red"] * 10,
                       "image": str(tmp_path / "img/COCO_val2014_000000000042.jpg"),
                       "answer_type": "other"}
    assert recs[1]["answer_type"] == "number"


def test_vqa_errors_name_file_and_line(tmp_path):
    q, a = _vqa_files(tmp_path, annotations=[
        {"question_id": 420, "answers": [{"answer": "red"}]},
        {"question_id": 70, "answers": [{"no_answer": 1}]}])
    with pytest.raises(D.DataFormatError, match=r"annotations\[1\]\.answers\[0\]") as e:
        D.read_vqa(q, a)
    assert str(e.value).startswith(f"{a}:")
    text = a.read_text().splitlines()
    assert e.value.line == [i for i, s in enumerate(text, 1) if s == "  {"][1]
    q, a = _vqa_files(tmp_path, questions=[{"image_id": 1, "question_id": 3}])
    with pytest.raises(D.DataFormatError, match=r"q\.json:\d+: questions\[0\] has no "
                                               r"'question'"):
        D.read_vqa(q, a)


def test_classnames_and_missing_files(tmp_path):
    f = tmp_path / "names.txt"
    f.write_text("cat\n\ndog\n")
    assert D.read_classnames(f) == ["cat", "dog"]
    # names may repeat (CLIP_benchmark's ImageNet list has "missile" twice): a class is its
    # index, and only a CSV label naming a repeated class is ambiguous
    f.write_text("cat\ncat\ndog\n")
    assert D.read_classnames(f) == ["cat", "cat", "dog"]
    csv_file = tmp_path / "data.csv"
    csv_file.write_text("filepath,label\na.png,1\nb.png,dog\n")
    _, samples = D.read_classification_csv(csv_file, classnames=D.read_classnames(f))
    assert [s[1] for s in samples] == [1, 2]
    csv_file.write_text("filepath,label\na.png,1\nb.png,cat\n")
    with pytest.raises(D.DataFormatError, match=r"data\.csv:3: label 'cat' names more than one"):
        D.read_classification_csv(csv_file, classnames=D.read_classnames(f))
    with pytest.raises(FileNotFoundError, match="no such file"):
        D.read_classnames(tmp_path / "nope.txt")


def test_resize_uint8_matches_float_interpolation():
    x = torch.randint(0, 256, (2, 3, 40, 30), dtype=torch.uint8)
    y = D.resize_uint8(x, (20, 15))
    ref = torch.nn.functional.interpolate(x.double(), size=(20, 15), mode="bilinear",
                                          align_corners=False, antialias=True)
    assert y.dtype == torch.uint8
    assert (y.double() - ref.round().clamp(0, 255)).abs().max() <= 1
    assert np.array_equal(D.as_image(x[0].permute(1, 2, 0).numpy(), (40, 30)), x[0])
