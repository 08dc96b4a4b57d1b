"""Visual question answering by rendering: the question is rendered into a text band above
(or below) the image, the picture is resized into the rest of the frame, the one encoder
encodes the composite, and a classifier over the answer vocabulary, trained on frozen
features, picks the answer. Scored with the official VQA accuracy (clippo.eval.metrics).

    +----------------------+
    | what is the man      |  band: `band` pixels of the rendered question (whole text rows)
    | holding?             |
    +----------------------+
    |   the image, resized |  image_size - band pixels high, full width
    +----------------------+
"""
from collections import Counter

import numpy as np
import torch

from clippo.eval import metrics as M
from clippo.eval.common import NothingScored, model_features, precision_context, progress_bar
from clippo.eval.data import ImageDataset, loader, resize_uint8
from clippo.eval.probe import train_head

LAYOUTS = ("top", "bottom")
NUM_ANSWERS = 3129  # the usual VQAv2 answer vocabulary size


def default_band(model):
    """About a quarter of the frame, in whole rows of text (at least one row)."""
    font = model.render_config.font_size
    return max(font, (model.img.image_size[0] // 4) // font * font)


def render_with_question(model, images, questions, band=None, layout="top"):
    """uint8 [B, 3, H, W] composites on the model's device: `band` rows of the rendered
    question (its first rows of text) and the image resized into the remaining rows."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    h, w = model.img.image_size
    band = default_band(model) if band is None else int(band)
    if not 0 < band < h:
        raise ValueError(f"band must be between 1 and {h - 1} pixels, got {band}")
    device = model.device
    text = model.renderer()(list(questions))
    if text.shape[-1] != w or text.shape[-2] < band:
        raise ValueError(f"rendered text is {tuple(text.shape[-2:])}, the model needs width {w}")
    picture = resize_uint8(images.to(device), (h - band, w))
    out = torch.empty((len(questions), 3, h, w), dtype=torch.uint8, device=device)
    if layout == "top":
        out[:, :, :band] = text[:, :, :band]
        out[:, :, band:] = picture
    else:
        out[:, :, :h - band] = picture
        out[:, :, h - band:] = text[:, :, :band]
    return out


def answer_vocabulary(records, max_answers=NUM_ANSWERS):
    """The most frequent (normalised) human answers of the training records, most frequent
    first (ties alphabetical)."""
    counts = Counter(M.normalize_vqa_answer(a) for r in records for a in r["answers"])
    counts.pop("", None)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [a for a, _ in ranked[:max_answers]]


def answer_scores(records, vocab):
    """[N, len(vocab)] VQA accuracy of answering each vocabulary entry, both sides fully
    normalised (the training targets: the vocabulary holds normalised answers, which the
    official rule would score 0 on questions whose ten answers are the same raw string)."""
    index = {a: i for i, a in enumerate(vocab)}
    scores = torch.zeros(len(records), len(vocab))
    for n, r in enumerate(records):
        for a in set(M.normalize_vqa_answer(x) for x in r["answers"]):
            if a in index:
                scores[n, index[a]] = M.vqa_accuracy(a, r["answers"], "normalized")
    return scores


@torch.no_grad()
def question_features(model, records, *, band=None, layout="top", layer="pre_logits",
                      batch_size=64, num_workers=0, precision="fp32", progress=False,
                      desc="questions"):
    """(features [N, D] of the decodable records, their record indices, skipped indices)."""
    h, w = model.img.image_size
    # images are resized once more into the frame, so decode them at the full model size
    dataset = ImageDataset([r["image"] for r in records], list(range(len(records))), (h, w))
    batches = loader(dataset, batch_size, num_workers)
    feats, kept, skipped = [], [], []
    for batch in progress_bar(batches, progress, desc, len(batches), "batch"):
        skipped += batch["skipped"]
        if batch["images"] is None:
            continue
        questions = [records[i]["question"] for i in batch["indices"]]
        composite = render_with_question(model, batch["images"], questions, band, layout)
        with precision_context(model.device, precision):
            feats.append(model_features(model, composite, layer).float().cpu())
        kept += batch["indices"]
    dim = feats[0].shape[1] if feats else 0
    return (torch.cat(feats) if feats else torch.zeros(0, dim)), kept, skipped


def evaluate_vqa(model, train, test, *, band=None, layout="top", layer="pre_logits",
                 max_answers=NUM_ANSWERS, hidden=0, epochs=100, lr=1e-2, weight_decay=1e-4,
                 batch_size=64, num_workers=0, seed=0, precision="fp32", progress=False,
                 answer_rule="official"):
    """Train the answer classifier on `train`, report VQA accuracy on `test`, compared by
    `answer_rule` (clippo.eval.metrics.VQA_RULES: "official", vqaEval.py's, by default).

    Records: {"question", "image" (path or uint8 tensor), "answers": [human answers]} and
    optionally "answer_type" (VQAv2) or "kind" (built-in) for a per-type breakdown.
    """
    if answer_rule not in M.VQA_RULES:
        raise ValueError(f"answer_rule must be one of {M.VQA_RULES}, got {answer_rule!r}")
    model.eval()
    vocab = answer_vocabulary(train, max_answers)
    if not vocab:
        raise ValueError("the training questions have no answers")
    kw = dict(band=band, layout=layout, layer=layer, batch_size=batch_size,
              num_workers=num_workers, precision=precision, progress=progress)
    f_train, kept_train, skipped_train = question_features(model, train, desc="train", **kw)
    if not kept_train:
        raise NothingScored(f"no training image could be decoded ({len(skipped_train)} "
                            f"skipped): no answer classifier to train")
    scores = answer_scores([train[i] for i in kept_train], vocab)
    answerable = scores.sum(1) > 0  # questions none of whose answers made the vocabulary
    if not answerable.any():
        raise ValueError("no training question has an answer in the vocabulary")
    target = scores[answerable] / scores[answerable].sum(1, keepdim=True)
    head = train_head(f_train[answerable], target, "soft", len(vocab), hidden=hidden,
                      epochs=epochs, lr=lr, weight_decay=weight_decay, seed=seed,
                      device=model.device)
    f_test, kept_test, skipped_test = question_features(model, test, desc="test", **kw)
    if not kept_test:
        raise NothingScored(f"no test image could be decoded ({len(skipped_test)} skipped): "
                            f"no question to score")
    pred = head(f_test).argmax(1).tolist()
    answers = [vocab[p] for p in pred]
    per_question = [M.vqa_accuracy(a, test[i]["answers"], answer_rule)
                    for a, i in zip(answers, kept_test)]
    out = {"vqa_accuracy": float(np.mean(per_question))}
    types = {}
    for acc, i in zip(per_question, kept_test):
        t = test[i].get("answer_type", test[i].get("kind"))
        if t is not None:
            types.setdefault(t, []).append(acc)
    if types:
        out["per_answer_type"] = {t: float(np.mean(v)) for t, v in sorted(types.items())}
    out.update(answer_rule=answer_rule, num_answers=len(vocab), num_train=len(kept_train),
               num_test=len(kept_test), train_unanswerable=int((~answerable).sum()),
               skipped_train=list(skipped_train), skipped=list(skipped_test))
    return out
