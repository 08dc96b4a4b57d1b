"""Image decoding and resizing for the data workers (Pillow; no text rendering here).

Photos go to the model as uint8 tensors [3, S, S]; the model maps [0, 255] to the reference's
[-1, 1] value range itself (`value_range(-1, 1)`), so workers ship 4x fewer bytes than float.
The reference's photo preprocessing is `decode | resize(224) | value_range(-1, 1)`: a plain
resize of the whole image to S x S (aspect ratio not kept). Random-resized-crop (OpenCLIP's
train augmentation) is optional.

Errors: `load_image` raises `ImageDecodeError` (naming the source) for anything Pillow cannot
decode and FileNotFoundError for a missing file; `try_load_image` turns both into None, which
the datasets return as "skip this sample" and the collate counts.
"""
import io
import logging
import math
import os
import warnings

import numpy as np
import torch

__all__ = ["ImageDecodeError", "load_image", "try_load_image", "ImageTransform",
           "image_to_tensor", "load_and_transform", "opened_to_rgb"]

log = logging.getLogger("clippo.data")


class ImageDecodeError(ValueError):
    """An image file or byte string that Pillow cannot decode."""


def _pil():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - pillow is a requirement
        raise ImportError("clippo.data needs Pillow: pip install pillow") from e
    return Image


def load_image(source, *, draft_size=None):
    """Decode a path or bytes into an RGB PIL image (fully loaded).

    draft_size (w, h): let JPEG decoding scale down by a power of two while staying at least
    this large (much faster for big photos that are resized anyway).
    """
    Image = _pil()
    name = source if isinstance(source, (str, os.PathLike)) else f"<{len(source)} bytes>"
    try:
        with warnings.catch_warnings():
            # truncated or odd metadata warn on the way; the load below decides
            warnings.simplefilter("ignore")
            fp = source if isinstance(source, (str, os.PathLike)) else io.BytesIO(source)
            with Image.open(fp) as img:
                rgb = opened_to_rgb(img, draft_size)
                rgb.load()
    except FileNotFoundError:
        raise
    except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError, EOFError, ...
        raise ImageDecodeError(f"cannot decode image {name}: {type(e).__name__}: {e}") from e
    return rgb


def opened_to_rgb(img, draft_size=None):
    """An opened PIL image -> RGB, a JPEG not yet loaded decoded in draft mode for draft_size
    (w, h) as load_image does: the one decoding step of training, `clippo eval` and
    open_clip_interface's preprocess, so that one JPEG gives the same pixels in all three.
    (Draft mode changes the lazily opened image in place; a loaded image is only converted.)"""
    if draft_size is not None and img.format == "JPEG":
        img.draft("RGB", tuple(draft_size))
    return to_rgb(img)


def to_rgb(img):
    """PIL image of any mode -> RGB (alpha dropped; palette transparency via RGBA)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def try_load_image(source, **kwargs):
    """load_image, or None (logged at debug level) when the file is missing or undecodable."""
    try:
        return load_image(source, **kwargs)
    except (FileNotFoundError, ImageDecodeError, IsADirectoryError, PermissionError) as e:
        log.debug("skipping image: %s", e)
        return None


def image_to_tensor(img):
    """RGB PIL image -> uint8 tensor [3, H, W]."""
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class ImageTransform:
    """RGB PIL image -> uint8 tensor [3, S, S].

    Default: plain resize to S x S (the reference's `resize(S)`; bilinear, which Pillow
    antialiases when shrinking). With random_resized_crop: a crop covering `scale` of the area
    with aspect ratio in `ratio` (log-uniform), resized to S x S; 10 tries, then a centre crop
    (OpenCLIP's train transform, with CLIPPO-sized defaults scale=(0.9, 1.0)). The crop draws
    from torch's global generator, which DataLoader seeds differently in every worker.
    """

    def __init__(self, image_size, *, random_resized_crop=False, scale=(0.9, 1.0),
                 ratio=(3 / 4, 4 / 3), interpolation="bilinear"):
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        self.size = tuple(int(s) for s in image_size)  # (H, W)
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"image_size must be a positive int or (H, W), got {image_size}")
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        Image = _pil()
        methods = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                   "nearest": Image.NEAREST, "lanczos": Image.LANCZOS}
        if interpolation not in methods:
            raise ValueError(f"interpolation must be one of {sorted(methods)}, "
                             f"got {interpolation!r}")
        self.resample = methods[interpolation]
        self.random_resized_crop = random_resized_crop
        self.scale, self.ratio = tuple(scale), tuple(ratio)

    @property
    def draft_size(self):
        """The smallest JPEG draft that still suits this transform (None: decode in full)."""
        return None if self.random_resized_crop else (self.size[1], self.size[0])

    def crop_box(self, width, height):
        """(left, top, right, bottom) of a random-resized crop of a width x height image."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * float(torch.empty(()).uniform_(*self.scale))
            aspect = math.exp(float(torch.empty(()).uniform_(*log_ratio)))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                left = int(torch.randint(0, width - w + 1, ()))
                top = int(torch.randint(0, height - h + 1, ()))
                return left, top, left + w, top + h
        # centre crop at the nearest allowed aspect ratio
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            w, h = int(round(height * self.ratio[1])), height
        else:
            w, h = width, height
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h

    def __call__(self, img):
        """PIL image (any mode) -> uint8 tensor [3, H, W]."""
        img = to_rgb(img)
        box = self.crop_box(*img.size) if self.random_resized_crop else None
        out = img.resize((self.size[1], self.size[0]), resample=self.resample, box=box)
        return image_to_tensor(out)

    def __repr__(self):
        extra = f", random_resized_crop scale={self.scale} ratio={self.ratio}" \
            if self.random_resized_crop else ""
        return f"ImageTransform(size={self.size}{extra})"


def load_and_transform(source, transform):
    """Decode source (path or bytes) and apply transform; None when it cannot be decoded."""
    img = try_load_image(source, draft_size=getattr(transform, "draft_size", None))
    return None if img is None else transform(img)
