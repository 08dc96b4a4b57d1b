"""Language understanding on rendered text (GLUE's TSV formats): sentence and sentence-pair
classification and regression, by a linear probe on frozen features or full fine-tuning.

A sentence pair is encoded one of two ways:
  joint     both sentences rendered into one image, "a | b" (the separator is a setting): one
            forward pass sees both, as a cross-encoder (BERT) sees a pair; the default for
            fine-tuning, where the encoder learns to compare the two
  separate  each sentence encoded alone, the features combined as (u, v, |u - v|, u * v)
            (Sentence-BERT's classifier input); the default for the linear probe, since a
            frozen encoder was never taught to compare two sentences inside one image
Metrics are GLUE's: accuracy, F1 (MRPC, QQP), Matthews correlation (CoLA), Pearson and
Spearman correlation (STS-B).
"""
import copy

import numpy as np
import torch

from clippo.eval import metrics as M
from clippo.eval.common import encode_texts, model_features, precision_context
from clippo.eval.probe import head_loss, make_head, train_head

PAIR_ENCODINGS = ("joint", "separate")
DEFAULT_PAIR_ENCODING = {"linear": "separate", "finetune": "joint"}
MODES = ("linear", "finetune")
DEFAULT_SEPARATOR = " | "


def join_pair(a, b, separator=DEFAULT_SEPARATOR):
    return f"{a}{separator}{b}"


def combine_pair(u, v):
    return torch.cat([u, v, (u - v).abs(), u * v], dim=-1)


def sentence_features(model, texts_a, texts_b=None, *, pair_encoding="joint",
                      separator=DEFAULT_SEPARATOR, layer="pre_logits", batch_size=256,
                      precision="fp32", progress=False):
    """[N, D] (single sentences, joint pairs) or [N, 4D] (separate pairs) frozen features."""
    kw = dict(batch_size=batch_size, layer=layer, precision=precision, progress=progress)
    if texts_b is None:
        return encode_texts(model, texts_a, desc="sentences", **kw)
    if pair_encoding == "joint":
        return encode_texts(model, [join_pair(a, b, separator) for a, b in zip(texts_a, texts_b)],
                            desc="sentence pairs", **kw)
    if pair_encoding == "separate":
        return combine_pair(encode_texts(model, texts_a, desc="first sentences", **kw),
                            encode_texts(model, texts_b, desc="second sentences", **kw))
    raise ValueError(f"pair_encoding must be one of {PAIR_ENCODINGS}, got {pair_encoding!r}")


def glue_scores(task, outputs, targets):
    """The task's metrics from head outputs ([N, C] logits, or [N] / [N, 1] predictions for
    a regression task)."""
    outputs = torch.as_tensor(outputs, dtype=torch.float64)
    if task.is_regression:
        pred = outputs.reshape(-1).numpy()
    else:
        pred = outputs.argmax(-1).numpy()
    targets = np.asarray(targets)
    fns = {"accuracy": M.accuracy, "f1": M.f1_score, "matthews_corrcoef": M.matthews_corrcoef,
           "pearson": M.pearson, "spearmanr": M.spearman}
    return {name: fns[name](pred, targets) for name in task.metrics}


def _targets(task, y):
    return torch.tensor(y, dtype=torch.float32 if task.is_regression else torch.long)


