"""Tiny built-in versions of every task, drawn from clippo.data.builtin (no download).

Each is a pure function of its seed, so every run, test and results table sees the same data.
The held-out split is colour x position: 16 of the 72 pairs never appear in training.

    zeroshot      256 images of the 16 held-out colour x position pairs (any shape), classified
                  among those 16 classes; a class's prompts are its captions, one per shape
                  (prompt ensembling with the shapes as templates)
    retrieval     one image per held-out pair and shape (96), two English captions each
                  naming colour, shape and position (unique in the gallery)
    pairs         8 galleries of 16 images, one per held-out pair (shape random), an English
                  caption each: retrieval where colour and position name the image (what
                  `clippo demo` reports; pair_retrieval averages the recalls)
    multilingual  the same 96 images, one caption per language (en, de, ru, zh)
    nlu           colour: which colour a sentence names (8 classes), trained on English and
                  German, tested on Russian and Chinese; same: does a Latin-script and a
                  Cyrillic/Han sentence describe the same object (or one of another colour);
                  similarity: how many of colour, shape and position they share (0-3)
    vqa           a scene with "colour?" or "shape?" rendered above it; 10 human answers per
                  question, some wrong (annotator noise); the answer classifier trains on 64
                  questions
    fewshot       scenes classified by colour (8 classes), shape and position random

`zeroshot(model)` and `retrieval(model)` run a task and return its result; the *_task
functions build the data.
"""
from fractions import Fraction

import numpy as np
import torch

from clippo.data import builtin as B
from clippo.eval.data import GlueTask, ImageDataset

TASKS = ("zeroshot", "retrieval", "multilingual", "nlu", "vqa", "fewshot")
_SEEDS = {"zeroshot": 101, "retrieval": 102, "nlu": 104, "vqa": 105, "fewshot": 106,
          "pairs": 107}
ATTRIBUTES = {"colour": list(B.COLORS), "shape": list(B.SHAPES), "position": list(B.POSITIONS)}


def _size(image_size):
    return int(image_size if isinstance(image_size, int) else image_size[0])


def _model_size(model, image_size):
    return _size(image_size if image_size is not None else model.img.image_size)


def _scene(color, shape, position, rng, image_size):
    return torch.from_numpy(B.draw_scene(color, shape, position, rng, _size(image_size))) \
        .permute(2, 0, 1).contiguous()


def _random_object(rng):
    return (list(B.COLORS)[int(rng.integers(len(B.COLORS)))],
            B.SHAPES[int(rng.integers(len(B.SHAPES)))],
            B.POSITIONS[int(rng.integers(len(B.POSITIONS)))])


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


# -- zero-shot -------------------------------------------------------------------------------

_PARTS = B.HELDOUT_PARTS + ("heldout",)


def _image_pairs(part):
    """The held-out pairs whose images a task scores: "val", "test" or "heldout" (all 16)."""
    return B.combos("heldout") if part == "heldout" else B.heldout_part(part)


def zeroshot_task(image_size=64, num_samples=256, seed=_SEEDS["zeroshot"], part="test",
                  classes="heldout"):
    """(ImageDataset, class names, {class name: prompts}): images of the held-out pairs of
    `part` ("test", reported; "val", for choosing recipes; "heldout", both), balanced over its
    pairs, shapes random, classified among the `classes` colour x position classes ("heldout":
    the 16 held-out pairs; "all": all 72, where a bias towards the pairs seen in training
    shows)."""
    pairs, labels = _image_pairs(part), B.combos(classes)
    images, targets = [], []
    for i in range(num_samples):
        rng = np.random.default_rng([seed, _PARTS.index(part), i])
        color, position = pairs[i % len(pairs)]
        images.append(_scene(color, _pick(rng, B.SHAPES), position, rng, image_size))
        targets.append(labels.index((color, position)))
    names = [B.class_name(c, p) for c, p in labels]
    prompts = {B.class_name(c, p): B.class_prompts(c, p) for c, p in labels}
    return ImageDataset(images, targets, image_size), names, prompts


