"""clippo.eval metrics against hand-computed cases and independent implementations
(sklearn, scipy, CLIP_benchmark, numpy least squares)."""
import math

import numpy as np
import pytest
import torch

from clippo.eval import metrics as M
from clippo.eval.fewshot import fewshot_accuracy
from clippo.eval.probe import RIDGE_BIAS, RidgeClassifier
from clippo.eval.templates import (CLIP_IMAGENET_TEMPLATES, TEMPLATE_SETS, canonicalize,
                                   load_class_prompts, load_templates)


# -- classification ----------------------------------------------------------------------------

def test_target_rank_ties_by_hand():
    scores = [[0.1, 0.5, 0.3],   # target 2: 0.5 is higher -> rank 1
              [0.2, 0.2, 0.1],   # target 1: tied with column 0, which comes first
              [0.2, 0.2, 0.1],   # target 0: tied with column 1, which comes after
              [0.4, 0.4, 0.4]]   # target 1: tied with both
    targets = [2, 1, 0, 1]
    assert M.target_rank(scores, targets, "first").tolist() == [1, 1, 0, 1]
    assert M.target_rank(scores, targets, "pessimistic").tolist() == [1, 1, 1, 2]
    acc = M.topk_accuracy(scores, targets, (1, 2), "first")
    assert acc == {1: 0.25, 2: 1.0}
    acc = M.topk_accuracy(scores, targets, (1, 2), "pessimistic")
    assert acc == {1: 0.0, 2: 0.75}


def test_first_rule_is_argmax():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 3, size=(200, 5)).astype(float)  # many ties
    targets = rng.integers(0, 5, size=200)
    acc1 = M.topk_accuracy(scores, targets, (1,))[1]
    assert acc1 == pytest.approx(np.mean(scores.argmax(1) == targets))


def test_topk_matches_torch_topk_without_ties():
    # CLIP_benchmark's rule (its `accuracy` helper itself fails on numpy >= 2.4)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 12, generator=g)
    target = torch.randint(0, 12, (300,), generator=g)
    ours = M.topk_accuracy(logits, target, (1, 5))
    top = logits.topk(5, dim=1).indices
    assert ours[1] == pytest.approx((top[:, 0] == target).float().mean().item())
    assert ours[5] == pytest.approx((top == target[:, None]).any(1).float().mean().item())


def test_mean_per_class_recall_by_hand():
    pred = [0, 0, 1, 1, 2, 2]
    true = [0, 0, 0, 1, 1, 2]
    # recalls: class 0: 2/3, class 1: 1/2, class 2: 1/1
    assert M.mean_per_class_recall(pred, true) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # a class that is predicted but never true does not count
    assert M.mean_per_class_recall([3, 0], [0, 0]) == pytest.approx(0.5)


def test_mean_per_class_recall_matches_sklearn():
    from sklearn.metrics import balanced_accuracy_score
    rng = np.random.default_rng(1)
    t, p = rng.integers(0, 7, 500), rng.integers(0, 7, 500)
    assert M.mean_per_class_recall(p, t) == pytest.approx(balanced_accuracy_score(t, p))


def test_classification_metrics_few_classes_and_tied_prediction():
    out = M.classification_metrics([[1.0, 1.0], [0.0, 2.0], [3.0, 1.0]], [1, 1, 0])
    assert math.isnan(out["acc5"])  # fewer than 5 classes, as CLIP_benchmark
    assert out["acc1"] == pytest.approx(2 / 3)
    # predictions (first rule): 0, 1, 0 -> recall class 0: 1/1, class 1: 1/2
    assert out["mean_per_class_recall"] == pytest.approx(0.75)
    out = M.classification_metrics([[1.0, 1.0], [0.0, 2.0], [3.0, 1.0]], [0, 1, 0],
                                   ties="pessimistic")
    # row 0 is a tie: counted wrong, predicted as class 1
    assert out["acc1"] == pytest.approx(2 / 3)
    assert out["mean_per_class_recall"] == pytest.approx((1 / 2 + 1) / 2)


