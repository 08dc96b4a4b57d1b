"""Every task end to end on its built-in tiny version, through `clippo eval all`: a model
trained on the built-in data beats chance clearly, a randomly initialised one of the same
architecture does not.

"Clearly" is measured in standard deviations of a chance-level score on the test set
(binomial: sqrt(p (1 - p) / n)), so the bounds hold whatever the sizes."""
import json
import math

import pytest
import torch

from clippo.eval import builtin as BI
from clippo.eval.common import load_model
from clippo.eval.main import main as eval_main
from clippo.eval.nlu import evaluate_nlu


@pytest.fixture(scope="module")
def model_dir(demo_model_dir):
    return demo_model_dir


@pytest.fixture(scope="module")
def results(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "all.json"
    md = out.with_suffix(".md")
    assert eval_main(["all", "--model", str(model_dir), "--data", "builtin", "--baseline",
                      "--out", str(out), "--markdown", str(md), "--quiet",
                      "--device", "cpu"]) == 0
    res = json.loads(out.read_text())
    res["markdown"] = md.read_text()
    return res


def _get(res, task, key, who="model"):
    value = res["tasks"][task][who]["metrics"]
    for part in key.split("/"):
        value = value[part]
    return value


def _chance(res, task, key):
    value = res["tasks"][task]["model"]["chance"]
    for part in key.split("/"):
        value = value[part]
    return value


def _sd(p, n):
    return math.sqrt(p * (1 - p) / n)


def _check(res, task, key, n, trained_sds=6, random_sds=3, min_ratio=None):
    """The trained model at least `trained_sds` chance deviations above chance (and
    min_ratio x chance); the random one at most `random_sds` above."""
    p = _chance(res, task, key)
    sd = _sd(p, n)
    trained, random = _get(res, task, key), _get(res, task, key, "random init")
    assert trained >= p + trained_sds * sd, (task, key, trained, p)
    if min_ratio:
        assert trained >= min_ratio * p, (task, key, trained, p)
    assert random <= p + random_sds * sd, (task, key, random, p)


def test_zeroshot_builtin(results):
    assert results["tasks"]["zeroshot"]["model"]["metrics"]["num_samples"] == 256
    _check(results, "zeroshot", "acc1", 256, min_ratio=3)
    _check(results, "zeroshot", "mean_per_class_recall", 256, min_ratio=3)


def test_retrieval_builtin(results):
    m = results["tasks"]["retrieval"]["model"]["metrics"]
    assert (m["num_images"], m["num_texts"]) == (96, 192)
    _check(results, "retrieval", "image_retrieval_recall@5", 192, min_ratio=3)  # text queries
    _check(results, "retrieval", "text_retrieval_recall@5", 96, min_ratio=3)  # image queries


def test_multilingual_builtin(results):
    m = results["tasks"]["multilingual"]["model"]["metrics"]
    assert m["languages"] == ["en", "de", "ru", "zh"] and set(m["per_language"]) == set(
        m["languages"])
    # 4 languages x 96 queries each way
    _check(results, "multilingual", "image_retrieval_recall@5", 384, min_ratio=3)
    _check(results, "multilingual", "text_retrieval_recall@5", 384, min_ratio=3)
    for lang, per in m["per_language"].items():  # every script is read, none is skipped
        assert per["image_retrieval_recall@5"] > 2 * 5 / 96, lang


def test_nlu_builtin(results):
    _check(results, "nlu", "colour/accuracy", 256, min_ratio=3)
    _check(results, "nlu", "same/accuracy", 256)
    # a correlation's chance-level spread is about 1 / sqrt(n - 1)
    sd = 1 / math.sqrt(255)
    assert _get(results, "nlu", "similarity/spearmanr") >= 4 * sd
    assert abs(_get(results, "nlu", "similarity/spearmanr", "random init")) <= 3 * sd


def test_vqa_builtin(results):
    m = results["tasks"]["vqa"]["model"]["metrics"]
    assert m["num_test"] == 256 and set(m["per_answer_type"]) == {"colour", "shape"}
    # a random encoder's features carry the object's colour and area as pixel statistics,
    # which the answer head partly reads even from 64 questions: 4 deviations allowed
    _check(results, "vqa", "vqa_accuracy", 256, trained_sds=5, random_sds=4)


def test_fewshot_builtin(results):
    # with several shots per class a ridge probe reads colour from a random encoder's pixel
    # statistics too, so the random model is held to chance at 1 and 5 shots
    p = _chance(results, "fewshot", "acc1_1shot")
    assert p == pytest.approx(1 / 8)
    for shots in (1, 5, 10, 25):
        assert _get(results, "fewshot", f"acc1_{shots}shot") >= 3 * p
    for shots in (1, 5):
        assert _get(results, "fewshot", f"acc1_{shots}shot", "random init") <= 2 * p


def test_results_table(results):
    md = results["markdown"].splitlines()
    assert md[0] == "| task | metric | model | random init | chance | best single attribute |"
    assert len(md) == 2 + len(results["table"])
    row = next(r for r in results["table"] if r["task"] == "zeroshot" and r["metric"] == "acc1")
    assert row["model"] == _get(results, "zeroshot", "acc1")
    assert row["chance"] == pytest.approx(1 / 16)
    assert row["best single attribute"] == pytest.approx(9 / 16)
    row = next(r for r in results["table"] if r["metric"] == "acc1_72way")
    assert row["chance"] == pytest.approx(1 / 72) and row["best single attribute"] == 1 / 8


def test_nlu_finetune_leaves_model_unchanged(model_dir):
    model = load_model(model_dir, "cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    task, train, _ = BI.nlu_tasks(num_train=96, num_test=8)["colour"]
    # scored on its own training sentences: fine-tuning must fit them (chance: 1/8)
    out = evaluate_nlu(model, task, train, train, mode="finetune", epochs=5, lr=1e-3,
                       batch_size=32)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(out) >= {"accuracy", "matthews_corrcoef"}
    assert out["accuracy"] >= 0.5


def test_pair_galleries_hold_each_heldout_pair_once():
    from clippo.data.builtin import combos
    galleries = BI.pair_galleries(image_size=32, galleries=3)
    assert len(galleries) == 3
    for g in galleries:
        assert g["images"].shape == (16, 3, 32, 32) and g["images"].dtype == torch.uint8
        assert [(c, p) for c, _, p in g["objects"]] == combos("heldout")
        assert len(set(g["texts"])) == 16
    again = BI.pair_galleries(image_size=32, galleries=3)
    assert all(torch.equal(a["images"], b["images"]) for a, b in zip(galleries, again))
    assert not torch.equal(galleries[0]["images"], galleries[1]["images"])


def test_pair_retrieval_averages_the_galleries(demo_model_dir):
    model = load_model(demo_model_dir, "cpu")
    galleries = BI.pair_galleries(image_size=80, galleries=2)
    each = [BI.retrieval(model, task=g, ks=(1,))["metrics"]["image_retrieval_recall@1"]
            for g in galleries]
    out = BI.pair_retrieval(model, galleries=galleries, ks=(1,))
    assert out["galleries"] == 2 and out["num_images"] == 16
    assert out["metrics"]["image_retrieval_recall@1"] == pytest.approx(sum(each) / 2)
    assert out["chance"]["image_retrieval_recall@1"] == pytest.approx(1 / 16)