def reader_accuracy(queries, candidates, known):
    """Exact expected top-1 accuracy of a reader that knows only the attributes `known` of each
    query and picks uniformly among the candidates that agree with it on them.

    queries: [(attributes, indices of the right candidates)]; candidates: [attributes];
    attributes: {"colour": ..., "shape": ..., "position": ...} (a candidate without a key
    agrees with every value of it: a colour x position class says nothing of the shape).
    """
    total = Fraction(0)
    for attrs, right in queries:
        agree = [j for j, c in enumerate(candidates)
                 if all(c.get(a, attrs[a]) == attrs[a] for a in known)]
        total += Fraction(sum(j in right for j in agree), len(agree))
    return float(total / len(queries))


def single_attribute_readers(queries, candidates):
    """{attribute: reader_accuracy knowing only it, ..., "best": the highest}: the bar a
    composition claim has to clear (a model reading one attribute scores this much)."""
    out = {a: reader_accuracy(queries, candidates, (a,)) for a in ATTRIBUTES}
    out["best"] = max(out.values())
    return out


def _attrs(color, shape, position):
    return {"colour": color, "shape": shape, "position": position}


def zeroshot_baselines(num_samples=256, part="test", classes="heldout"):
    """single_attribute_readers for zeroshot_task's images (the reader sees the image's colour,
    shape or position) among its classes."""
    pairs, labels = _image_pairs(part), B.combos(classes)
    candidates = [{"colour": c, "position": p} for c, p in labels]
    queries = [({"colour": c, "position": p, "shape": None}, {labels.index((c, p))})
               for c, p in (pairs[i % len(pairs)] for i in range(num_samples))]
    return single_attribute_readers(queries, candidates)


def zeroshot(model, image_size=None, num_samples=256, part="test", classes="heldout", **kw):
    """Run the built-in zero-shot task: {"metrics", "num_classes", "chance", "baselines",
    "skipped"}; baselines: the single-attribute readers' top-1 accuracy."""
    from clippo.eval.zeroshot import evaluate_zeroshot
    ds, names, prompts = zeroshot_task(_model_size(model, image_size), num_samples, part=part,
                                       classes=classes)
    m = evaluate_zeroshot(model, ds, names, prompts, **kw)
    skipped = m.pop("skipped")
    n = len(names)
    return {"metrics": m, "num_classes": n, "skipped": len(skipped), "templates": "captions",
            "part": part, "chance": {"acc1": 1 / n, "acc5": min(5, n) / n,
                                     "mean_per_class_recall": 1 / n},
            "baselines": {"acc1": zeroshot_baselines(num_samples, part, classes)}}


# -- retrieval -------------------------------------------------------------------------------

def _gallery(image_size, seed):
    out = []
    for k, (color, position) in enumerate(B.combos("heldout")):
        for j, shape in enumerate(B.SHAPES):
            rng = np.random.default_rng([seed, k, j])
            out.append(((color, shape, position), _scene(color, shape, position, rng,
                                                         image_size)))
    return out


def retrieval_task(image_size=64, seed=_SEEDS["retrieval"]):
    """{"images": uint8 [96, 3, S, S], "texts": [each image's first caption], "captions":
    [[two English captions] per image], "objects": [(colour, shape, position)]}."""
    gallery = _gallery(image_size, seed)
    captions = [[B.caption(c, s, p), B.caption(c, s, p, article=False)]
                for (c, s, p), _ in gallery]
    return {"images": torch.stack([img for _, img in gallery]),
            "texts": [caps[0] for caps in captions], "captions": captions,
            "objects": [obj for obj, _ in gallery]}


