"""Collate functions: drop the samples datasets marked as skipped (None, or a Skipped naming
the sample) and count them.

    collate_image_text(items)  -> {"images": uint8 [B, 3, S, S], "texts": [str], "skipped": int,
                                   "skipped_names": [str]}
    collate_text_pairs(items)  -> {"texts_a": [str], "texts_b": [str], "skipped": int}

"skipped" reaches the training step with the batch (workers cannot share counters), so the
trainer can sum it into its metrics; "skipped_names" holds the names of the first few
(SKIPPED_NAMES_KEPT), for its warning. A batch whose items were all skipped has B = 0 (images of
shape [0, 3, 0, 0] when no image fixed the size): the trainer must handle an empty batch.
"""
import torch

__all__ = ["Skipped", "collate_image_text", "collate_text_pairs"]

SKIPPED_NAMES_KEPT = 3


class Skipped(str):
    """What a dataset returns for a sample it cannot produce: its name (an image path, a
    WebDataset key), counted as skipped by the collate functions."""


def _is_skipped(item):
    return item is None or isinstance(item, Skipped)


def collate_image_text(items):
    images, texts, skipped, names = [], [], 0, []
    for item in items:
        if _is_skipped(item):
            skipped += 1
            if item is not None and len(names) < SKIPPED_NAMES_KEPT:
                names.append(str(item))
            continue
        image, text = item
        if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.dim() != 3:
            raise TypeError(f"image-text items must hold a uint8 [3, S, S] tensor, got "
                            f"{type(image).__name__} {getattr(image, 'dtype', '')}"
                            f"{tuple(getattr(image, 'shape', ()))}")
        if not isinstance(text, str):
            raise TypeError(f"image-text items must hold a str caption, got {type(text).__name__}")
        images.append(image)
        texts.append(text)
    if images:
        shapes = {tuple(im.shape) for im in images}
        if len(shapes) > 1:
            raise ValueError(f"images of one batch must share a shape, got {sorted(shapes)}")
        stacked = torch.stack(images)
    else:
        stacked = torch.empty((0, 3, 0, 0), dtype=torch.uint8)
    return {"images": stacked, "texts": texts, "skipped": skipped, "skipped_names": names}


def collate_text_pairs(items):
    texts_a, texts_b, skipped = [], [], 0
    for item in items:
        if _is_skipped(item):
            skipped += 1
            continue
        a, b = item
        if not isinstance(a, str) or not isinstance(b, str):
            raise TypeError(f"text-pair items must be (str, str), got "
                            f"({type(a).__name__}, {type(b).__name__})")
        texts_a.append(a)
        texts_b.append(b)
    return {"texts_a": texts_a, "texts_b": texts_b, "skipped": skipped}
