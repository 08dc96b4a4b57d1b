"""Evaluation metrics as pure functions of scores, predictions and labels (numpy, float64).

Names follow LAION's CLIP_benchmark (acc1, acc5, mean_per_class_recall,
image_retrieval_recall@K, text_retrieval_recall@K) and GLUE (accuracy, f1, matthews_corrcoef,
pearson, spearmanr). Inputs may be numpy arrays, torch tensors or lists.

Ties. A ranking puts equal scores in the candidates' order (a stable sort: the candidate with
the lower index ranks first), which is also what `argmax` does. The references sort without
fixing that order (big_vision: `np.argsort`; CLIP_benchmark: `torch.topk`), so on exactly tied
scores they may differ from run to run; real embeddings almost never tie. `ties="pessimistic"`
ranks every tied wrong candidate ahead of the right one instead (a lower bound that a collapsed
model, whose scores all tie, cannot game).
"""
import math
import re

import numpy as np

TIES = ("first", "pessimistic")


def _array(x, dtype=None):
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu()
        if x.dtype.is_floating_point:
            x = x.double()
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def _check_ties(ties):
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")


def target_rank(scores, targets, ties="first"):
    """0-based rank of each row's target column among that row's scores (0 = best).

    scores [N, C], targets [N] ints. With ties="first", a column with the same score as the
    target but a lower index ranks ahead of it; with "pessimistic", every tied column does.
    """
    _check_ties(ties)
    s = _array(scores, np.float64)
    t = _array(targets).astype(np.int64).reshape(-1)
    if s.ndim != 2 or s.shape[0] != t.shape[0]:
        raise ValueError(f"scores must be [N, C] with N = len(targets), got {s.shape} and "
                         f"{t.shape[0]} targets")
    if t.size and (t.min() < 0 or t.max() >= s.shape[1]):
        raise ValueError(f"targets must lie in [0, {s.shape[1]}), got {t.min()}..{t.max()}")
    own = s[np.arange(len(t)), t][:, None]
    higher = (s > own).sum(1)
    tied = s == own
    if ties == "first":
        tied_before = (tied & (np.arange(s.shape[1])[None, :] < t[:, None])).sum(1)
    else:
        tied_before = tied.sum(1) - 1  # every other tied column
    return higher + tied_before


def topk_accuracy(scores, targets, ks=(1, 5), ties="first"):
    """{k: fraction of rows whose target is among the k best columns}."""
    rank = target_rank(scores, targets, ties)
    return {k: float((rank < k).mean()) if len(rank) else float("nan") for k in ks}


def mean_per_class_recall(predictions, targets):
    """Mean over the classes present in `targets` of that class's recall (balanced accuracy,
    as sklearn's `balanced_accuracy_score`, which CLIP_benchmark reports)."""
    p = _array(predictions).reshape(-1)
    t = _array(targets).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"predictions and targets differ in length: {p.size} vs {t.size}")
    classes = np.unique(t)
    if not len(classes):
        return float("nan")
    return float(np.mean([(p[t == c] == c).mean() for c in classes]))


def classification_metrics(scores, targets, ties="first"):
    """acc1, acc5 (NaN below 5 classes, as CLIP_benchmark) and mean_per_class_recall."""
    s = _array(scores, np.float64)
    acc = topk_accuracy(s, targets, (1, 5), ties)
    rank = target_rank(s, targets, ties)
    t = _array(targets).astype(np.int64).reshape(-1)
    # the prediction under the same tie rule: the target if it ranks first, else the best
    # other class
    others = s.copy()
    others[np.arange(len(t)), t] = -np.inf
    pred = np.where(rank == 0, t, others.argmax(1) if s.size else t)
    return {"acc1": acc[1], "acc5": acc[5] if s.shape[1] >= 5 else float("nan"),
            "mean_per_class_recall": mean_per_class_recall(pred, t)}


def recall_at_k(scores, positives, ks=(1, 5, 10), ties="first"):
    """{k: fraction of queries with a positive among their k best candidates}.

    scores [Q, G] (query x gallery), positives [Q, G] bool (each query needs at least one).
    This is CLIP-paper retrieval recall: a query counts once however many positives it finds
    (CLIP_benchmark's `recall_at_k(...) > 0`).
    """
    return recall_from_ranks(best_positive_rank(scores, positives, ties), ks)


def recall_from_ranks(ranks, ks):
    ranks = _array(ranks)
    return {k: float((ranks < k).mean()) if len(ranks) else float("nan") for k in ks}


