"""Baselines of the built-in evaluation: the single-attribute readers' accuracy is exact
(hand-counted cases, and a Monte-Carlo reader agrees), the val and test halves of the held-out
pairs are disjoint, and a colour-only "model" passes the old guards (chance + margin) but not
the composition guard (the best single-attribute reader + margin)."""
import math

import numpy as np
import pytest
import torch

from clippo.data import builtin as B
from clippo.eval import builtin as BI
from clippo.eval.common import NothingScored

from _composition import assert_composes


def test_heldout_halves():
    val, test = B.heldout_part("val"), B.heldout_part("test")
    assert set(val) | set(test) == set(B.combos("heldout")) and not set(val) & set(test)
    for part in (val, test):  # every colour once, eight different positions
        assert sorted(c for c, _ in part) == sorted(B.COLORS)
        assert len({p for _, p in part}) == 8
    with pytest.raises(ValueError, match="held-out part"):
        B.heldout_part("train")


def test_reader_accuracy_hand_counted():
    # test pairs among the 16 held-out classes: every colour names 2 classes -> 1/2; the test
    # positions name 2 classes each but one (bottom: only green's) -> (7/2 + 1) / 8
    zs = BI.zeroshot_baselines()
    assert zs["colour"] == 0.5 and zs["position"] == (7 / 2 + 1) / 8
    assert zs["shape"] == 1 / 16 and zs["best"] == zs["position"]
    # among all 72: a colour names 9 classes, a position 8
    z72 = BI.zeroshot_baselines(classes="all")
    assert z72["colour"] == pytest.approx(1 / 9) and z72["position"] == pytest.approx(1 / 8)
    # the 96-image gallery, test queries: colour -> 12 images; position -> 6 or 12
    task = BI.retrieval_task(16)
    ret = BI.retrieval_baselines(task, BI.query_indices(task))
    t2i = ret["image_retrieval_recall@1"]
    assert t2i["colour"] == pytest.approx(1 / 12)
    assert t2i["position"] == pytest.approx((7 / 12 + 1 / 6) / 8)
    assert t2i["colour+position"] == pytest.approx(1 / 6)
    # image queries with two captions each: 2 right among 24 of the colour
    assert ret["text_retrieval_recall@1"]["colour"] == pytest.approx(2 / 24)


def test_reader_accuracy_matches_a_sampled_reader():
    rng = np.random.default_rng(0)
    g = BI.pair_galleries(16, galleries=1)[0]
    queries = BI.query_indices(g)
    exact = BI.retrieval_baselines(g, queries)["image_retrieval_recall@1"]["shape"]
    objects = g["objects"]
    hits = 0
    trials = 20000
    for t in range(trials):
        q = queries[t % len(queries)]
        same = [j for j, o in enumerate(objects) if o[1] == objects[q][1]]
        hits += rng.choice(same) == q
    assert hits / trials == pytest.approx(exact, abs=4 * math.sqrt(0.25 / trials))


class ColourOnly:
    """A "model" that sees colour and nothing else: an image embeds to the one-hot of its
    object's colour (plus a little noise, which breaks ties at random), a caption to the
    one-hot of the colour word it names."""

    colours = list(B.COLORS)

    def __init__(self, image_size=32):
        self.device = torch.device("cpu")
        self.img = type("Tower", (), {"image_size": (image_size, image_size)})()
        self.noise = torch.Generator().manual_seed(0)

    def eval(self):
        return self

    def renderer(self, device=None):
        def render(texts):
            out = torch.zeros(len(texts), 3, *self.img.image_size, dtype=torch.uint8)
            for i, text in enumerate(texts):
                colour = next(c for c in self.colours if c in text.split())
                out[i] = torch.tensor(B.COLORS[colour], dtype=torch.uint8)[:, None, None]
            return out
        return render

    def render_texts(self, texts, device=None):  # as CLIPPO.render_texts with text_tokens="all"
        return self.renderer(device)(list(texts)), None

    def encode_image(self, images, keep=None):
        rgb = torch.tensor([B.COLORS[c] for c in self.colours], dtype=torch.float32)
        px = images.float().flatten(2).transpose(1, 2)  # [N, P, 3]
        dist = torch.cdist(px, rgb[None].expand(len(px), -1, -1))  # [N, P, 8]
        near = dist.min(-1)
        counts = torch.stack([((near.indices == k) & (near.values < 40)).sum(1)
                              for k in range(len(self.colours))], 1)
        z = torch.nn.functional.one_hot(counts.argmax(1), len(self.colours)).float()
        z += 1e-3 * torch.randn(z.shape, generator=self.noise)
        return torch.nn.functional.normalize(z, dim=-1)


def test_colour_only_model_fails_the_composition_guard():
    model = ColourOnly()
    res = BI.zeroshot(model, num_samples=256)
    acc, p, n = res["metrics"]["acc1"], res["chance"]["acc1"], 256
    # it reads colour perfectly: about half right, as the colour reader's exact 1/2 says
    assert acc == pytest.approx(res["baselines"]["acc1"]["colour"], abs=0.1)
    # the old guards (chance + 6 deviations, 3 x chance) pass it...
    assert acc >= p + 6 * math.sqrt(p * (1 - p) / n) and acc >= 3 * p
    # ...the composition guard does not
    with pytest.raises(AssertionError, match="single-attribute"):
        assert_composes(acc, res["baselines"]["acc1"], n)
    pairs = BI.pair_retrieval(model, BI.pair_galleries(32, galleries=2))
    with pytest.raises(AssertionError, match="single-attribute"):
        assert_composes(pairs["metrics"]["image_retrieval_recall@1"],
                        pairs["baselines"]["image_retrieval_recall@1"], 16)


def test_query_subset_scored_against_the_whole_gallery():
    """Retrieval restricted to the test pairs' queries: their ranks against the whole gallery
    (recomputed one query at a time from the colour-only model's scores)."""
    model = ColourOnly()
    task = BI.pair_galleries(32, galleries=1)[0]
    queries = BI.query_indices(task)
    from clippo.eval.retrieval import CaptionedImages, evaluate_retrieval
    ds = CaptionedImages(zip(task["images"], task["captions"]), 32)
    model.noise.manual_seed(1)
    m = evaluate_retrieval(model, ds, ks=(1,), queries=queries)
    model.noise.manual_seed(1)
    zi = model.encode_image(task["images"]).double()  # the gallery first, then the captions
    zt = model.encode_image(model.renderer()(task["texts"])).double()
    s = zt @ zi.T
    # ties="first": a tied image of lower index ranks ahead
    t2i = np.mean([all(s[q, j] < s[q, q] or (s[q, j] == s[q, q] and j > q)
                       for j in range(16) if j != q) for q in queries])
    assert m["image_retrieval_recall@1"] == pytest.approx(t2i)
    assert m["num_images"] == 16 and m["num_query_images"] == len(queries) == 8
    with pytest.raises(NothingScored):
        evaluate_retrieval(model, ds, ks=(1,), queries=[99])
