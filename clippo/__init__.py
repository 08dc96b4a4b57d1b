"""clippo: CLIPPO (Tschannen et al., CVPR 2023) in PyTorch.

One ViT encodes photos and text rendered as images. Public API:

    clippo.TextRenderer, clippo.render          text -> uint8 images (C++/CUDA rasterizer)
    clippo.CLIPPO, clippo.create_model          the one-tower model, big_vision checkpoints
    clippo.render_and_encode                    strings -> embeddings, the training fast path
    clippo.ClipLoss                             the symmetric contrastive loss
    clippo.open_clip_interface                  (model, preprocess, tokenizer), open_clip style

Names resolve lazily so `import clippo` stays cheap (no triton import until a kernel runs).
"""
from clippo._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "RenderConfig": "clippo.text.config",
    "TextRenderer": "clippo.text.render",
    "render": "clippo.text.render",
    "CLIPPO": "clippo.model.clippo",
    "create_model": "clippo.factory",
    "list_models": "clippo.factory",
    "render_and_encode": "clippo.model.clippo",
    "ClipLoss": "clippo.loss",
    "open_clip_interface": "clippo.eval.interface",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
