"""clippo: CLIPPO (Tschannen et al., CVPR 2023) in PyTorch.

One ViT encodes photos and text rendered as images. Public API:

    clippo.TextRenderer, clippo.render          text -> uint8 images (C++/CUDA rasterizer)
    clippo.CLIPPO, clippo.create_model          the one-tower model, big_vision checkpoints
    clippo.render_and_encode                    strings -> embeddings, the training fast path
    clippo.ClipLoss                             the symmetric contrastive loss
    clippo.open_clip_interface                  (model, preprocess, tokenizer), open_clip style

Names resolve lazily so `import clippo` stays cheap (no triton import until a kernel runs).
"""
import importlib

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

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'clippo' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
