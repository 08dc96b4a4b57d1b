"""CLIPPO: one ViT for photos and rendered text (big_vision `models/proj/clippo/one_tower.py`).

    model = CLIPPO("B/16")                           # random init
    model = CLIPPO.from_big_vision("clippo_b16_yfcc100m.npz")
    zimg = model.encode_image(images)                # uint8 or [-1, 1] float, NCHW
    ztxt = model.encode_text(["a photo of a cat"])   # rendered, then the same tower
    zimg, ztxt, logit_scale = model(images, texts)
"""
import math

import torch
from torch import nn

from clippo.model.vit import ViT, variant_name
from clippo.text.config import RenderConfig  # config only: no compiled extension needed

EMBED_EPS = 1e-8  # z / (||z|| + eps), as one_tower.py
# Which patches of a rendered text the tower encodes: "all" (the reference: the whole image)
# or "ink" (only the patches holding ink, each with its own position embedding; see
# clippo.model.tokens). Photos always use every patch.
TEXT_TOKENS = ("all", "ink")


def _render_config(render, image_size):
    """RenderConfig from None / dict / RenderConfig; the text image defaults to the model's size."""
    if isinstance(render, RenderConfig):
        return render
    if render is None:
        render = {}
    if not isinstance(render, dict):
        raise ValueError(f"render must be a RenderConfig, a dict or None, "
                         f"got {type(render).__name__}")
    side = image_size if isinstance(image_size, int) else image_size[0]
    if not isinstance(image_size, int) and image_size[0] != image_size[1]:
        side = None  # rendered text is square; a non-square model needs an explicit size
    kw = dict(render)
    if "image_size" not in kw and side is not None:
        kw["image_size"] = side
    try:
        return RenderConfig(**kw)
    except TypeError as e:
        raise ValueError(f"bad render config {render!r}: {e}") from None


def normalize(z):
    return z / (torch.linalg.vector_norm(z, dim=-1, keepdim=True) + EMBED_EPS)