def pair_galleries(image_size=64, galleries=8, seed=_SEEDS["pairs"]):
    """Small galleries of the held-out split, one image per held-out colour x position pair
    (16; shape, place and size random), each image with its English caption: a list of
    retrieval tasks as retrieval_task returns. Every image of a gallery differs from the others
    in colour or position, what the held-out split is about."""
    out = []
    for g in range(galleries):
        objects, images = [], []
        for k, (color, position) in enumerate(B.combos("heldout")):
            rng = np.random.default_rng([seed, g, k])
            shape = _pick(rng, B.SHAPES)
            objects.append((color, shape, position))
            images.append(_scene(color, shape, position, rng, image_size))
        captions = [[B.caption(*obj)] for obj in objects]
        out.append({"images": torch.stack(images), "texts": [c[0] for c in captions],
                    "captions": captions, "objects": objects})
    return out


def pair_retrieval(model, galleries=None, image_size=None, ks=(1, 5), part="test", **kw):
    """Retrieval in each of pair_galleries' galleries, the queries of `part`'s pairs scored
    (every held-out pair's image and caption compete), recalls averaged over the galleries:
    {"metrics", "num_images" (per gallery), "galleries", "chance", "baselines"}."""
    galleries = galleries or pair_galleries(_model_size(model, image_size))
    runs = [retrieval(model, task=t, ks=ks, part=part, **kw) for t in galleries]
    keys = [k for k in runs[0]["metrics"] if "recall@" in k]
    metrics = {k: float(np.mean([r["metrics"][k] for r in runs])) for k in keys}
    baselines = {k: {a: float(np.mean([r["baselines"][k][a] for r in runs]))
                     for a in runs[0]["baselines"][k]} for k in runs[0]["baselines"]}
    return {"metrics": metrics, "num_images": runs[0]["num_images"], "galleries": len(runs),
            "part": part, "chance": runs[0]["chance"], "baselines": baselines}


def query_indices(task, part="test"):
    """Indices of a retrieval task's images whose colour x position pair is in `part`."""
    pairs = set(_image_pairs(part))
    return [i for i, (c, _, p) in enumerate(task["objects"]) if (c, p) in pairs]


def retrieval_baselines(task, queries):
    """single_attribute_readers at R@1 both ways for a task's scored queries: text->image (a
    caption's one attribute against the gallery's images) and image->text. Multilingual
    captions ({language: [caption]}) count one per image: each language is scored alone."""
    objects = [_attrs(*o) for o in task["objects"]]
    n_caps = [len(c) if isinstance(c, list) else len(next(iter(c.values())))
              for c in task["captions"]]
    owner = [i for i, n in enumerate(n_caps) for _ in range(n)]
    text_queries = [(objects[i], {i}) for i in queries for _ in range(n_caps[i])]
    image_queries = [(objects[i], {j for j, o in enumerate(owner) if o == i}) for i in queries]
    out = {}
    for key, qs, candidates in (("image_retrieval_recall@1", text_queries, objects),
                                ("text_retrieval_recall@1", image_queries,
                                 [objects[o] for o in owner])):
        out[key] = single_attribute_readers(qs, candidates)
        # what reading colour and position but not the shape gives (the bar for shapes)
        out[key]["colour+position"] = reader_accuracy(qs, candidates, ("colour", "position"))
    return out


def multilingual_task(image_size=64, seed=_SEEDS["retrieval"], languages=B.LANGUAGES):
    """The retrieval gallery with {language: [caption]} per image."""
    gallery = _gallery(image_size, seed)
    return {"images": torch.stack([img for _, img in gallery]),
            "captions": [{lang: [B.caption(c, s, p, lang)] for lang in languages}
                         for (c, s, p), _ in gallery],
            "languages": list(languages), "objects": [obj for obj, _ in gallery]}


def retrieval_chance(num_images, captions_per_image, k):
    """Expected recall@k of random scores: (text->image, image->text)."""
    n_txt = num_images * captions_per_image
    t2i = min(k, num_images) / num_images
    # an image query misses when all k drawn captions are among the n_txt - c others
    miss = 1.0
    for j in range(min(k, n_txt)):
        miss *= max(n_txt - captions_per_image - j, 0) / (n_txt - j)
    return t2i, 1.0 - miss


