"""Readers for evaluation data on the user's disk, and the batching shared by every task.

Formats: ImageFolder directories, OpenCLIP-style CSV/TSV, Karpathy-split JSON (COCO,
Flickr30k), Crossmodal-3600 JSONL, GLUE TSV and VQAv2 JSON. A malformed file raises
`DataFormatError` naming the file and line; an image that cannot be read or decoded is
skipped and counted (never fatal).

Datasets here yield `(image, target, index)`: image a uint8 tensor [3, S, S] (resized to the
model's input size, as the reference's `resize(S)`: no crop, aspect not kept) or None when the
file could not be decoded; `collate` drops those and counts them.
"""
import csv
import json
import os
from pathlib import Path

import numpy as np
import torch

from clippo.data.textfiles import DataFormatError, csv_rows, need_columns, read_text_lines

_csv_rows, _need_columns = csv_rows, need_columns  # the names this module's readers use

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
                    ".gif")


# -- images ------------------------------------------------------------------------------------

def _transform(image_size):
    from clippo.data.transforms import ImageTransform
    return ImageTransform(image_size if isinstance(image_size, int) else tuple(image_size))


def load_image(path, image_size):
    """uint8 [3, S, S] from an image file, or None when it cannot be read or decoded: the
    training pipeline's decode and resize (clippo.data.transforms), so a JPEG gives the same
    pixels in training and evaluation."""
    from clippo.data.transforms import load_and_transform
    return load_and_transform(path, _transform(image_size))


def as_image(image, image_size):
    """A dataset's image (path, uint8 tensor [3,S,S] or [S,S,3] array, PIL image) -> uint8
    [3, S, S] at the model's size, or None if it cannot be decoded."""
    if image is None:
        return None
    if isinstance(image, (str, os.PathLike)):
        return load_image(image, image_size)
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image))
        if image.dim() == 3 and image.shape[-1] == 3:
            image = image.permute(2, 0, 1)
    if not isinstance(image, torch.Tensor):  # a PIL image: resized as a decoded file is
        from PIL import Image
        if not isinstance(image, Image.Image):
            raise TypeError(f"unsupported image type {type(image).__name__}")
        from clippo.data.transforms import opened_to_rgb
        transform = _transform(image_size)
        return transform(opened_to_rgb(image, transform.draft_size))
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if tuple(image.shape[-2:]) != size:
        image = resize_uint8(image, size)
    return image.contiguous()


def resize_uint8(image, size):
    """Bilinear resize of a uint8 [3, H, W] (or [B, 3, H, W]) tensor, rounded back to uint8."""
    batched = image.dim() == 4
    x = (image if batched else image[None]).float()
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False,
                                        antialias=True)
    x = x.round_().clamp_(0, 255).to(torch.uint8)
    return x if batched else x[0]


class ImageDataset(torch.utils.data.Dataset):
    """(image, target) pairs -> (uint8 [3,S,S] or None, target, index). images: paths, uint8
    tensors/arrays or PIL images. A worker only decodes; nothing is rendered here."""

    def __init__(self, images, targets, image_size):
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images for {len(targets)} targets")
        self.images, self.targets, self.image_size = list(images), list(targets), image_size

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return as_image(self.images[i], self.image_size), self.targets[i], i


def collate(items):
    """-> {"images": uint8 [B,3,S,S] or None, "targets": [...], "indices": [...],
    "skipped": [indices of undecodable images]}."""
    kept = [it for it in items if it[0] is not None]
    return {"images": torch.stack([it[0] for it in kept]) if kept else None,
            "targets": [it[1] for it in kept], "indices": [it[2] for it in kept],
            "skipped": [it[2] for it in items if it[0] is None]}


