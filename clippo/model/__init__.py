"""The CLIPPO model: a ViT (`vit`) used as one tower for images and rendered text (`clippo`)."""
from clippo.model.clippo import CLIPPO, render_and_encode
from clippo.model.vit import VARIANTS, ViT, decode_variant

__all__ = ["CLIPPO", "VARIANTS", "ViT", "decode_variant", "render_and_encode"]
