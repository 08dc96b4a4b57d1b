"""Few-shot linear probe, as the reference's evaluator (big_vision `fewshot_lsr`): pooled
representations ("pre_logits": the MAP head's output, before the projection) of a training
and a test set; for each seed, `shots` training images per class drawn by a seeded
permutation of each class; closed-form ridge regression (clippo.eval.probe.RidgeClassifier,
l2 = 2^10); top-1 accuracy on the whole test set, averaged over seeds.
"""
import numpy as np

from clippo.eval.common import NothingScored, encode_images
from clippo.eval.data import loader
from clippo.eval.probe import RIDGE_L2, RidgeClassifier

SHOTS = (1, 5, 10, 25)
NUM_SEEDS = 3


def fewshot_accuracy(train_x, train_y, test_x, test_y, num_classes, shots=SHOTS,
                     seeds=range(NUM_SEEDS), l2=RIDGE_L2):
    """{shots: [accuracy per seed]}. Classes with fewer than `shots` training examples use
    what they have (as the reference)."""
    train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
    train_y, test_y = np.asarray(train_y, np.int64), np.asarray(test_y, np.int64)
    out = {k: [] for k in shots}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        per_class = [rng.permutation(np.flatnonzero(train_y == c)) for c in range(num_classes)]
        for k in shots:
            idx = np.concatenate([p[:k] for p in per_class])
            clf = RidgeClassifier(l2).fit(train_x[idx], train_y[idx], num_classes)
            out[k].append(float((clf.predict(test_x) == test_y).mean()))
    return out


def evaluate_fewshot(model, train, test, num_classes, *, shots=SHOTS, num_seeds=NUM_SEEDS,
                     l2=RIDGE_L2, layer="pre_logits", batch_size=64, num_workers=0,
                     precision="fp32", progress=False):
    """Few-shot accuracy for each shot count. train/test yield (image or None, class, index).

    Returns {"acc1_<k>shot": mean over seeds, ..., "per_seed": {k: [...]}}.
    """
    model.eval()
    kw = dict(layer=layer, precision=precision, progress=progress)
    tb = loader(train, batch_size, num_workers)
    x_train, y_train, _, skipped_train = encode_images(model, tb, desc="train", total=len(tb),
                                                       **kw)
    vb = loader(test, batch_size, num_workers)
    x_test, y_test, _, skipped_test = encode_images(model, vb, desc="test", total=len(vb), **kw)
    if not len(y_train) or not len(y_test):
        which = "training" if not len(y_train) else "test"
        raise NothingScored(f"no {which} image could be decoded "
                            f"({len(skipped_train) if which == 'training' else len(skipped_test)}"
                            f" skipped)")
    per_seed = fewshot_accuracy(x_train.numpy(), y_train, x_test.numpy(), y_test, num_classes,
                                shots, range(num_seeds), l2)
    out = {f"acc1_{k}shot": float(np.mean(v)) for k, v in per_seed.items()}
    out.update(per_seed={str(k): v for k, v in per_seed.items()}, num_train=len(y_train),
               num_test=len(y_test), skipped_train=list(skipped_train),
               skipped=list(skipped_test))
    return out
