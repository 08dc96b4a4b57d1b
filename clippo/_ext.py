"""Loads the compiled extension `clippo._C`, which registers the torch.ops.clippo.* ops."""
import functools


@functools.cache
def load():
    """Import clippo._C once; return True if it was built with CUDA kernels."""
    try:
        from clippo import _C  # noqa: F401  (registers the ops as a side effect)
    except ImportError as e:
        raise ImportError(
            "clippo's compiled extension (clippo._C) is missing or broken: install clippo with "
            "`pip install --no-build-isolation .` (or `python setup.py build_ext --inplace` in a "
            f"checkout). Original error: {e}") from e
    import torch
    return torch._C._dispatch_has_kernel_for_dispatch_key("clippo::rasterize", "CUDA")