# -- retrieval ---------------------------------------------------------------------------------

def _tied_gallery():
    # 2 images x 4 texts; texts 0, 1 describe image 0, texts 2, 3 image 1
    scores = np.array([[0.9, 0.7, 0.9, 0.1],
                       [0.2, 0.7, 0.7, 0.7]])
    return scores, [0, 0, 1, 1]


def test_retrieval_recall_with_ties_by_hand():
    scores, t2i = _tied_gallery()
    first = M.image_text_retrieval(scores, t2i, ks=(1, 2))
    pess = M.image_text_retrieval(scores, t2i, ks=(1, 2), ties="pessimistic")
    # image 0 (texts 0, 1): best positive text 0 at 0.9, tied negative text 2 comes later
    #   -> rank 0 (first) / 1 (pessimistic)
    # image 1 (texts 2, 3): best positives at 0.7, tied negative text 1 comes earlier
    #   -> rank 1 under both rules
    assert first["text_retrieval_recall@1"] == 0.5 and pess["text_retrieval_recall@1"] == 0.0
    assert first["text_retrieval_recall@2"] == 1.0 and pess["text_retrieval_recall@2"] == 1.0
    # text queries: text 0 -> [0.9, 0.2] rank 0; text 1 -> [0.7, 0.7] tie, positive first
    # (rank 0 / 1); text 2 -> [0.9, 0.7] rank 1; text 3 -> [0.1, 0.7] rank 0
    assert first["image_retrieval_recall@1"] == 0.75
    assert pess["image_retrieval_recall@1"] == 0.5
    assert first["image_retrieval_recall@2"] == pess["image_retrieval_recall@2"] == 1.0


def test_collapsed_model_scores_zero_when_pessimistic():
    scores = np.zeros((5, 10))  # every embedding equal: every score ties
    t2i = np.repeat(np.arange(5), 2)
    pess = M.image_text_retrieval(scores, t2i, ks=(1,), ties="pessimistic")
    assert pess["image_retrieval_recall@1"] == 0.0 and pess["text_retrieval_recall@1"] == 0.0
    first = M.image_text_retrieval(scores, t2i, ks=(1,))
    assert first["image_retrieval_recall@1"] == pytest.approx(2 / 10)  # texts of image 0
    assert first["text_retrieval_recall@1"] == pytest.approx(1 / 5)  # image 0


def test_retrieval_matches_clip_benchmark_without_ties():
    from clip_benchmark.metrics.zeroshot_retrieval import recall_at_k
    g = torch.Generator().manual_seed(0)
    n_img, per = 40, 3
    scores = torch.randn(n_img, n_img * per, generator=g, dtype=torch.float64)
    t2i = torch.arange(n_img).repeat_interleave(per)
    ours = M.image_text_retrieval(scores, t2i, ks=(1, 5, 10))
    positives = torch.zeros(n_img * per, n_img, dtype=torch.bool)  # texts x images
    positives[torch.arange(n_img * per), t2i] = True
    for k in (1, 5, 10):
        t2i_ref = (recall_at_k(scores.t(), positives, k) > 0).float().mean().item()
        i2t_ref = (recall_at_k(scores, positives.t(), k) > 0).float().mean().item()
        assert ours[f"image_retrieval_recall@{k}"] == pytest.approx(t2i_ref)
        assert ours[f"text_retrieval_recall@{k}"] == pytest.approx(i2t_ref)


def test_retrieval_chunking_gives_the_same_ranks():
    rng = np.random.default_rng(6)
    scores = rng.integers(0, 4, size=(13, 29)).astype(float)  # many ties
    t2i = rng.integers(0, 13, 29)
    t2i[:13] = np.arange(13)  # every image has a caption
    whole = M.image_text_retrieval(scores, t2i, ks=(1, 3), chunk=1000)
    for ties in M.TIES:
        assert M.image_text_retrieval(scores, t2i, ks=(1, 3), ties=ties, chunk=4) == \
            M.image_text_retrieval(scores, t2i, ks=(1, 3), ties=ties, chunk=1000)
    assert whole["image_retrieval_recall@1"] > 0


