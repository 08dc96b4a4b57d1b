"""The one-line Karpathy / VQA JSON files are parsed once (the elements of the listed arrays are
the document's own, not a second parse), with the elements' lines and every syntax fault named
by line and column."""
import json

import pytest

from clippo.eval.data import DataFormatError, json_array_items, json_arrays, read_vqa


def test_elements_are_the_documents_own(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('{"dataset": "coco",\n "images": [\n  {"a": 1},\n  {"a": [2, 3]}\n ],\n'
                 ' "n": {"x": null}}')
    doc, items = json_array_items(p, "images")
    assert doc == json.loads(p.read_text())
    assert [line for line, _ in items] == [3, 4]
    assert all(v is d for (_, v), d in zip(items, doc["images"]))  # one object, not two
    assert json_array_items(p, "images")[1] == [(3, {"a": 1}), (4, {"a": [2, 3]})]
    top = tmp_path / "list.json"
    top.write_text('[1,\n2, "three"]')
    assert json_array_items(top) == ([1, 2, "three"], [(1, 1), (2, 2), (2, "three")])


@pytest.mark.parametrize("text, line, what", [
    ('{"images": [{"a": 1} {"a": 2}]}', 1, "expected ',' or ']'"),
    ('{"images": [1, 2]\n "x": 1}', 2, "expected ',' or '}'"),
    ('{"images": [1, 2]} trailing', 1, "the end of the file"),
    ('{"images": [1,\n 2,]}', 2, "invalid JSON"),
    ('{"images" [1]}', 1, "expected ':'"),
    ('{"images": {"a": 1}}', 1, "'images' must be a list"),
    ('[1, 2]', 1, "expected a JSON object with a 'images' list"),
    ('{"other": []}', 1, "expected a JSON object with a 'images' list"),
])
def test_syntax_errors_name_line(tmp_path, text, line, what):
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(DataFormatError, match=what) as e:
        json_array_items(p, "images")
    assert e.value.line == line


def test_vqa_file_holding_questions_and_annotations(tmp_path):
    p = tmp_path / "vqa.json"
    p.write_text(json.dumps({
        "data_subtype": "val2014",
        "questions": [{"question_id": 7, "image_id": 3, "question": "what colour?"}],
        "annotations": [{"question_id": 7, "answer_type": "other",
                         "answers": [{"answer": "red"}] * 10}]}))
    (rec,) = read_vqa(p)
    assert rec["answers"] == ["red"] * 10 and rec["answer_type"] == "other"
    assert rec["image"].endswith("COCO_val2014_000000000003.jpg")
    _, arrays = json_arrays(p, ("questions", "annotations"))
    assert set(arrays) == {"questions", "annotations"}
