"""open_clip-style (model, preprocess, tokenizer) for a CLIPPO model, so code written for
OpenCLIP models (LAION's CLIP_benchmark, for one) runs on CLIPPO unchanged:

    model, preprocess, tokenizer = clippo.open_clip_interface(clippo_model)
    images = torch.stack([preprocess(pil_image) for pil_image in batch])   # float [-1, 1]
    zimg = model.encode_image(images)
    ztxt = model.encode_text(tokenizer(["a photo of a cat"]))             # text -> pixels

The "tokenizer" renders text to images (on the model's device: the fast path) instead of
token ids; `encode_text` encodes those images with the same tower.
"""
import os

import torch
from torch import nn


class OpenCLIPStyle(nn.Module):
    """A CLIPPO model behind open_clip's CLIP methods: encode_image, encode_text (of the
    tokenizer's rendered images), forward -> (image features, text features, logit scale),
    and `logit_scale` (the log of the temperature, as open_clip stores it)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    @property
    def logit_scale(self):
        return self.model.t[0]

    @property
    def visual(self):
        return self.model.img

    def encode_image(self, image, normalize=False):
        return self.model.encode_image(image)  # CLIPPO's embeddings are always normalised

    def encode_text(self, text, normalize=False):
        # rendered images or strings (rendered on the model's device), encoded from the
        # tokens of the model's text_tokens setting
        return self.model.encode_text(text)

    def forward(self, image=None, text=None):
        zimg = None if image is None else self.encode_image(image)
        ztxt = None if text is None else self.encode_text(text)
        return zimg, ztxt, self.logit_scale.exp()


class RenderTokenizer:
    """Strings -> rendered text images, uint8 [N, 3, S, S] (or float in [-1, 1] with
    dtype=torch.float32), drawn on `device` (default: the model's at call time)."""

    def __init__(self, model, device=None, dtype=torch.uint8):
        self.model, self.device, self.dtype = model, device, dtype

    def __call__(self, texts, context_length=None):
        if isinstance(texts, str):
            texts = [texts]
        images = self.model.renderer(self.device)(list(texts))
        if self.dtype == torch.uint8:
            return images.contiguous()
        return images.to(self.dtype).mul_(2.0 / 255.0).sub_(1.0)


class Preprocess:
    """PIL image (or image file path) -> float [3, S, S] in [-1, 1], resized to the model's
    input size (bilinear, no crop: the reference's `resize(S)|value_range(-1, 1)`), decoded
    and resized as in training and `clippo eval` (clippo.data.transforms): an `Image.open`ed
    JPEG not yet loaded is decoded in draft mode, as they decode it."""

    def __init__(self, image_size):
        from clippo.data.transforms import ImageTransform
        self.image_size = tuple(image_size)
        self.transform = ImageTransform(self.image_size)

    def __call__(self, image):
        from PIL import Image

        from clippo.data.transforms import load_image, opened_to_rgb
        if isinstance(image, (str, os.PathLike)):
            image = load_image(image, draft_size=self.transform.draft_size)
        if not isinstance(image, Image.Image):
            raise TypeError(f"preprocess expects a PIL image, got {type(image).__name__}")
        x = self.transform(opened_to_rgb(image, self.transform.draft_size))
        return x.float().mul_(2.0 / 255.0).sub_(1.0)


def open_clip_interface(model, device=None, text_dtype=torch.uint8):
    """(model wrapper, preprocess, tokenizer) as `open_clip.create_model_and_transforms` plus
    `open_clip.get_tokenizer` give them, for a CLIPPO model."""
    return (OpenCLIPStyle(model), Preprocess(model.img.image_size),
            RenderTokenizer(model, device, text_dtype))