class CLIPPO(nn.Module):
    """One-tower CLIPPO model: `img` (a ViT with a Dense head to out_dim) and temperature `t`.

    Arguments: variant ("B/16"), image_size, out_dim, pool_type, temperature_init, render
    (RenderConfig or dict of overrides), text_tokens ("all" or "ink", TEXT_TOKENS), and ViT
    size overrides (width, depth, mlp_dim, num_heads, patch_size). `model.config` holds
    everything needed to rebuild it.
    """

    def __init__(self, variant="B/16", *, image_size=224, out_dim=768, pool_type="map",
                 temperature_init=10.0, render=None, text_tokens="all", **vit_kw):
        super().__init__()
        unknown = set(vit_kw) - {"width", "depth", "mlp_dim", "num_heads", "patch_size"}
        if unknown:
            raise TypeError(f"CLIPPO got unexpected arguments {sorted(unknown)}")
        if text_tokens not in TEXT_TOKENS:
            raise ValueError(f"text_tokens must be one of {TEXT_TOKENS}, got {text_tokens!r}")
        if not temperature_init > 0:
            raise ValueError(f"temperature_init must be > 0, got {temperature_init!r}")
        self.img = ViT(variant, image_size=image_size, pool_type=pool_type, num_classes=out_dim,
                       **vit_kw)
        self.t = nn.Parameter(torch.full((1,), math.log(temperature_init)))
        self.temperature_init = float(temperature_init)
        self.render_config = _render_config(render, image_size)
        self.text_tokens = text_tokens
        self._renderers = {}

    @property
    def config(self):
        cfg = self.img.config
        h, w = cfg.pop("image_size")
        sizes = {k: cfg[k] for k in ("width", "depth", "mlp_dim", "num_heads", "patch_size")}
        return dict(variant=variant_name(**sizes), **sizes, pool_type=cfg["pool_type"],
                    image_size=h if h == w else [h, w], out_dim=cfg["num_classes"],
                    temperature_init=self.temperature_init, render=self.render_config.to_dict(),
                    text_tokens=self.text_tokens)

    @classmethod
    def from_config(cls, config, device=None):
        """Build from a `config` dict (as `model.config`); device="meta" allocates nothing."""
        cfg = dict(config)
        variant = cfg.pop("variant", None)
        cfg.pop("num_classes", None)
        with torch.device(device or "cpu"):
            return cls(variant, **cfg)

    @property
    def temperature(self):
        """exp(t): the logit scale (a 0-dim tensor)."""
        return self.t.exp()[0]

    @property
    def device(self):
        return self.t.device

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    # -- encoders -------------------------------------------------------------------------

    def encode_image(self, images, normalize_output=True, keep=None):
        """images: [B, 3, H, W] uint8 in [0, 255] or float in [-1, 1] -> [B, out_dim].

        keep: None (every patch) or bool [B, N]: the patches each image is encoded from."""
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a tensor, got {type(images).__name__}")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")
        z = self.img(images, keep=keep)
        return normalize(z) if normalize_output else z

    def text_keep(self, text_images):
        """The keep mask of rendered texts under `text_tokens`: None for "all", the patches
        holding ink (a pixel scan of the render) for "ink"."""
        if self.text_tokens == "all":
            return None
        from clippo.model.tokens import pixel_ink
        return pixel_ink(text_images, self.img.patch_size,
                         self.render_config.background_brightness)

    def render_texts(self, texts, device=None):
        """(uint8 images [B, 3, S, S], keep mask or None) of strings rendered on `device`
        (default: the model's), the mask as `text_tokens` asks: for "ink" the renderer's,
        from the layout."""
        with torch.no_grad():  # rendering has no gradient
            if self.text_tokens == "all":
                return self.renderer(device)(texts), None
            return self.renderer(device)(texts, ink_patch_size=self.img.patch_size)

    def renderer(self, device=None):
        """The TextRenderer for `render_config` on `device` (default: the model's), cached."""
        device = torch.device(device or self.device)
        if device not in self._renderers:
            from clippo.text import TextRenderer  # lazy: needs the compiled extension
            self._renderers[device] = TextRenderer(**self.render_config.to_dict(), device=device)
        return self._renderers[device]

    def encode_text(self, texts, normalize_output=True):
        """texts: a string, a list of strings, or an already rendered image batch (uint8, or
        float in [-1, 1]); encoded from the tokens `text_tokens` says."""
        if isinstance(texts, torch.Tensor):
            return self.encode_image(texts, normalize_output, keep=self.text_keep(texts))
        return render_and_encode(self, texts, normalize_output)

    @torch.no_grad()
    def encode(self, sentences, batch_size=32, convert_to_numpy=True, convert_to_tensor=False,
               normalize_embeddings=True, show_progress_bar=False):
        """Sentence embeddings in sentence-transformers' style: a string -> [out_dim], a list
        -> [N, out_dim], numpy float32 (a CPU tensor with convert_to_numpy=False, or a tensor on
        the model's device with convert_to_tensor=True), rendered and encoded batch_size at a
        time. Normalised unless normalize_embeddings=False (CLIPPO's embeddings are)."""
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        from tqdm import tqdm
        starts = range(0, len(texts), batch_size)
        out = [self.encode_text(texts[s:s + batch_size], normalize_embeddings).float()
               for s in tqdm(starts, disable=not show_progress_bar, desc="encode")]
        z = torch.cat(out) if out else torch.zeros(0, self.img.num_classes, device=self.device)
        z = z[0] if single else z
        if convert_to_tensor:
            return z
        return z.cpu().numpy() if convert_to_numpy else z.cpu()

    def forward(self, images=None, texts=None):
        """Returns (zimg, ztxt, logit_scale); an input that is None gives None."""
        zimg = None if images is None else self.encode_image(images)
        ztxt = None if texts is None else self.encode_text(texts)
        return zimg, ztxt, self.temperature

    # -- checkpoints (implemented in clippo.convert, which never imports this module) ----

    @classmethod
    def from_big_vision(cls, path, *, render=None, pool_type=None, device=None):
        """Load a big_vision CLIPPO .npz; the architecture is read off the array shapes."""
        from clippo import convert
        return convert.load_big_vision(path, cls, render=render, pool_type=pool_type,
                                       device=device)

    def to_big_vision(self, path):
        """Write a big_vision-layout .npz (keys params/img/..., params/t)."""
        from clippo import convert
        convert.save_big_vision(self, path)

    def save_pretrained(self, directory):
        """Write `model.safetensors` and `config.json` into directory."""
        from clippo import convert
        convert.save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory, device=None):
        """A model from a save_pretrained directory, or a `clippo train` output folder (its
        model/)."""
        from clippo import convert
        return convert.load_pretrained(directory, cls, device=device)


def render_and_encode(model, texts, normalize_output=True):
    """Render strings on the model's device and encode them.

    The uint8 render goes straight into the patch-embedding kernel, which normalises on the
    fly, so no float copy of the text images is made. With text_tokens="ink" only the patches
    holding ink are encoded.
    """
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be strings")
    images, keep = model.render_texts(texts)
    return model.encode_image(images, normalize_output, keep=keep)
