"""Zero-shot prompt templates and the reference's canonicalisation of class names and prompts.

Templates use "{}" for the class name. "clip" is the CLIP paper's 80 ImageNet templates plus
the bare class name "{}", as big_vision's `clip_paper` set that CLIPPO was evaluated with;
"short" is CLIP's 7 best ImageNet templates plus "{}" (big_vision's `clip_best`).
"""
import re
import string

CLIP_IMAGENET_TEMPLATES = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.", "a rendering of a {}.",
    "graffiti of a {}.", "a bad photo of the {}.", "a cropped photo of the {}.",
    "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.",
    "a dark photo of the {}.", "a drawing of a {}.", "a photo of my {}.", "the plastic {}.",
    "a photo of the cool {}.", "a close-up photo of a {}.", "a black and white photo of the {}.",
    "a painting of the {}.", "a painting of a {}.", "a pixelated photo of the {}.",
    "a sculpture of the {}.", "a bright photo of the {}.", "a cropped photo of a {}.",
    "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.",
    "a rendering of the {}.", "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.",
    "a close-up photo of the {}.", "a photo of a {}.", "the origami {}.",
    "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.", "a origami {}.",
    "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.",
    "a photo of a nice {}.", "a photo of a weird {}.", "a blurry photo of a {}.",
    "a cartoon {}.", "art of a {}.", "a sketch of the {}.", "a embroidered {}.",
    "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.",
    "a photo of the small {}.", "a photo of the weird {}.", "the cartoon {}.", "art of the {}.",
    "a drawing of the {}.", "a photo of the large {}.", "a black and white photo of a {}.",
    "the plushie {}.", "a dark photo of a {}.", "itap of a {}.", "graffiti of the {}.",
    "a toy {}.", "itap of my {}.", "a photo of a cool {}.", "a photo of a small {}.",
    "a tattoo of the {}.",
)
CLIP_BEST_TEMPLATES = (
    "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
    "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
)
TEMPLATE_SETS = {
    "clip": CLIP_IMAGENET_TEMPLATES + ("{}",),
    "short": CLIP_BEST_TEMPLATES + ("{}",),
    "name": ("{}",),
}


def canonicalize(text, keep=None):
    """Lower case, underscores to spaces, ASCII punctuation removed, whitespace collapsed;
    occurrences of the exact string `keep` survive (the reference keeps "{}" in templates and
    "," in class names)."""
    text = text.replace("_", " ")
    strip = str.maketrans("", "", string.punctuation)
    if keep:
        text = keep.join(part.translate(strip) for part in text.split(keep))
    else:
        text = text.translate(strip)
    return re.sub(r"\s+", " ", text.lower()).strip()


def canonical_class_names(names):
    return [canonicalize(n, keep=",") for n in names]


def canonical_templates(templates):
    return [canonicalize(t, keep="{}") for t in templates]


def _checked_template(path, line, template):
    """A template with CLIP_benchmark's "{c}" turned into "{}"; DataFormatError if it has no
    place for the class name or is not a valid format string."""
    from clippo.eval.data import DataFormatError
    if not isinstance(template, str):
        raise DataFormatError(path, line, f"template {template!r} is not a string")
    template = template.replace("{c}", "{}")
    if "{}" not in template:
        raise DataFormatError(path, line, f"template {template!r} has no '{{}}' (or '{{c}}') "
                              f"for the class name")
    try:
        template.format("x")
    except (IndexError, KeyError, ValueError) as e:
        raise DataFormatError(path, line, f"template {template!r} is not a valid format "
                              f"string ({e}); write literal braces as {{{{ }}}}") from None
    return template


def load_templates(spec):
    """A template set by name ("clip", "short", "name") or from a UTF-8 file with one template
    per line ("{}" or CLIP_benchmark's "{c}" marks the class name; blank lines and lines
    starting with "#" are ignored)."""
    if isinstance(spec, (list, tuple)):
        templates = [str(t) for t in spec]
        for i, t in enumerate(templates):
            if "{}" not in t:
                raise ValueError(f"template {i} ({t!r}) has no '{{}}' for the class name")
        return templates
    if spec in TEMPLATE_SETS:
        return list(TEMPLATE_SETS[spec])
    from clippo.eval.data import read_text_lines
    templates = []
    for lineno, line in read_text_lines(spec):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        templates.append(_checked_template(spec, lineno, line))
    if not templates:
        raise ValueError(f"{spec}: no templates (expected one per line, or one of "
                         f"{sorted(TEMPLATE_SETS)})")
    return templates


def _checked_class_prompts(path, prompts):
    from clippo.eval.data import DataFormatError
    if not prompts:
        raise DataFormatError(path, None, "no classes in the per-class prompts")
    for name, value in prompts.items():
        if not isinstance(value, list) or not value or not all(
                isinstance(v, str) and v.strip() for v in value):
            raise DataFormatError(path, None, f"class {name!r}: expected a non-empty list of "
                                  f"prompt strings")
    return prompts


def _has_placeholder(text):
    return isinstance(text, str) and ("{c}" in text or "{}" in text)


def load_prompts(spec, dataset=None):
    """What --templates names: a template set, a text file of templates (`load_templates`), or
    a JSON file. Returns a list of "{}" templates or a dict {class name: [prompts]}.

    JSON files as CLIP_benchmark reads them, keyed by dataset name with `dataset` choosing the
    entry: {dataset: ["{c} template", ...]} (en_zeroshot_classification_templates.json) or
    {dataset: {class name: [prompts]}} (CuPL's prompts, cupl_prompts.json). A JSON object
    {class name: [prompts]} whose prompts have no "{c}" or "{}" is per-class prompts for the
    classes as they are.
    """
    from clippo.eval.data import DataFormatError, _starts_like_json, dataset_entry, read_json
    if isinstance(spec, dict):
        return spec
    if isinstance(spec, (list, tuple)) or spec in TEMPLATE_SETS or not _starts_like_json(spec):
        return load_templates(spec)
    doc = read_json(spec)
    if not isinstance(doc, dict) or not doc:
        raise DataFormatError(spec, 1, "expected a JSON object: {dataset name: [templates]}, "
                              "{dataset name: {class name: [prompts]}} or {class name: "
                              "[prompts]}")
    flat = dataset is None and all(
        isinstance(v, list) and not any(_has_placeholder(t) for t in v) for v in doc.values())
    entry = doc if flat else dataset_entry(spec, doc, dataset, "prompts")
    if isinstance(entry, dict):
        return _checked_class_prompts(spec, entry)
    if not isinstance(entry, list) or not entry:
        raise DataFormatError(spec, None, f"dataset {dataset!r}: expected a list of templates "
                              f"or {{class name: [prompts]}}")
    return [_checked_template(spec, None, t) for t in entry]


def load_class_prompts(path, dataset=None):
    """Per-class prompts {class name: [prompts]} from a JSON file (`load_prompts`)."""
    from clippo.eval.data import DataFormatError
    prompts = load_prompts(path, dataset)
    if not isinstance(prompts, dict):
        raise DataFormatError(path, None, "expected per-class prompts, found templates")
    return prompts