def best_positive_rank(scores, positives, ties="first"):
    """0-based rank of each query's best-ranked positive: the number of negatives ranked
    ahead of it under the tie rule (positives never push each other down)."""
    _check_ties(ties)
    s = _array(scores, np.float64)
    pos = _array(positives).astype(bool)
    if s.shape != pos.shape or s.ndim != 2:
        raise ValueError(f"scores and positives must both be [Q, G], got {s.shape} and "
                         f"{pos.shape}")
    if s.shape[0] and not pos.any(1).all():
        raise ValueError(f"{int((~pos.any(1)).sum())} queries have no positive candidate")
    best = np.where(pos, s, -np.inf).max(1, keepdims=True)
    # the best positive under the tie rule: the lowest-index positive with the best score
    cols = np.arange(s.shape[1])[None, :]
    first_best = np.where(pos & (s == best), cols, s.shape[1]).min(1, keepdims=True)
    negatives = ~pos
    ahead = (negatives & (s > best)).sum(1)
    tied = negatives & (s == best)
    if ties == "first":
        tied &= cols < first_best
    return ahead + tied.sum(1)


def image_text_retrieval(scores, text_to_image, ks=(1, 5, 10), ties="first", chunk=1024):
    """CLIP_benchmark's retrieval metrics from an image x text score matrix.

    scores [N_images, N_texts]; text_to_image [N_texts]: the image each text describes.
    image_retrieval_recall@K: text queries retrieving images; text_retrieval_recall@K: image
    queries retrieving texts (any of the image's captions counts). Queries are ranked
    `chunk` at a time, so memory stays bounded on large galleries.
    """
    s = _array(scores, np.float64)
    t2i = _array(text_to_image).astype(np.int64).reshape(-1)
    if s.ndim != 2 or s.shape[1] != t2i.size:
        raise ValueError(f"scores must be [N_images, N_texts] with N_texts = "
                         f"len(text_to_image), got {s.shape} and {t2i.size}")
    return retrieval_metrics_from_ranks(*retrieval_ranks(
        lambda j0, j1: s[:, j0:j1].T, lambda i0, i1: s[i0:i1], t2i, s.shape[0], ties, chunk),
        ks)


def retrieval_ranks(text_rows, image_rows, text_to_image, num_images, ties="first",
                    chunk=1024):
    """(ranks of text queries, ranks of image queries), scoring `chunk` queries at a time:
    text_rows(j0, j1) -> scores [j1 - j0, N_images], image_rows(i0, i1) -> [i1 - i0, N_texts].
    """
    t2i = _array(text_to_image).astype(np.int64).reshape(-1)
    if t2i.size and (t2i.min() < 0 or t2i.max() >= num_images):
        raise ValueError(f"text_to_image must lie in [0, {num_images})")
    images = np.arange(num_images)
    text_ranks = [best_positive_rank(text_rows(j, min(j + chunk, t2i.size)),
                                     t2i[j:j + chunk, None] == images[None], ties)
                  for j in range(0, t2i.size, chunk)]
    image_ranks = [best_positive_rank(image_rows(i, min(i + chunk, num_images)),
                                      t2i[None] == images[i:i + chunk, None], ties)
                   for i in range(0, num_images, chunk)]
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, np.int64)  # noqa: E731
    return cat(text_ranks), cat(image_ranks)


def retrieval_metrics_from_ranks(text_ranks, image_ranks, ks=(1, 5, 10)):
    t2i, i2t = recall_from_ranks(text_ranks, ks), recall_from_ranks(image_ranks, ks)
    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = t2i[k]
        out[f"text_retrieval_recall@{k}"] = i2t[k]
    return out


# -- GLUE ------------------------------------------------------------------------------------

def accuracy(predictions, targets):
    p, t = _array(predictions).reshape(-1), _array(targets).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"predictions and targets differ in length: {p.size} vs {t.size}")
    return float((p == t).mean()) if t.size else float("nan")