def chance_table(num_images, per_image, ks):
    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"], out[f"text_retrieval_recall@{k}"] = \
            retrieval_chance(num_images, per_image, k)
    return out


def retrieval(model, task=None, image_size=None, ks=(1, 5, 10), part="test", **kw):
    """Run the built-in retrieval task (`task` from retrieval_task, or built at the model's
    size), the queries of `part`'s held-out pairs scored against the whole gallery:
    {"metrics", "num_images", "num_texts", "chance", "baselines", "skipped"}."""
    from clippo.eval.retrieval import CaptionedImages, evaluate_retrieval
    task = task or retrieval_task(_model_size(model, image_size))
    ds = CaptionedImages(zip(task["images"], task["captions"]), task["images"].shape[-2:])
    queries = query_indices(task, part)
    m = evaluate_retrieval(model, ds, ks=ks, queries=queries, **kw)
    skipped = m.pop("skipped")
    return {"metrics": m, "num_images": m["num_images"], "num_texts": m["num_texts"],
            "skipped": len(skipped), "part": part,
            "chance": chance_table(len(ds), len(task["captions"][0]), ks),
            "baselines": retrieval_baselines(task, queries)}


def multilingual(model, task=None, image_size=None, ks=(1, 5, 10), part="test", **kw):
    """Run the built-in multilingual retrieval task (queries of `part`, as retrieval)."""
    from clippo.eval.retrieval import CaptionedImages, evaluate_multilingual_retrieval
    task = task or multilingual_task(_model_size(model, image_size))
    ds = CaptionedImages(zip(task["images"], task["captions"]), task["images"].shape[-2:])
    queries = query_indices(task, part)
    m = evaluate_multilingual_retrieval(model, ds, task["languages"], ks=ks, queries=queries,
                                        **kw)
    skipped = m.pop("skipped")
    return {"metrics": m, "num_images": m["num_images"], "skipped": len(skipped), "part": part,
            "chance": chance_table(len(ds), 1, ks),
            "baselines": retrieval_baselines(task, queries)}


# -- NLU -------------------------------------------------------------------------------------

NLU_TASKS = {
    "colour": GlueTask("colour", "a", None, "label", list(B.COLORS),
                       metrics=("accuracy", "matthews_corrcoef")),
    "same": GlueTask("same", "a", "b", "label", ["0", "1"], metrics=("accuracy", "f1")),
    "similarity": GlueTask("similarity", "a", "b", "label", None,
                           metrics=("pearson", "spearmanr")),
}
NLU_CHANCE = {"colour": {"accuracy": 1 / len(B.COLORS), "matthews_corrcoef": 0.0},
              "same": {"accuracy": 0.5, "f1": 0.5},
              "similarity": {"pearson": 0.0, "spearmanr": 0.0}}
# Latin-script languages on one side, Cyrillic and Han on the other: a classifier trained on
# one script must transfer to the other, which takes the meaning of the words, not their
# glyphs (a random encoder's features carry the glyphs only).
LATIN, OTHER = ("en", "de"), ("ru", "zh")


