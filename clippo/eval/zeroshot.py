"""Zero-shot classification, as the reference: class names canonicalised and put into prompt
templates, every prompt rendered and encoded, each class's embeddings averaged and
re-normalised; an image's class is the argmax of its embedding's dot products with them.

    classifier = zero_shot_classifier(model, classnames, "clip")   # [D, C], computed once
    res = evaluate_zeroshot(model, dataset, classnames, classifier=classifier)
    res["acc1"], res["acc5"], res["mean_per_class_recall"]
"""
import torch

from clippo.eval import metrics as M
from clippo.eval.common import NothingScored, encode_images, encode_texts
from clippo.eval.data import loader
from clippo.eval.templates import canonical_class_names, canonical_templates, load_templates
from clippo.eval.templates import canonicalize as canonicalize_text


def class_prompts(classnames, templates="clip", canonicalize=True):
    """[[prompts] per class]. templates: a template set or list ("{}" marks the class name),
    or, as CLIP_benchmark allows, a dict {class name: [its own prompts]}."""
    if isinstance(templates, dict):
        missing = [c for c in classnames if c not in templates]
        if missing:
            raise ValueError(f"no prompts for classes {missing[:5]}")
        prompts = [list(templates[c]) for c in classnames]
        if any(not p for p in prompts):
            raise ValueError("every class needs at least one prompt")
        if canonicalize:
            prompts = [[canonicalize_text(t) for t in p] for p in prompts]
        return prompts
    templates = load_templates(templates)
    if canonicalize:
        classnames = canonical_class_names(classnames)
        templates = canonical_templates(templates)
    return [[t.replace("{}", c) for t in templates] for c in classnames]


@torch.no_grad()
def zero_shot_classifier(model, classnames, templates="clip", *, canonicalize=True,
                         batch_size=256, precision="fp32", progress=False):
    """[D, C] float32 on the model's device: per class, the mean of its prompts' normalised
    embeddings, normalised again. All prompts are rendered in batches on the model's device."""
    prompts = class_prompts(classnames, templates, canonicalize)
    if not prompts:
        raise ValueError("zero-shot classification needs at least one class")
    flat = [p for ps in prompts for p in ps]
    z = encode_texts(model, flat, batch_size=batch_size, precision=precision,
                     progress=progress, desc="class prompts")
    z = torch.nn.functional.normalize(z.double(), dim=-1)
    owner = torch.repeat_interleave(torch.arange(len(prompts)),
                                    torch.tensor([len(p) for p in prompts]))
    mean = torch.zeros(len(prompts), z.shape[1], dtype=z.dtype).index_add_(0, owner, z)
    w = torch.nn.functional.normalize(mean, dim=-1)  # the mean's direction
    return w.t().float().to(model.device)


@torch.no_grad()
def zeroshot_logits(model, batches, classifier, *, precision="fp32", progress=False,
                    total=None):
    """(logits [N, C], targets [N], skipped indices) of the images in `collate` batches."""
    z, targets, _, skipped = encode_images(model, batches, precision=precision,
                                           progress=progress, desc="zero-shot", total=total)
    if not len(targets):  # nothing decoded: no features to score
        return torch.zeros(0, classifier.shape[1]), torch.zeros(0, dtype=torch.long), skipped
    logits = z.to(classifier.device) @ classifier
    return logits.cpu(), torch.as_tensor(targets, dtype=torch.long), skipped


def evaluate_zeroshot(model, dataset, classnames, templates="clip", *, classifier=None,
                      canonicalize=True, batch_size=64, num_workers=0, precision="fp32",
                      ties="first", progress=False):
    """Zero-shot top-1/top-5 accuracy and mean per-class recall on `dataset`.

    dataset yields (uint8 image [3,S,S] or None, class index, index) (clippo.eval.data's
    ImageDataset) or is an iterable of `collate` batches. classifier: reuse a
    `zero_shot_classifier` (the prompts are then neither rendered nor encoded again).
    Returns {"acc1", "acc5", "mean_per_class_recall", "num_samples", "skipped": [indices]}.
    """
    model.eval()
    if classifier is None:
        classifier = zero_shot_classifier(model, classnames, templates,
                                          canonicalize=canonicalize, precision=precision,
                                          progress=progress)
    if classifier.shape[1] != len(classnames):
        raise ValueError(f"classifier has {classifier.shape[1]} classes, "
                         f"classnames {len(classnames)}")
    batches = loader(dataset, batch_size, num_workers) if hasattr(dataset, "__getitem__") \
        else dataset
    total = len(batches) if hasattr(batches, "__len__") else None
    logits, targets, skipped = zeroshot_logits(model, batches, classifier, precision=precision,
                                               progress=progress, total=total)
    if not targets.numel():
        raise NothingScored(f"no image could be decoded ({len(skipped)} skipped): nothing to "
                            f"classify")
    if targets.min() < 0 or targets.max() >= len(classnames):
        raise ValueError(f"targets must be class indices below {len(classnames)}")
    out = M.classification_metrics(logits, targets, ties)
    out["num_samples"] = int(targets.numel())
    out["skipped"] = list(skipped)
    return out
