"""Tiny built-in versions of every task, drawn from clippo.data.builtin (no download).

Each is a pure function of its seed, so every run, test and results table sees the same data.

    zeroshot      images of the 16 held-out colour x shape combinations (never trained on),
                  classified among their 16 class names ("red circle"); templates "a {}"
    retrieval     one image per held-out combination x position (64), each with two English
                  captions naming colour, shape and position (unique in the gallery)
    multilingual  the same 64 images with one caption per language (en, de, ru, zh)
    nlu           colour: which colour a sentence names (8 classes), trained on English and
                  German, tested on Russian and Chinese; same: does a Latin-script and a
                  Cyrillic/Han sentence describe the same object; similarity: how many of
                  colour, shape, position they share (0-3, regression)
    vqa           a scene with "colour?" or "shape?" rendered above it; 10 human answers per
                  question, a few of them wrong (annotator noise); the answer classifier
                  trains on 64 questions
    fewshot       scenes classified by colour (8 classes), shape and position random
"""
import numpy as np
import torch

from clippo.data import builtin as B
from clippo.eval.data import GlueTask, ImageDataset
from clippo.eval.retrieval import CaptionedImages

TASKS = ("zeroshot", "retrieval", "multilingual", "nlu", "vqa", "fewshot")
ZEROSHOT_TEMPLATES = ("a {}",)
_SEEDS = {"zeroshot": 101, "retrieval": 102, "multilingual": 102, "nlu": 104, "vqa": 105,
          "fewshot": 106}


def _size(image_size):
    return image_size if isinstance(image_size, int) else int(image_size[0])


def _scene(color, shape, position, rng, image_size):
    return torch.from_numpy(B.draw_scene(color, shape, position, rng, _size(image_size))) \
        .permute(2, 0, 1).contiguous()


def zeroshot(image_size=64, num_samples=256, seed=_SEEDS["zeroshot"]):
    """(ImageDataset, class names, templates): held-out combinations, balanced over classes."""
    combos = B.combos("heldout")
    images, targets = [], []
    for i in range(num_samples):
        rng = np.random.default_rng([seed, i])
        k = i % len(combos)
        position = B.POSITIONS[int(rng.integers(len(B.POSITIONS)))]
        images.append(_scene(*combos[k], position, rng, image_size))
        targets.append(k)
    classnames = [B.class_name(c, s) for c, s in combos]
    return ImageDataset(images, targets, image_size), classnames, list(ZEROSHOT_TEMPLATES)


def _gallery(image_size, seed):
    items = []
    for k, (color, shape) in enumerate(B.combos("heldout")):
        for j, position in enumerate(B.POSITIONS):
            rng = np.random.default_rng([seed, k, j])
            items.append((color, shape, position, _scene(color, shape, position, rng,
                                                         image_size)))
    return items


def retrieval(image_size=64, seed=_SEEDS["retrieval"]):
    """CaptionedImages: 64 held-out scenes, two English captions each."""
    pairs = [(img, [B.caption(c, s, p), B.caption(c, s, p, article=False)])
             for c, s, p, img in _gallery(image_size, seed)]
    return CaptionedImages(pairs, image_size)


def multilingual(image_size=64, seed=_SEEDS["multilingual"], languages=B.LANGUAGES):
    """(CaptionedImages with {language: [caption]}, languages): the retrieval gallery."""
    pairs = [(img, {lang: [B.caption(c, s, p, lang)] for lang in languages})
             for c, s, p, img in _gallery(image_size, seed)]
    return CaptionedImages(pairs, image_size), list(languages)


def retrieval_chance(num_images, captions_per_image, k):
    """Expected recall@k of random scores: (text->image, image->text)."""
    n_txt = num_images * captions_per_image
    t2i = min(k, num_images) / num_images
    # an image query misses when all k drawn captions are among the n_txt - c others
    miss = 1.0
    for j in range(min(k, n_txt)):
        miss *= max(n_txt - captions_per_image - j, 0) / (n_txt - j)
    return t2i, 1.0 - miss


# -- NLU ---------------------------------------------------------------------------------------

NLU_TASKS = {
    "colour": GlueTask("colour", "a", None, "label", list(B.COLORS),
                       metrics=("accuracy", "matthews_corrcoef")),
    "same": GlueTask("same", "a", "b", "label", ["0", "1"], metrics=("accuracy", "f1")),
    "similarity": GlueTask("similarity", "a", "b", "label", None,
                           metrics=("pearson", "spearmanr")),
}
# Latin-script languages on one side, Cyrillic and Han on the other: a classifier trained on
# one script must transfer to the other, which takes the meaning of the words, not their
# glyphs (a random encoder's features carry the glyphs only).
LATIN, OTHER = ("en", "de"), ("ru", "zh")