def loader(dataset, batch_size=64, num_workers=0):
    """A DataLoader in dataset order over `ImageDataset`-style items, batched by `collate`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                       num_workers=num_workers, collate_fn=collate,
                                       persistent_workers=False)


# -- text files ----------------------------------------------------------------------------------

def _starts_like_json(path):
    """A .json name, or a file whose first non-blank character opens a JSON object or list."""
    if str(path).lower().endswith(".json"):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {path}") from None
    return head[:1] in (b"{", b"[")


def read_json(path):
    """A whole JSON document; syntax errors name line and column."""
    text = _read_json_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _json_error(path, e) from None


# CLIP_benchmark looks a "tfds/NAME", "vtab/NAME" or "wds/NAME" dataset up under its full
# name, then under NAME
_DATASET_PREFIXES = ("tfds", "vtab", "wds")


def dataset_entry(path, doc, dataset, what):
    """The entry of `dataset` in a JSON object keyed by dataset name, as CLIP_benchmark's
    en_classnames.json, en_zeroshot_classification_templates.json and cupl_prompts.json."""
    names = ", ".join(sorted(doc))
    if not dataset:
        raise DataFormatError(path, None, f"{what} keyed by dataset name: choose one with "
                              f"--dataset NAME (one of: {names})")
    keys = [dataset]
    prefix, _, short = dataset.partition("/")
    if prefix in _DATASET_PREFIXES and short:
        keys.append(short)
    for key in keys:
        if key in doc:
            return doc[key]
    raise DataFormatError(path, None, f"no dataset {dataset!r} in its {what} (one of: "
                          f"{names})")


def read_classnames(path, dataset=None):
    """Class names: a text file with one per line (blank lines ignored), or JSON: a list of
    names, or CLIP_benchmark's {dataset name: [names]} (en_classnames.json) with `dataset`
    choosing the entry. A file that is JSON is never read as lines. Names may repeat, as in
    CLIP_benchmark's ImageNet list ("missile", "sunglasses"): a class is its index."""
    if _starts_like_json(path):
        doc = read_json(path)
        if isinstance(doc, dict):
            doc = dataset_entry(path, doc, dataset, "class names")
        if not isinstance(doc, list) or not all(isinstance(n, str) and n.strip() for n in doc):
            raise DataFormatError(path, None, "expected a list of class names (or "
                                  "{dataset name: [class names]})")
        names = [n.strip() for n in doc]
    else:
        names = [line.strip() for _, line in read_text_lines(path) if line.strip()]
    if not names:
        raise DataFormatError(path, None, "no class names")
    return names


def _resolve(root, name):
    p = Path(name)
    return p if p.is_absolute() else Path(root) / p


