"""Packages whose public names load on first use, so that importing them stays cheap."""
import importlib
import sys


def lazy_exports(package, exports):
    """(__getattr__, __dir__, __all__) for `package` (its __name__), where `exports` maps each
    public name to the module that defines it; a name is imported when first asked for."""
    module = sys.modules[package]

    def __getattr__(name):
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            setattr(module, name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(vars(module)) | set(exports))

    return __getattr__, __dir__, sorted(exports)