def _random_object(rng):
    return (list(B.COLORS)[int(rng.integers(len(B.COLORS)))],
            B.SHAPES[int(rng.integers(len(B.SHAPES)))],
            B.POSITIONS[int(rng.integers(len(B.POSITIONS)))])


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def nlu(num_train=512, num_test=256, seed=_SEEDS["nlu"]):
    """{task: (GlueTask, train (texts_a, texts_b, targets), test (...))}.

    colour: train sentences in English / German, test sentences in Russian / Chinese
    (cross-lingual transfer); same, similarity: the first sentence in English or German, the
    second in Russian or Chinese. Captions name the position half of the time.
    """
    def sentence(rng, obj, langs):
        position = obj[2] if rng.random() < 0.5 else None
        return B.caption(obj[0], obj[1], position, _pick(rng, langs))

    out = {}
    for t, name in enumerate(NLU_TASKS):
        splits = []
        for s, n in enumerate((num_train, num_test)):
            a, b, y = [], [], []
            for i in range(n):
                rng = np.random.default_rng([seed, t, s, i])
                obj = _random_object(rng)
                if name == "colour":
                    a.append(sentence(rng, obj, LATIN if s == 0 else OTHER))
                    y.append(list(B.COLORS).index(obj[0]))
                    continue
                if name == "same":  # the same colour and shape, or another object
                    same = i % 2 == 0
                    other = obj if same else _random_object(rng)
                    while not same and other[:2] == obj[:2]:
                        other = _random_object(rng)
                    y.append(int(same))
                else:  # similarity: how many of colour, shape, position are shared
                    other = tuple(obj[j] if rng.random() < 0.5 else _random_object(rng)[j]
                                  for j in range(3))
                    y.append(float(sum(o == p for o, p in zip(obj, other))))
                    a.append(B.caption(*obj, _pick(rng, LATIN)))
                    b.append(B.caption(*other, _pick(rng, OTHER)))
                    continue
                a.append(sentence(rng, obj, LATIN))
                b.append(sentence(rng, other, OTHER))
            splits.append((a, b if name != "colour" else None, y))
        out[name] = (NLU_TASKS[name], splits[0], splits[1])
    return out


# -- VQA ---------------------------------------------------------------------------------------

VQA_QUESTIONS = {"colour": "colour?", "shape": "shape?"}
VQA_NOISE = 0.15  # chance that an annotator answers some other value of the same kind


def vqa(image_size=64, num_train=64, num_test=256, seed=_SEEDS["vqa"], num_humans=10):
    """(train records, test records): {"question_id", "image" (uint8 tensor), "question",
    "answers" (num_humans strings), "kind"}; scenes of every combination. The answer
    classifier sees few training questions (4 per colour, about 5 per shape), so it has to
    find the answer in the frozen features rather than learn to see from the pixels."""
    values = {"colour": list(B.COLORS), "shape": list(B.SHAPES), "position": list(B.POSITIONS)}
    kinds = list(VQA_QUESTIONS)
    splits = []
    for s, n in enumerate((num_train, num_test)):
        records = []
        for i in range(n):
            rng = np.random.default_rng([seed, s, i])
            obj = _random_object(rng)
            kind = kinds[i % len(kinds)]
            truth = obj[kinds.index(kind)]
            answers = []
            for _ in range(num_humans):
                if rng.random() < VQA_NOISE:
                    wrong = [v for v in values[kind] if v != truth]
                    answers.append(wrong[int(rng.integers(len(wrong)))])
                else:
                    answers.append(truth)
            records.append({"question_id": s * 1_000_000 + i,
                            "image": _scene(*obj, rng, image_size),
                            "question": VQA_QUESTIONS[kind], "answers": answers, "kind": kind})
        splits.append(records)
    return splits[0], splits[1]


def vqa_chance(records):
    """Expected VQA accuracy of answering uniformly among the values of the question's kind
    (the blind baseline that knows only what kind of answer is asked for)."""
    from clippo.eval.metrics import vqa_accuracy
    values = {"colour": list(B.COLORS), "shape": list(B.SHAPES), "position": list(B.POSITIONS)}
    return float(np.mean([np.mean([vqa_accuracy(v, r["answers"]) for v in values[r["kind"]]])
                          for r in records]))


# -- few-shot ----------------------------------------------------------------------------------

def fewshot(image_size=64, per_class=25, num_test=240, seed=_SEEDS["fewshot"],
            attribute="colour"):
    """(train ImageDataset with `per_class` images per class, test ImageDataset, class names):
    scenes classified by `attribute` ("colour", "shape" or "position"), the other two
    random."""
    values = {"colour": list(B.COLORS), "shape": list(B.SHAPES),
              "position": list(B.POSITIONS)}[attribute]
    slot = ("colour", "shape", "position").index(attribute)

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
    return make(per_class * len(values), 0), make(num_test, 1), values