def nlu_tasks(num_train=512, num_test=256, seed=_SEEDS["nlu"]):
    """{task: (GlueTask, train (texts_a, texts_b, targets), test (...))}.

    colour: train sentences in English / German, test sentences in Russian / Chinese
    (cross-lingual transfer). same: the first sentence in English or German, the second in
    Russian or Chinese; half the pairs describe the same object (colour, shape and position),
    the other half the same shape at the same position in another colour. similarity: how
    many of colour, shape and position two such sentences share.
    """
    out = {}
    for t, name in enumerate(NLU_TASKS):
        splits = []
        for s, n in enumerate((num_train, num_test)):
            a, b, y = [], [], []
            for i in range(n):
                rng = np.random.default_rng([seed, t, s, i])
                obj = _random_object(rng)
                if name == "colour":
                    a.append(B.caption(*obj, _pick(rng, LATIN if s == 0 else OTHER)))
                    y.append(list(B.COLORS).index(obj[0]))
                    continue
                if name == "same":
                    same = i % 2 == 0
                    # the other object differs in colour only: shape and position words, and
                    # so the sentences' lengths, tell nothing
                    other = obj if same else (
                        _pick(rng, [c for c in B.COLORS if c != obj[0]]), obj[1], obj[2])
                    y.append(int(same))
                else:
                    other = tuple(obj[j] if rng.random() < 0.5 else _random_object(rng)[j]
                                  for j in range(3))
                    y.append(float(sum(o == p for o, p in zip(obj, other))))
                a.append(B.caption(*obj, _pick(rng, LATIN)))
                b.append(B.caption(*other, _pick(rng, OTHER)))
            splits.append((a, b if name != "colour" else None, y))
        out[name] = (NLU_TASKS[name], splits[0], splits[1])
    return out


# -- VQA -------------------------------------------------------------------------------------

VQA_QUESTIONS = {"colour": "colour?", "shape": "shape?"}
VQA_NOISE = 0.15  # chance that an annotator answers some other value of the same kind


def vqa_task(image_size=64, num_train=64, num_test=256, seed=_SEEDS["vqa"], num_humans=10):
    """(train records, test records): {"question_id", "image" (uint8 tensor), "question",
    "answers" (num_humans strings), "kind"}; scenes of every combination, the kinds of
    question in turn. The answer classifier sees few training questions (4 to 5 per
    answer), so it has to find the answer in the frozen features rather than learn to see
    from the pixels."""
    kinds = list(VQA_QUESTIONS)
    splits = []
    for s, n in enumerate((num_train, num_test)):
        records = []
        for i in range(n):
            rng = np.random.default_rng([seed, s, i])
            obj = _random_object(rng)
            kind = kinds[i % len(kinds)]
            truth = obj[kinds.index(kind)]
            wrong = [v for v in ATTRIBUTES[kind] if v != truth]
            answers = [_pick(rng, wrong) if rng.random() < VQA_NOISE else truth
                       for _ in range(num_humans)]
            records.append({"question_id": s * 1_000_000 + i,
                            "image": _scene(*obj, rng, image_size),
                            "question": VQA_QUESTIONS[kind], "answers": answers, "kind": kind})
        splits.append(records)
    return splits[0], splits[1]


def vqa_chance(records):
    """Expected VQA accuracy of answering uniformly among the values of the question's kind
    (the blind baseline that knows only what kind of answer is asked for)."""
    from clippo.eval.metrics import vqa_accuracy
    return float(np.mean([np.mean([vqa_accuracy(v, r["answers"])
                                   for v in ATTRIBUTES[r["kind"]]]) for r in records]))


# -- few-shot --------------------------------------------------------------------------------

def fewshot_task(image_size=64, per_class=25, num_test=240, seed=_SEEDS["fewshot"],
                 attribute="colour"):
    """(train ImageDataset with `per_class` images per class, test ImageDataset, class names):
    scenes classified by `attribute` ("position", "colour" or "shape"), the others random."""
    values = ATTRIBUTES[attribute]
    slot = list(ATTRIBUTES).index(attribute)

    def make(n, split):
        images, targets = [], []
        for i in range(n):
            rng = np.random.default_rng([seed, split, i])
            obj = list(_random_object(rng))
            k = i % len(values)  # balanced classes
            obj[slot] = values[k]
            images.append(_scene(*obj, rng, image_size))
            targets.append(k)
        return ImageDataset(images, targets, image_size)
    return make(per_class * len(values), 0), make(num_test, 1), list(values)