def f1_score(predictions, targets, positive=1):
    """Binary F1 of the `positive` class (GLUE's MRPC and QQP); 0 when nothing is positive."""
    p, t = _array(predictions).reshape(-1), _array(targets).reshape(-1)
    tp = float(((p == positive) & (t == positive)).sum())
    fp = float(((p == positive) & (t != positive)).sum())
    fn = float(((p != positive) & (t == positive)).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def matthews_corrcoef(predictions, targets):
    """Matthews correlation (GLUE's CoLA), multi-class form (Gorodkin's R_K, as sklearn);
    0 when either side is constant (the correlation is undefined there)."""
    p, t = _array(predictions).reshape(-1), _array(targets).reshape(-1)
    classes = np.unique(np.concatenate([p, t]))
    pi = np.searchsorted(classes, p)
    ti = np.searchsorted(classes, t)
    k = len(classes)
    conf = np.zeros((k, k), np.float64)
    np.add.at(conf, (ti, pi), 1)
    n = conf.sum()
    correct = np.trace(conf)
    true_per_class = conf.sum(1)
    pred_per_class = conf.sum(0)
    cov_tp = correct * n - true_per_class @ pred_per_class
    cov_pp = n * n - pred_per_class @ pred_per_class
    cov_tt = n * n - true_per_class @ true_per_class
    if cov_pp == 0 or cov_tt == 0:
        return 0.0
    return float(cov_tp / math.sqrt(cov_tt * cov_pp))


def pearson(x, y):
    """Pearson correlation; NaN when either side is constant."""
    x, y = _array(x, np.float64).reshape(-1), _array(y, np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.size} vs {y.size}")
    dx, dy = x - x.mean(), y - y.mean()
    den = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(dx @ dy / den) if den > 0 else float("nan")


def average_ranks(x):
    """1-based ranks, tied values sharing the mean of their ranks (as scipy's rankdata)."""
    x = _array(x, np.float64).reshape(-1)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    ranks = np.empty(len(x), np.float64)
    start = 0
    while start < len(x):
        end = start
        while end + 1 < len(x) and sorted_x[end + 1] == sorted_x[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x, y):
    """Spearman rank correlation: Pearson of the average ranks (ties as scipy)."""
    return pearson(average_ranks(x), average_ranks(y))


# -- VQA ---------------------------------------------------------------------------------------

# The official VQA evaluation (GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py
# as of its 2021 fix): its answer processing tables, taken as they are, quirks included.
_VQA_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
              "@", "`", ",", "?", "!"]
_VQA_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_VQA_ARTICLES = {"a", "an", "the"}
_VQA_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt":
    "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't",
    "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've":
    "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows":
    "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't",
    "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve":
    "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt":
    "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at":
    "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've":
    "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt":
    "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd":
    "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll":
    "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've":
    "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll", "someones":
    "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere":
    "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve":
    "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent":
    "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've",
    "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod":
    "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've", "wouldn'tve":
    "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've":
    "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve":
    "you've",
}
_VQA_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_VQA_COMMA = re.compile(r"(\d)(,)(\d)")


VQA_RULES = ("official", "normalized")


def _vqa_strip(answer):
    return str(answer).replace("\n", " ").replace("\t", " ").strip()


def _vqa_punctuation(text):
    out = text
    for p in _VQA_PUNCT:
        if (p + " " in text or " " + p in text) or _VQA_COMMA.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    # the official code passes re.UNICODE (32) where sub() takes `count`: at most 32 periods go
    return _VQA_PERIOD.sub("", out, count=32)


def _vqa_digits_articles(text):
    words = [_VQA_NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(_VQA_CONTRACTIONS.get(w, w) for w in words if w not in _VQA_ARTICLES)


def normalize_vqa_answer(answer):
    """An answer after all of the official evaluation's processing: newlines and tabs to
    spaces, punctuation, then lower case, number words to digits, articles dropped,
    apostrophe-less contractions restored."""
    return _vqa_digits_articles(_vqa_punctuation(_vqa_strip(answer)))


def vqa_accuracy(prediction, human_answers, rule="official"):
    """VQA accuracy of one prediction against the humans' answers (10 in VQAv2): for each
    human left out, min(#other humans who gave the prediction / 3, 1), averaged (so 3
    matches out of 10 score 0.9, 4 or more score 1).

    rule "official" compares as vqaEval.py does: both sides only stripped when the humans'
    answers are all identical (then "beach" against ten "the beach" scores 0, and "Yes"
    against ten "yes" too), both fully processed (`normalize_vqa_answer`) otherwise.
    "normalized": both sides always fully processed.
    """
    if rule not in VQA_RULES:
        raise ValueError(f"rule must be one of {VQA_RULES}, got {rule!r}")
    answers = [_vqa_strip(a) for a in human_answers]
    if not answers:
        raise ValueError("a VQA question needs at least one human answer")
    prediction = _vqa_strip(prediction)
    if rule == "normalized" or len(set(answers)) > 1:
        prediction = _vqa_digits_articles(_vqa_punctuation(prediction))
        answers = [_vqa_digits_articles(_vqa_punctuation(a)) for a in answers]
    matches = sum(a == prediction for a in answers)
    total = 0.0
    for a in answers:
        others = matches - (a == prediction)
        total += min(others / 3.0, 1.0)
    return total / len(answers)


def mean_vqa_accuracy(predictions, human_answers, rule="official"):
    """Mean of `vqa_accuracy` over questions (the official overall accuracy, as a fraction)."""
    if len(predictions) != len(human_answers):
        raise ValueError(f"{len(predictions)} predictions for {len(human_answers)} questions")
    if not len(predictions):
        return float("nan")
    return float(np.mean([vqa_accuracy(p, a, rule)
                          for p, a in zip(predictions, human_answers)]))