def test_recall_rejects_queries_without_positives():
    with pytest.raises(ValueError, match="no positive"):
        M.recall_at_k([[0.1, 0.2]], [[False, False]])
    with pytest.raises(ValueError, match="N_images"):
        M.image_text_retrieval(np.zeros((2, 3)), [0, 1])


# -- GLUE --------------------------------------------------------------------------------------

BIN_TRUE = [1, 1, 1, 0, 0, 0, 1, 0]
BIN_PRED = [1, 0, 1, 0, 1, 0, 1, 0]  # TP 3, FN 1, FP 1, TN 3


def test_matthews_by_hand():
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (9 - 1) / sqrt(4^4) = 0.5
    assert M.matthews_corrcoef(BIN_PRED, BIN_TRUE) == pytest.approx(0.5)
    assert M.matthews_corrcoef([1, 1, 1], [0, 1, 0]) == 0.0  # constant prediction
    assert M.matthews_corrcoef([0, 1, 1, 0], [1, 0, 0, 1]) == pytest.approx(-1.0)


def test_matthews_multiclass_matches_sklearn():
    from sklearn.metrics import matthews_corrcoef
    rng = np.random.default_rng(2)
    t = rng.integers(0, 4, 300)
    p = np.where(rng.random(300) < 0.6, t, rng.integers(0, 4, 300))
    assert M.matthews_corrcoef(p, t) == pytest.approx(matthews_corrcoef(t, p))


def test_f1_and_accuracy_by_hand():
    assert M.f1_score(BIN_PRED, BIN_TRUE) == pytest.approx(0.75)  # P = R = 3/4
    assert M.accuracy(BIN_PRED, BIN_TRUE) == pytest.approx(6 / 8)
    assert M.f1_score([0, 0], [0, 0]) == 0.0


def test_pearson_spearman_by_hand():
    # means 2.5, 5; sum dx*dy = 11, sum dx^2 = 5, sum dy^2 = 26
    assert M.pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / math.sqrt(130))
    # ranks with a tie: x -> [1, 2.5, 2.5, 4], y -> [1, 3, 2, 4]: 4.5 / sqrt(4.5 * 5)
    assert M.average_ranks([1, 2, 2, 3]).tolist() == [1, 2.5, 2.5, 4]
    assert M.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert math.isnan(M.pearson([1, 1, 1], [1, 2, 3]))


def test_pearson_spearman_match_scipy():
    from scipy import stats
    rng = np.random.default_rng(3)
    x = rng.integers(0, 6, 200).astype(float)  # ties
    y = x + rng.normal(0, 2, 200)
    assert M.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
    assert M.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])


# -- VQA ---------------------------------------------------------------------------------------

def test_vqa_accuracy_by_hand():
    humans = ["red"] * 3 + ["blue"] * 7
    # each red annotator leaves 2 matching others (2/3), each blue one leaves 3 (1):
    # (3 * 2/3 + 7 * 1) / 10
    assert M.vqa_accuracy("red", humans) == pytest.approx(0.9)
    assert M.vqa_accuracy("blue", humans) == pytest.approx(1.0)
    assert M.vqa_accuracy("green", humans) == 0.0
    # one match: the matching annotator sees 0, the 9 others see 1 -> 9 * (1/3) / 10
    assert M.vqa_accuracy("red", ["red"] + ["blue"] * 9) == pytest.approx(0.3)
    # two matches: 2 * (1/3) + 8 * (2/3) over 10
    assert M.vqa_accuracy("red", ["red"] * 2 + ["blue"] * 8) == pytest.approx(0.6)
    assert M.mean_vqa_accuracy(["red", "green"], [humans, humans]) == pytest.approx(0.45)


