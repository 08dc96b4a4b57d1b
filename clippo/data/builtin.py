"""Built-in data: procedurally drawn scenes with captions in four languages, no download.

A scene is one coloured shape at one position on a noisy grey background. Captions name the
colour, the shape and the position, in English, German, Russian or Chinese (Latin, Cyrillic
and Han script), so a model trained on them has to read rendered text in several scripts:

    "a red circle on the left" | "ein Kreis in Rot links" | "красный круг слева" | "左边的红色圆形"

The colour x position combinations are split: `combos("heldout")` (two positions per colour)
never appear in `split="train"`, so zero-shot classification and retrieval on the held-out
split measure whether the model composes what it read, not whether it memorised pairs.
(Colour and position are the split's attributes because a small ViT with 16-px patches
learns them in minutes on a CPU; the shapes, finer than a patch, take it far longer.)

Everything is a pure function of (seed, split, index): item i of a dataset is the same in every
process, worker and run.
"""
import numpy as np
import torch

COLORS = {  # name -> RGB
    "red": (215, 35, 35),
    "green": (35, 160, 55),
    "blue": (40, 75, 215),
    "yellow": (235, 210, 35),
    "purple": (135, 45, 175),
    "orange": (240, 135, 25),
    "white": (250, 250, 250),
    "black": (12, 12, 12),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
# A 3 x 3 grid, row-major: (row, column) of POSITIONS[k] is divmod(k, 3).
POSITIONS = ("top left", "top", "top right", "left", "middle", "right", "bottom left", "bottom",
             "bottom right")
LANGUAGES = ("en", "de", "ru", "zh")
# The languages' shares of the training captions: English half of them, as in web-scale data
# (a small model reads one language's words sooner; it carries what it learns to the others).
LANGUAGE_MIX = {"en": 0.5, "de": 1 / 6, "ru": 1 / 6, "zh": 1 / 6}
SPLITS = ("train", "heldout", "all")
# Object radius and the jitter of its centre around its grid cell's, as fractions of the side.
RADIUS = (0.09, 0.13)
JITTER = 0.04
# Background grey levels: near the text renders' 127, so that a plain patch embeds to about
# zero and the position embedding is not drowned by a per-image brightness offset.
BACKGROUND = (112, 143)
ROTATION = 0.35  # radians, either way

# Words per language. German nouns are all neuter or masculine ("ein"); Russian colour
# adjectives agree with the shape's gender.
_WORDS = {
    "en": {
        "color": {c: c for c in COLORS},
        "shape": {s: s for s in SHAPES},
        "position": {"top left": "at the top left", "top": "at the top",
                     "top right": "at the top right", "left": "on the left",
                     "middle": "in the middle", "right": "on the right",
                     "bottom left": "at the bottom left", "bottom": "at the bottom",
                     "bottom right": "at the bottom right"},
    },
    "de": {
        "color": {"red": "Rot", "green": "Grün", "blue": "Blau", "yellow": "Gelb",
                  "purple": "Lila", "orange": "Orange", "white": "Weiß", "black": "Schwarz"},
        "shape": {"circle": "Kreis", "square": "Quadrat", "triangle": "Dreieck",
                  "star": "Stern", "cross": "Kreuz", "ring": "Ring"},
        "position": {"top left": "oben links", "top": "oben", "top right": "oben rechts",
                     "left": "links", "middle": "in der Mitte", "right": "rechts",
                     "bottom left": "unten links", "bottom": "unten",
                     "bottom right": "unten rechts"},
    },
    "ru": {
        # adjective stems: + "ый"/"ий" (masculine), "ая"/"яя" (feminine), "ое"/"ее" (neuter)
        "color": {"red": ("красн", "ый", "ая", "ое"), "green": ("зелён", "ый", "ая", "ое"),
                  "blue": ("син", "ий", "яя", "ее"), "yellow": ("жёлт", "ый", "ая", "ое"),
                  "purple": ("фиолетов", "ый", "ая", "ое"),
                  "orange": ("оранжев", "ый", "ая", "ое"), "white": ("бел", "ый", "ая", "ое"),
                  "black": ("чёрн", "ый", "ая", "ое")},
        "shape": {"circle": "круг", "square": "квадрат", "triangle": "треугольник",
                  "star": "звезда", "cross": "крест", "ring": "кольцо"},
        "gender": {"circle": 1, "square": 1, "triangle": 1, "star": 2, "cross": 1, "ring": 3},
        "position": {"top left": "сверху слева", "top": "сверху", "top right": "сверху справа",
                     "left": "слева", "middle": "в центре", "right": "справа",
                     "bottom left": "снизу слева", "bottom": "снизу",
                     "bottom right": "снизу справа"},
    },
    "zh": {
        "color": {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色",
                  "purple": "紫色", "orange": "橙色", "white": "白色", "black": "黑色"},
        "shape": {"circle": "圆形", "square": "正方形", "triangle": "三角形", "star": "星形",
                  "cross": "十字", "ring": "圆环"},
        "position": {"top left": "左上角的", "top": "上面的", "top right": "右上角的",
                     "left": "左边的", "middle": "中间的", "right": "右边的",
                     "bottom left": "左下角的", "bottom": "下面的", "bottom right": "右下角的"},
    },
}


def _check(kind, value, allowed):
    if value not in allowed:
        raise ValueError(f"unknown {kind} {value!r}; expected one of {tuple(allowed)}")
    return value


def combos(split="all"):
    """(color, position) pairs of a split, in a fixed order: "heldout" holds two positions per
    colour (16 pairs; every position once or twice, so neither attribute alone names a held-out
    pair), "train" the other 56 (each colour at seven positions), "all" the 72. The shape is
    drawn independently of the split."""
    _check("split", split, SPLITS)
    n = len(POSITIONS)
    heldout = {(c, POSITIONS[k % n]) for i, c in enumerate(COLORS) for k in (2 * i, 2 * i + 5)}
    pairs = [(c, p) for c in COLORS for p in POSITIONS]
    if split == "heldout":
        return [p for p in pairs if p in heldout]
    if split == "train":
        return [p for p in pairs if p not in heldout]
    return pairs


HELDOUT_PARTS = ("val", "test")


def heldout_part(part):
    """Half of the held-out pairs, one per colour: "val" (colour i at position 2i mod 9), for
    choosing recipes, and "test" (colour i at position 2i + 5 mod 9), for the figures reported.
    Each half holds every colour once and eight different positions, so neither attribute
    alone names a pair among the 16 held-out classes, which the evaluation classifies among."""
    _check("held-out part", part, HELDOUT_PARTS)
    n, shift = len(POSITIONS), HELDOUT_PARTS.index(part) * 5
    return [(c, POSITIONS[(2 * i + shift) % n]) for i, c in enumerate(COLORS)]


def class_name(color, position):
    """A (color, position) class's short English name: "red left"."""
    return f"{_check('colour', color, COLORS)} {_check('position', position, POSITIONS)}"


def class_prompts(color, position, lang="en"):
    """Captions for a (color, position) class, one per shape: averaged, their embeddings make
    the zero-shot classifier (the reference's prompt ensembling, with shapes as templates)."""
    return [caption(color, shape, position, lang) for shape in SHAPES]


def caption(color, shape, position=None, lang="en", article=True):
    """A caption naming colour, shape and optionally position, in `lang`."""
    w = _WORDS[_check("language", lang, LANGUAGES)]
    c = w["color"][_check("colour", color, COLORS)]
    s = w["shape"][_check("shape", shape, SHAPES)]
    if lang == "ru":
        c = c[0] + c[w["gender"][shape]]
    p = None if position is None else w["position"][_check("position", position, POSITIONS)]
    if lang == "en":
        text = (f"an {c} {s}" if c[0] in "aeiou" else f"a {c} {s}") if article else f"{c} {s}"
        return text if p is None else f"{text} {p}"
    if lang == "de":
        text = f"ein {s} in {c}" if article else f"{s} in {c}"
        return text if p is None else f"{text} {p}"
    if lang == "ru":
        text = f"{c} {s}"
        return text if p is None else f"{text} {p}"
    return f"{c}{s}" if p is None else f"{p}{c}{s}"


def language_mix(languages):
    """(languages, weights summing to 1) from a {language: weight} dict or a sequence of
    languages (equal weights); ValueError for an unknown language or unusable weights."""
    if isinstance(languages, str):
        languages = [languages]
    if not isinstance(languages, dict):
        languages = {lang: 1.0 for lang in languages}
    if not languages:
        raise ValueError("languages must name at least one language")
    names = tuple(_check("language", lang, LANGUAGES) for lang in languages)
    weights = np.array([float(w) for w in languages.values()])
    if not np.all(np.isfinite(weights)) or (weights < 0).any():
        raise ValueError(f"language weights must be finite and >= 0, got {languages}")
    if weights.sum() <= 0:
        raise ValueError(f"no language with a positive weight in {languages}")
    return names, tuple(weights / weights.sum())


def _polygon(cx, cy, radii, angles):
    return [(cx + r * np.cos(a), cy + r * np.sin(a)) for r, a in zip(radii, angles)]


def draw_scene(color, shape, position, rng, image_size=64):
    """uint8 [S, S, 3]: the shape in the colour at the position, on a noisy grey background.

    Size, exact place, rotation, colour tint and background come from `rng` (a numpy Generator).
    """
    from PIL import Image, ImageDraw  # Pillow draws the polygons; imported only when used

    _check("colour", color, COLORS)
    _check("shape", shape, SHAPES)
    _check("position", position, POSITIONS)
    S = int(image_size)
    if S < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size}")
    grey = int(rng.integers(*BACKGROUND))
    img = Image.new("RGB", (S, S), (grey, grey, grey))
    draw = ImageDraw.Draw(img)
    row, col = divmod(POSITIONS.index(position), 3)
    cx = ((col + 0.5) / 3 + rng.uniform(-JITTER, JITTER)) * S
    cy = ((row + 0.5) / 3 + rng.uniform(-JITTER, JITTER)) * S
    r = rng.uniform(*RADIUS) * S
    rot = rng.uniform(-ROTATION, ROTATION)
    fill = tuple(int(np.clip(v + rng.integers(-18, 19), 0, 255)) for v in COLORS[color])
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        h = r * 0.5
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=(grey, grey, grey))
    elif shape == "square":
        a = rot + np.pi / 4 + np.arange(4) * np.pi / 2
        draw.polygon(_polygon(cx, cy, [r * 1.15] * 4, a), fill=fill)
    elif shape == "triangle":
        a = rot - np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        draw.polygon(_polygon(cx, cy + 0.15 * r, [r * 1.2] * 3, a), fill=fill)
    elif shape == "star":
        a = rot - np.pi / 2 + np.arange(10) * np.pi / 5
        draw.polygon(_polygon(cx, cy, [r * 1.15, r * 0.48] * 5, a), fill=fill)
    else:  # cross: a plus sign, twelve corners
        t = 0.36
        pts = [(t, 1), (t, t), (1, t), (1, -t), (t, -t), (t, -1), (-t, -1), (-t, -t), (-1, -t),
               (-1, t), (-t, t), (-t, 1)]
        c, s = np.cos(rot), np.sin(rot)
        draw.polygon([(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts],
                     fill=fill)
    out = np.asarray(img, dtype=np.int16)
    out = out + rng.normal(0, 6, size=(S, S, 1)).astype(np.int16)  # same noise on R, G, B
    return np.clip(out, 0, 255).astype(np.uint8)


class BuiltinImageText(torch.utils.data.Dataset):
    """Scenes and captions: item i -> (uint8 tensor [3, S, S], caption str).

    split: "train" (training combinations), "heldout" (the combinations never trained on) or
    "all". languages: a {language: weight} mix (default LANGUAGE_MIX) or a sequence of
    languages drawn equally often. position_prob: the chance that a caption also names the
    position. Each item draws its combination, shape and language from a generator seeded by
    (seed, split, i).
    """

    def __init__(self, split="train", num_samples=10000, image_size=64, seed=0,
                 languages=None, position_prob=1.0):
        self.split = _check("split", split, SPLITS)
        if int(num_samples) < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        self.num_samples = int(num_samples)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.languages, self.language_weights = language_mix(
            LANGUAGE_MIX if languages is None else languages)
        self.position_prob = float(position_prob)
        self.combos = combos(split)

    def __len__(self):
        return self.num_samples

    def _rng(self, i):
        return np.random.default_rng([self.seed, SPLITS.index(self.split), i])

    def meta(self, i):
        """The item's attributes: color, shape, position, lang, named (position in caption)."""
        if not 0 <= i < self.num_samples:
            raise IndexError(f"index {i} out of range for {self.num_samples} samples")
        rng = self._rng(i)
        color, position = self.combos[int(rng.integers(len(self.combos)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        lang = self.languages[int(rng.choice(len(self.languages), p=self.language_weights))]
        named = bool(rng.random() < self.position_prob)
        return dict(color=color, shape=shape, position=position, lang=lang, named=named,
                    rng=rng)

    def caption(self, i):
        m = self.meta(i)
        return caption(m["color"], m["shape"], m["position"] if m["named"] else None, m["lang"])

    def __getitem__(self, i):
        if i < 0:
            i += self.num_samples
        m = self.meta(i)
        image = draw_scene(m["color"], m["shape"], m["position"], m["rng"], self.image_size)
        text = caption(m["color"], m["shape"], m["position"] if m["named"] else None, m["lang"])
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), text


class BuiltinTextPairs(torch.utils.data.Dataset):
    """Neighbouring sentences of short scene descriptions: item i -> (sentence, next sentence).

    The two sentences share the object they speak of, as neighbouring sentences in running
    text do, in one language per pair; for next-sentence contrastive co-training.
    """

    _TEMPLATES = {
        "en": ("there is a {c} {s}.", "the {s} is {p}."),
        "de": ("da ist ein {s} in {c}.", "der {s} ist {p}."),
        "ru": ("вот {c} {s}.", "{s} {p}."),
        "zh": ("这里有一个{c}{s}。", "{s}在{p}。"),
    }
    _PLAIN_POSITION = {"zh": {p: w[:-1] for p, w in _WORDS["zh"]["position"].items()}}

    def __init__(self, num_samples=10000, seed=0, languages=LANGUAGES):
        if int(num_samples) < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.languages = tuple(_check("language", lang, LANGUAGES) for lang in languages)
        if not self.languages:
            raise ValueError("languages must name at least one language")
        self.combos = combos("all")

    def __len__(self):
        return self.num_samples

    def __getitem__(self, i):
        if i < 0:
            i += self.num_samples
        if not 0 <= i < self.num_samples:
            raise IndexError(f"index {i} out of range for {self.num_samples} samples")
        rng = np.random.default_rng([self.seed, 7, i])
        color, position = self.combos[int(rng.integers(len(self.combos)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        lang = self.languages[int(rng.integers(len(self.languages)))]
        w = _WORDS[lang]
        first, second = self._TEMPLATES[lang]
        pos = self._PLAIN_POSITION.get(lang, w["position"])[position]
        c = w["color"][color]
        if lang == "ru":
            c = c[0] + c[w["gender"][shape]]
        kw = dict(c=c, s=w["shape"][shape], p=pos)
        if lang == "de":  # Kreis, Stern, Ring are masculine; the others neuter
            second = second if shape in ("circle", "star", "ring") else "das {s} ist {p}."
        return first.format(**kw), second.format(**kw)