def evaluate_nlu(model, task, train, test, *, mode="linear", pair_encoding=None,
                 separator=DEFAULT_SEPARATOR, layer="pre_logits", epochs=None, lr=None,
                 weight_decay=1e-4, batch_size=64, hidden=0, seed=0, precision="fp32",
                 progress=False):
    """Train on `train`, score on `test`; each is (texts_a, texts_b or None, targets). `test`
    may be a dict {name: test set} (MNLI's mnli_m and mnli_mm): one trained model scores them
    all, and the result is {name: scores}.

    mode "linear": a linear head (hidden > 0: an MLP) on frozen features; "finetune": the
    whole model and a linear head on its pooled features, trained together (on a copy: the
    model passed in is left unchanged). pair_encoding: None picks separate for "linear", joint
    for "finetune". epochs / lr default to 100 / 1e-2 (linear) and 3 / 3e-5 (finetune).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    pair_encoding = pair_encoding or DEFAULT_PAIR_ENCODING[mode]
    if pair_encoding not in PAIR_ENCODINGS:
        raise ValueError(f"pair_encoding must be one of {PAIR_ENCODINGS}, got {pair_encoding!r}")
    out_dim = 1 if task.is_regression else len(task.labels)
    kind = "regression" if task.is_regression else "classification"
    named = isinstance(test, dict)
    tests = test if named else {None: test}
    y_train = _targets(task, train[2])
    model.eval()
    if mode == "linear":
        kw = dict(pair_encoding=pair_encoding, separator=separator, layer=layer,
                  precision=precision, progress=progress)
        f_train = sentence_features(model, train[0], train[1], **kw)
        head = train_head(f_train, y_train, kind, out_dim, hidden=hidden,
                          epochs=epochs or 100, lr=lr or 1e-2, weight_decay=weight_decay,
                          batch_size=256, seed=seed, device=model.device)
        outputs = [head(sentence_features(model, t[0], t[1], **kw)) for t in tests.values()]
    else:
        outputs = _finetune(model, task, train, list(tests.values()), kind, out_dim,
                            pair_encoding, separator, layer, epochs or 3, lr or 3e-5,
                            weight_decay, batch_size, seed, precision, progress)
    results = {}
    for name, t, out in zip(tests, tests.values(), outputs):
        scores = glue_scores(task, out, t[2])
        scores.update(num_train=len(train[2]), num_test=len(t[2]))
        if task.is_pair:
            scores["pair_encoding"] = pair_encoding
        results[name] = scores
    return results if named else results[None]


def _forward_texts(model, head, texts_a, texts_b, pair_encoding, separator, layer):
    def features(texts):  # rendered, then encoded from the tokens text_tokens says
        images, keep = model.render_texts(list(texts))
        return model_features(model, images, layer, keep)

    if texts_b is None:
        feats = features(texts_a)
    elif pair_encoding == "joint":
        feats = features([join_pair(a, b, separator) for a, b in zip(texts_a, texts_b)])
    else:
        feats = combine_pair(features(texts_a), features(texts_b))
    return head(feats.float())


def _finetune(model, task, train, tests, kind, out_dim, pair_encoding, separator, layer, epochs,
              lr, weight_decay, batch_size, seed, precision, progress):
    """[outputs of each test set] of a fine-tuned copy of the model."""
    from tqdm import tqdm
    device = model.device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tuned = copy.deepcopy(model).train()
        probe_dim = (tuned.img.width if layer == "pre_logits" else tuned.img.num_classes)
        head = make_head(probe_dim * (4 if train[1] is not None and pair_encoding == "separate"
                                      else 1), out_dim).to(device)
    params = list(tuned.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    n = len(train[2])
    steps = epochs * max(1, -(-n // batch_size))
    warmup = max(1, steps // 10)
    # linear warm-up, then linear decay to 0
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))))
    y = _targets(task, train[2]).to(device)
    g = torch.Generator().manual_seed(seed)
    bar = tqdm(total=steps, desc="fine-tune", disable=None if progress else True, leave=False)
    for _ in range(epochs):
        order = torch.randperm(n, generator=g).tolist()
        for s in range(0, n, batch_size):
            idx = order[s:s + batch_size]
            a = [train[0][i] for i in idx]
            b = None if train[1] is None else [train[1][i] for i in idx]
            with precision_context(device, precision):
                out = _forward_texts(tuned, head, a, b, pair_encoding, separator, layer)
            loss = head_loss(kind, out.float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            bar.update(1)
    bar.close()
    tuned.eval()
    head.eval()
    results = []
    with torch.no_grad():
        for test in tests:
            outs = []
            for s in range(0, len(test[2]), 256):
                a = test[0][s:s + 256]
                b = None if test[1] is None else test[1][s:s + 256]
                with precision_context(device, precision):
                    outs.append(_forward_texts(tuned, head, a, b, pair_encoding, separator,
                                               layer).float().cpu())
            results.append(torch.cat(outs))
    return results