def test_vqa_answer_normalisation():
    assert M.normalize_vqa_answer("Two") == "2"
    assert M.normalize_vqa_answer("the red.") == "red"
    assert M.normalize_vqa_answer("Yes!") == "yes"
    assert M.normalize_vqa_answer("dont know") == "don't know"
    assert M.normalize_vqa_answer("1,000") == "1000"
    assert M.normalize_vqa_answer("3.5") == "3.5"
    # vqaEval.py processes answers only when the humans disagree (tests/test_eval_real_formats)
    assert M.vqa_accuracy("Two", ["2"] * 10) == 0.0
    assert M.vqa_accuracy("Two", ["2"] * 9 + ["3"]) == 1.0
    assert M.vqa_accuracy("Two", ["2"] * 10, rule="normalized") == 1.0


# -- few-shot ridge ----------------------------------------------------------------------------

@pytest.mark.parametrize("n", [40, 7])  # more and fewer points than dimensions
def test_ridge_matches_augmented_least_squares(n):
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(n, 16)), rng.integers(0, 3, n)
    clf = RidgeClassifier(l2=5.0).fit(x, y, 3)
    # independent route: ridge = least squares on [A; sqrt(l2) I] w = [T; 0]
    a = (x - x.mean(0)) / (x.std(0) + 1e-5)
    a = np.hstack([a, np.full((n, 1), RIDGE_BIAS)])
    t = 2.0 * np.eye(3)[y] - 1.0
    aug_a = np.vstack([a, math.sqrt(5.0) * np.eye(a.shape[1])])
    aug_t = np.vstack([t, np.zeros((a.shape[1], 3))])
    w = np.linalg.lstsq(aug_a, aug_t, rcond=None)[0]
    np.testing.assert_allclose(clf.w, w, rtol=1e-7, atol=1e-9)


def test_fewshot_accuracy_separable_and_shot_counts():
    rng = np.random.default_rng(5)
    centres = rng.normal(0, 5, size=(4, 8))
    y_train = np.repeat(np.arange(4), 30)
    x_train = centres[y_train] + rng.normal(0, 0.3, size=(120, 8))
    y_test = np.repeat(np.arange(4), 10)
    x_test = centres[y_test] + rng.normal(0, 0.3, size=(40, 8))
    acc = fewshot_accuracy(x_train, y_train, x_test, y_test, 4, shots=(1, 5), seeds=range(2),
                           l2=1.0)
    assert acc[5] == [1.0, 1.0]
    # labels carry no information about the features: accuracy is that of a constant guess
    acc = fewshot_accuracy(x_train, rng.permutation(y_train), x_test, y_test, 4, shots=(25,),
                           seeds=range(3))
    assert np.mean(acc[25]) < 0.6


# -- templates ---------------------------------------------------------------------------------

def test_templates_and_canonicalisation(tmp_path):
    assert len(CLIP_IMAGENET_TEMPLATES) == 80 == len(set(CLIP_IMAGENET_TEMPLATES))
    assert TEMPLATE_SETS["clip"][-1] == "{}" and len(TEMPLATE_SETS["short"]) == 8
    assert canonicalize("a photo of a {}.", keep="{}") == "a photo of a {}"
    assert canonicalize("Great_White  shark!", keep=",") == "great white shark"
    assert canonicalize("crane, bird", keep=",") == "crane, bird"
    f = tmp_path / "t.txt"
    f.write_text("# comment\na {} here\n\nitap of a {c}\n")
    assert load_templates(str(f)) == ["a {} here", "itap of a {}"]
    f.write_text("a {} here\nno placeholder\n")
    with pytest.raises(ValueError, match=r"t\.txt:2: .*no '\{\}'"):
        load_templates(str(f))


def test_class_prompts_file(tmp_path):
    f = tmp_path / "p.json"
    f.write_text('{"cat": ["a cat", "a kitten"], "dog": ["a dog"]}')
    assert load_class_prompts(f) == {"cat": ["a cat", "a kitten"], "dog": ["a dog"]}
    f.write_text('{"cat": ["a cat"],\n "dog": []}')
    with pytest.raises(ValueError, match="class 'dog': expected a non-empty list"):
        load_class_prompts(f)
    f.write_text('{"cat": ["a cat"],\n "dog" ["a dog"]}')
    with pytest.raises(ValueError, match=r"p\.json:2: invalid JSON"):
        load_class_prompts(f)