def read_image_folder(root):
    """ImageFolder layout root/<class>/**/<image>: (class names, [(path, label)]).

    Classes are the subfolders holding at least one image file, in sorted order; the class name
    is the folder name with underscores as spaces.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such directory: {root}")
    folders, samples = [], []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(str(Path(dirpath) / f) for dirpath, _, names in os.walk(d)
                       for f in names if f.lower().endswith(IMAGE_EXTENSIONS))
        if files:
            samples += [(f, len(folders)) for f in files]
            folders.append(d.name)
    if not folders:
        raise DataFormatError(root, None, "no class folders with images (ImageFolder layout: "
                              "DIR/<class>/<image>)")
    return [f.replace("_", " ") for f in folders], samples


def read_classification_csv(path, img_key="filepath", label_key="label", sep=None,
                            classnames=None, image_root=None):
    """OpenCLIP-style CSV: (class names, [(image path, label)]).

    The label column holds a class index into `classnames` or a class name; without
    `classnames` the classes are the sorted distinct labels. Relative image paths are taken
    from image_root (default: the CSV's folder).
    """
    root = Path(image_root) if image_root else Path(path).parent
    rows = list(_csv_rows(path, sep))
    if rows:
        _need_columns(path, rows[0][1].keys(), [img_key, label_key],
                      ["--csv-img-key", "--csv-label-key"])
    index = {n: i for i, n in enumerate(classnames)} if classnames else None
    repeated = {n for n in classnames if classnames.count(n) > 1} if classnames else set()
    labels_raw = []
    for lineno, row in rows:
        if not row[img_key].strip():
            raise DataFormatError(path, lineno, f"empty image path in column {img_key!r}")
        label = row[label_key].strip()
        if not label:
            raise DataFormatError(path, lineno, f"empty label in column {label_key!r}")
        labels_raw.append((lineno, label))
    if index is None:
        if labels_raw and all(lab.lstrip("-").isdigit() for _, lab in labels_raw):
            raise DataFormatError(path, labels_raw[0][0], "integer labels need the class names "
                                  "(--classnames FILE)")
        classnames = sorted({lab for _, lab in labels_raw})
        index = {n: i for i, n in enumerate(classnames)}
    samples = []
    for (lineno, row), (_, label) in zip(rows, labels_raw):
        if label in repeated:
            raise DataFormatError(path, lineno, f"label {label!r} names more than one class "
                                  f"of the class names: use class indices")
        if label in index:
            target = index[label]
        elif label.lstrip("-").isdigit() and 0 <= int(label) < len(classnames):
            target = int(label)
        else:
            raise DataFormatError(path, lineno, f"label {label!r} is neither a class name nor "
                                  f"an index below {len(classnames)}")
        samples.append((str(_resolve(root, row[img_key].strip())), target))
    if not samples:
        raise DataFormatError(path, None, "no rows")
    return list(classnames), samples


def read_retrieval_csv(path, img_key="filepath", caption_key="title", sep=None,
                       image_root=None):
    """CSV with one (image, caption) per row; rows of the same image are grouped:
    [(image path, [captions])] in order of first appearance."""
    root = Path(image_root) if image_root else Path(path).parent
    rows = list(_csv_rows(path, sep))
    if rows:
        _need_columns(path, rows[0][1].keys(), [img_key, caption_key],
                      ["--csv-img-key", "--csv-caption-key"])
    groups = {}
    for lineno, row in rows:
        image, caption = row[img_key].strip(), row[caption_key].strip()
        if not image:
            raise DataFormatError(path, lineno, f"empty image path in column {img_key!r}")
        if not caption:
            raise DataFormatError(path, lineno, f"empty caption in column {caption_key!r}")
        groups.setdefault(image, []).append(caption)
    if not groups:
        raise DataFormatError(path, None, "no rows")
    return [(str(_resolve(root, im)), caps) for im, caps in groups.items()]


# -- JSON ----------------------------------------------------------------------------------------

def _json_error(path, e):
    return DataFormatError(path, e.lineno, f"invalid JSON: {e.msg} (column {e.colno})")


_WS = " \t\r\n"


def _skip_ws(text, i):
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _expect(path, text, i, chars, what):
    """Index after the punctuation at text[i] (one of `chars`), or a DataFormatError naming
    line and column."""
    if i >= len(text) or text[i] not in chars:
        line = text.count("\n", 0, i) + 1
        column = i - text.rfind("\n", 0, i)
        found = repr(text[i]) if i < len(text) else "the end of the file"
        raise DataFormatError(path, line, f"invalid JSON: expected {what}, found {found} "
                              f"(column {column})")
    return i + 1


def _read_json_text(path):
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {path}") from None
    except UnicodeDecodeError as e:
        raise DataFormatError(path, None, f"not UTF-8 ({e.reason} at byte {e.start})") from None
    return text.lstrip("\ufeff")


def _array_items(path, text, i, dec):
    """[(line, element)] of the array starting at text[i] ('['), and the index after it."""
    i = _expect(path, text, _skip_ws(text, i), "[", "'['")
    items, line, pos = [], 1 + text.count("\n", 0, i), i
    i = _skip_ws(text, i)
    if i < len(text) and text[i] == "]":
        return items, i + 1
    while True:
        i = _skip_ws(text, i)
        line += text.count("\n", pos, i)
        pos = i
        value, i = dec.raw_decode(text, i)
        items.append((line, value))
        i = _skip_ws(text, i)
        if i < len(text) and text[i] == "]":
            return items, i + 1
        i = _expect(path, text, i, ",", "',' or ']'")


def json_arrays(path, keys):
    """(document, {key: [(line, element)]}) of a JSON object file, each element of the arrays
    at the top-level `keys` with the line it starts on (errors about an element can name its
    line); keys absent from the file are absent from the dict. The file is parsed once: the
    document's lists are the elements themselves, not a second copy. Syntax errors name line
    and column."""
    text = _read_json_text(path)
    dec = json.JSONDecoder()
    doc, arrays = {}, {}
    try:
        i = _skip_ws(text, 0)
        if i >= len(text) or text[i] != "{":
            raise DataFormatError(path, 1, f"expected a JSON object with a {keys[0]!r} list")
        i = _skip_ws(text, i + 1)
        if i < len(text) and text[i] == "}":
            i += 1
        else:
            while True:
                i = _skip_ws(text, i)
                name, i = dec.raw_decode(text, i)
                i = _skip_ws(text, _expect(path, text, _skip_ws(text, i), ":", "':'"))
                if name in keys and i < len(text) and text[i] == "[":
                    arrays[name], i = _array_items(path, text, i, dec)
                    doc[name] = [v for _, v in arrays[name]]
                else:
                    if name in keys:
                        raise DataFormatError(path, text.count("\n", 0, i) + 1,
                                              f"{name!r} must be a list")
                    doc[name], i = dec.raw_decode(text, i)
                i = _skip_ws(text, i)
                if i < len(text) and text[i] == "}":
                    i += 1
                    break
                i = _expect(path, text, i, ",", "',' or '}'")
        i = _skip_ws(text, i)
        if i < len(text):
            _expect(path, text, i, "", "the end of the file")
    except json.JSONDecodeError as e:
        raise _json_error(path, e) from None
    return doc, arrays


def json_array_items(path, key=None):
    """(document, [(line, element)]) of the array at top-level `key` of a JSON file (or of a
    top-level array when key is None), as json_arrays, parsed once."""
    if key is None:
        text = _read_json_text(path)
        try:
            items, i = _array_items(path, text, 0, json.JSONDecoder())
            i = _skip_ws(text, i)
            if i < len(text):
                _expect(path, text, i, "", "the end of the file")
        except json.JSONDecodeError as e:
            raise _json_error(path, e) from None
        return [v for _, v in items], items
    doc, arrays = json_arrays(path, (key,))
    if key not in arrays:
        raise DataFormatError(path, 1, f"expected a JSON object with a {key!r} list")
    return doc, arrays[key]


def _caption_text(path, line, value, what):
    if isinstance(value, dict):
        value = value.get("raw", value.get("caption"))
    if not isinstance(value, str) or not value.strip():
        raise DataFormatError(path, line, f"{what}: expected a non-empty caption string, "
                              f"got {value!r}")
    return value.strip()


def read_karpathy_json(path, split="test", image_root=None):
    """Karpathy-split JSON (dataset_coco.json, dataset_flickr30k.json):
    [(image path, [captions])] of the images in `split` ("all" for every image).

    An image's path is image_root/filepath/filename (filepath only in COCO's file); image_root
    defaults to the JSON's folder.
    """
    root = Path(image_root) if image_root else Path(path).parent
    _, items = json_array_items(path, "images")
    out = []
    for k, (line, entry) in enumerate(items):
        what = f"images[{k}]"
        if not isinstance(entry, dict):
            raise DataFormatError(path, line, f"{what} must be an object")
        if split != "all" and entry.get("split") != split:
            continue
        name = entry.get("filename")
        if not isinstance(name, str) or not name:
            raise DataFormatError(path, line, f"{what} has no 'filename'")
        sentences = entry.get("sentences")
        if not isinstance(sentences, list) or not sentences:
            raise DataFormatError(path, line, f"{what} has no 'sentences' list")
        captions = [_caption_text(path, line, s, f"{what}.sentences[{j}]")
                    for j, s in enumerate(sentences)]
        out.append((str(_resolve(root, Path(entry.get("filepath") or "") / name)), captions))
    if not out:
        splits = sorted({str(e.get("split")) for _, e in items if isinstance(e, dict)})
        raise DataFormatError(path, None, f"no images in split {split!r} (splits: {splits})")
    return out


IMAGE_KEYS = ("image", "image/key", "image_path", "filepath", "file_name")


def _is_metadata_key(key):
    """Keys that describe the image, not a language: the image keys and anything in the
    "image/" namespace (Crossmodal-3600's "image/locale", the language of the image's
    region)."""
    return key in IMAGE_KEYS or key.startswith("image/")


def read_xm3600(path, image_root=None, languages=None, image_ext=".jpg"):
    """Crossmodal-3600 captions.jsonl, one image per line, as the dataset ships it:
    {"image/key": "000411001ff7dd4f", "image/locale": "bn", "ar": {"caption": [...],
    "caption/tokenized": [...], "caption/tokenized/lowercase": [...]}, "bn": {...}, ...}.

    "image/key" names image_root/<key>.jpg (the official layout unpacks the images into
    images/ beside captions.jsonl; image_root defaults to the JSONL's folder); an "image" key
    gives a path instead. Every other key outside the "image/" namespace is a language; the raw
    "caption" list is used. A language's captions may also be a list of strings or one
    string. Returns ([(image path, {lang: [captions]})], languages); every image must have
    every language (the default: the languages of the first line, sorted).
    """
    root = Path(image_root) if image_root else Path(path).parent
    out, langs = [], list(languages) if languages else None
    for lineno, line in read_text_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(path, lineno, f"invalid JSON: {e.msg} (column {e.colno})") \
                from None
        if not isinstance(obj, dict):
            raise DataFormatError(path, lineno, "expected a JSON object per line")
        if "image/key" in obj:
            image = _resolve(root, str(obj["image/key"]) + image_ext)
        else:
            key = next((k for k in IMAGE_KEYS if k in obj), None)
            if key is None or not isinstance(obj[key], str) or not obj[key]:
                raise DataFormatError(path, lineno, f"no image (one of the keys {IMAGE_KEYS})")
            image = _resolve(root, obj[key])
        captions = {}
        for lang, value in obj.items():
            if _is_metadata_key(lang) or (langs is not None and lang not in langs):
                continue
            if isinstance(value, dict):
                value = value.get("caption")
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not value:
                raise DataFormatError(path, lineno, f"language {lang!r}: expected a caption "
                                      f"list, a string or {{\"caption\": [...]}}")
            captions[lang] = [_caption_text(path, lineno, c, f"language {lang!r}")
                              for c in value]
        if langs is None:
            langs = sorted(captions)
            if not langs:
                raise DataFormatError(path, lineno, "no captions")
        missing = [lang for lang in langs if lang not in captions]
        if missing:
            raise DataFormatError(path, lineno, f"no captions in {missing}")
        out.append((str(image), {lang: captions[lang] for lang in langs}))
    if not out:
        raise DataFormatError(path, None, "no images")
    return out, langs


# -- GLUE ----------------------------------------------------------------------------------------

class GlueTask:
    """Where a GLUE task's TSV keeps its text and label, and how it is scored."""

    def __init__(self, name, text_a, text_b, label, labels=None, header=True, metrics=("accuracy",),
                 dev=None):
        self.name, self.text_a, self.text_b, self.label = name, text_a, text_b, label
        self.labels = labels  # None: regression
        self.header, self.metrics = header, metrics
        # the labelled evaluation files, {result name: file}, as GLUE reports them
        self.dev = dev or {name: "dev.tsv"}

    @property
    def is_pair(self):
        return self.text_b is not None

    @property
    def is_regression(self):
        return self.labels is None


GLUE_TASKS = {
    # CoLA's train/dev files have no header: source, label, original label, sentence
    "cola": GlueTask("cola", 3, None, 1, ["0", "1"], header=False,
                     metrics=("matthews_corrcoef", "accuracy")),
    "sst2": GlueTask("sst2", "sentence", None, "label", ["0", "1"]),
    "mrpc": GlueTask("mrpc", "#1 String", "#2 String", "Quality", ["0", "1"],
                     metrics=("f1", "accuracy")),
    "qqp": GlueTask("qqp", "question1", "question2", "is_duplicate", ["0", "1"],
                    metrics=("f1", "accuracy")),
    "stsb": GlueTask("stsb", "sentence1", "sentence2", "score", None,
                     metrics=("pearson", "spearmanr")),
    # MNLI is reported on its matched and mismatched dev sets, from one trained model
    "mnli": GlueTask("mnli", "sentence1", "sentence2", "gold_label",
                     ["entailment", "neutral", "contradiction"],
                     dev={"mnli_m": "dev_matched.tsv", "mnli_mm": "dev_mismatched.tsv"}),
    "qnli": GlueTask("qnli", "question", "sentence", "label", ["entailment", "not_entailment"]),
    "rte": GlueTask("rte", "sentence1", "sentence2", "label", ["entailment", "not_entailment"]),
    "wnli": GlueTask("wnli", "sentence1", "sentence2", "label", ["0", "1"]),
}


def _no_labels_error(path, task, column):
    dev = " and ".join(task.dev.values())
    return DataFormatError(path, 1, f"no labels (no {column!r} column): a GLUE test split, "
                           f"whose labels GLUE keeps for its server. Score the labelled dev "
                           f"file instead: --test DATA/{next(iter(task.dev.values()))}"
                           + (f" (by default both {dev} are scored)" if len(task.dev) > 1
                              else " (the default)"))


def _check_glue_header(path, task, columns):
    """The header of a GLUE task's TSV: a test file (text columns, no label) gets its own
    message; a custom task's columns come from flags."""
    texts = [k for k in (task.text_a, task.text_b) if k is not None]
    if GLUE_TASKS.get(task.name) is not task:
        _need_columns(path, columns, texts + [task.label],
                      ["--text-a-key", "--text-b-key"][:len(texts)] + ["--label-key"])
        return
    missing = [k for k in texts if k not in columns]
    if missing:
        raise DataFormatError(path, 1, f"no column {missing[0]!r} in the header {columns}: "
                              f"not GLUE's {task.name} layout (another TSV: --task custom "
                              f"--text-a-key ... --label-key ...)")
    if task.label not in columns:
        raise _no_labels_error(path, task, task.label)


def glue_eval_files(task, data_dir, test=None):
    """{result name: TSV} a run scores: `test` alone (under the task's name) when given, else
    the task's labelled dev files in data_dir (MNLI: mnli_m and mnli_mm)."""
    if test:
        return {task.name: str(test)}
    return {name: str(Path(data_dir) / f) for name, f in task.dev.items()}


def read_glue_tsv(path, task):
    """GLUE TSV -> (texts_a, texts_b or None, targets): int class indices, or float scores for
    a regression task. Fields are tab-separated with no quoting, as GLUE's files. GLUE's test
    files (no label column) are refused with a message saying so."""
    if isinstance(task, str):
        if task not in GLUE_TASKS:
            raise ValueError(f"unknown GLUE task {task!r}; expected one of {sorted(GLUE_TASKS)}")
        task = GLUE_TASKS[task]
    texts_a, texts_b, targets = [], [], []
    first = True
    for lineno, row in _csv_rows(path, "\t", csv.QUOTE_NONE, header=task.header):
        if first and task.header:
            _check_glue_header(path, task, list(row.keys()))
        if first and not task.header and row[:2] == ["index", "sentence"]:
            raise _no_labels_error(path, task, "label")  # CoLA's test.tsv has this header
        first = False
        if not task.header:
            need = max(k for k in (task.text_a, task.text_b, task.label) if k is not None) + 1
            if len(row) < need:
                raise DataFormatError(path, lineno, f"{len(row)} fields, expected at least {need}")
        a = row[task.text_a]
        b = row[task.text_b] if task.is_pair else None
        if not a.strip() or (b is not None and not b.strip()):
            raise DataFormatError(path, lineno, "empty sentence")
        raw = row[task.label].strip()
        if task.is_regression:
            try:
                target = float(raw)
            except ValueError:
                raise DataFormatError(path, lineno, f"score {raw!r} is not a number") from None
            if not np.isfinite(target):
                raise DataFormatError(path, lineno, f"score {raw!r} is not finite")
        else:
            if raw not in task.labels:
                raise DataFormatError(path, lineno, f"label {raw!r} is not one of {task.labels}")
            target = task.labels.index(raw)
        texts_a.append(a)
        texts_b.append(b)
        targets.append(target)
    if not targets:
        raise DataFormatError(path, None, "no examples")
    return texts_a, (texts_b if task.is_pair else None), targets


# -- VQA -----------------------------------------------------------------------------------------

def read_vqa(questions_path, annotations_path=None, image_root=None, image_template=None):
    """VQAv2 JSON -> [{"question_id", "image", "question", "answers": [10 strings]}].

    questions_path: {"questions": [{"question_id", "image_id", "question"}], "data_subtype":
    "val2014", ...}; annotations_path: {"annotations": [{"question_id", "answers":
    [{"answer": ...}, ...]}]}. One file may hold both lists. An entry may name its image
    directly ("image": path); otherwise the file is image_root/image_template with the template
    formatted with image_id (default: COCO's "COCO_<data_subtype>_<image_id:012d>.jpg").
    """
    root = Path(image_root) if image_root else Path(questions_path).parent
    doc, arrays = json_arrays(questions_path, ("questions", "annotations"))
    if "questions" not in arrays:
        raise DataFormatError(questions_path, 1, "expected a JSON object with a 'questions' "
                              "list")
    questions = arrays["questions"]
    if image_template is None:
        subtype = doc.get("data_subtype") if isinstance(doc, dict) else None
        image_template = (f"COCO_{subtype}_{{image_id:012d}}.jpg" if subtype
                          else "{image_id}.jpg")
    ann_path = annotations_path or questions_path
    annotations = json_array_items(ann_path, "annotations")[1] if annotations_path else \
        arrays.get("annotations")  # one file holding both lists: read once
    answers, answer_types = {}, {}
    if annotations is not None:
        for k, (line, a) in enumerate(annotations):
            what = f"annotations[{k}]"
            if not isinstance(a, dict) or "question_id" not in a:
                raise DataFormatError(ann_path, line, f"{what} has no 'question_id'")
            human = a.get("answers")
            if not isinstance(human, list) or not human:
                raise DataFormatError(ann_path, line, f"{what} has no 'answers' list")
            texts = []
            for j, h in enumerate(human):
                text = h.get("answer") if isinstance(h, dict) else h
                if not isinstance(text, str):
                    raise DataFormatError(ann_path, line, f"{what}.answers[{j}] has no "
                                          f"'answer' string")
                texts.append(text)
            answers[a["question_id"]] = texts
            if isinstance(a.get("answer_type"), str):
                answer_types[a["question_id"]] = a["answer_type"]
    out = []
    for k, (line, q) in enumerate(questions):
        what = f"questions[{k}]"
        if not isinstance(q, dict):
            raise DataFormatError(questions_path, line, f"{what} must be an object")
        text = q.get("question")
        if not isinstance(text, str) or not text.strip():
            raise DataFormatError(questions_path, line, f"{what} has no 'question' string")
        qid = q.get("question_id", k)
        if "image" in q:
            image = _resolve(root, str(q["image"]))
        elif "image_id" in q:
            try:
                image = _resolve(root, image_template.format(image_id=q["image_id"]))
            except (ValueError, TypeError) as e:
                raise DataFormatError(questions_path, line, f"{what}: image_id "
                                      f"{q['image_id']!r} does not fit the image template "
                                      f"{image_template!r} ({e})") from None
        else:
            raise DataFormatError(questions_path, line, f"{what} has no 'image_id' or 'image'")
        human = q.get("answers")
        if human is None:
            if qid not in answers:
                raise DataFormatError(ann_path, None, f"no annotation for question_id {qid!r} "
                                      f"({questions_path}:{line})")
            human = answers[qid]
        if not isinstance(human, list) or not human or not all(isinstance(h, str)
                                                                for h in human):
            raise DataFormatError(questions_path, line, f"{what}: 'answers' must be a "
                                  f"non-empty list of strings")
        record = {"question_id": qid, "image": str(image), "question": text.strip(),
                  "answers": list(human)}
        if qid in answer_types:
            record["answer_type"] = answer_types[qid]
        out.append(record)
    if not out:
        raise DataFormatError(questions_path, None, "no questions")
    return out
