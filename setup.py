"""Builds clippo and its extension `clippo._C` (torch custom ops; see csrc/).

The C++ sources always build. The CUDA sources build when torch is a CUDA build and nvcc is
found; CLIPPO_USE_CUDA=1 forces them (an error if impossible), CLIPPO_USE_CUDA=0 skips them.
TORCH_CUDA_ARCH_LIST picks the GPU architectures (default: DEFAULT_CUDA_ARCHS below).
DEBUG=1 builds with -O0 -g. Use `pip install --no-build-isolation .` so the build sees the
installed torch.
"""
import os
import shutil
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def read_sources():
    groups, group = {"cpu": [], "cuda": []}, None
    for line in (ROOT / "csrc" / "sources.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("["):
            group = line.strip("[]")
        elif line:
            groups[group].append(line)
    return groups


def want_cuda(torch, cuda_home):
    flag = os.environ.get("CLIPPO_USE_CUDA", "").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return False
    has = torch.version.cuda is not None and cuda_home is not None
    if flag in ("1", "true", "yes", "on"):
        if not has:
            sys.exit("CLIPPO_USE_CUDA=1 but torch is a CPU build or nvcc/CUDA_HOME was not found")
        return True
    if torch.version.cuda is not None and cuda_home is None:
        print("clippo: torch has CUDA but nvcc was not found; building the CPU extension only")
    return has


def extensions():
    import torch
    from torch.utils import cpp_extension

    sources = read_sources()
    debug = os.environ.get("DEBUG", "0") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    cxx = opt + ["-fvisibility=hidden"]  # torch picks the C++ standard it needs
    if want_cuda(torch, cpp_extension.CUDA_HOME):
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            # Machine code for A100 and H100/H200 without needing a GPU present, and PTX of
            # the newest, which the driver compiles for any later GPU (sm_100, sm_120, ...).
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
        nvcc = opt + ["-lineinfo"]
        return [cpp_extension.CUDAExtension(
            "clippo._C", sources["cpu"] + sources["cuda"],
            include_dirs=[str(ROOT / "csrc")], define_macros=[("CLIPPO_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc})]
    return [cpp_extension.CppExtension(
        "clippo._C", sources["cpu"], include_dirs=[str(ROOT / "csrc")],
        extra_compile_args={"cxx": cxx})]


def build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    class Build(BuildExtension):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, use_ninja=shutil.which("ninja") is not None, **kwargs)
    return Build


setup(
    name="clippo",
    version="0.1.0",
    description="CLIPPO (image-and-language understanding from pixels only) in PyTorch",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0 (code); GNU Unifont: SIL OFL 1.1 / GPL-2+ with font embedding exception",
    packages=find_packages(include=["clippo", "clippo.*"]),
    package_data={"clippo": ["fonts/*", "model_configs/*.json"]},
    python_requires=">=3.10",
    install_requires=["torch>=2.6", "numpy", "freetype-py", "safetensors", "pillow",
                      "webdataset", "torchdata>=0.8", "tqdm", "pyyaml"],
    extras_require={"triton": ["triton"], "dev": ["pytest", "ninja", "pybind11"]},
    ext_modules=extensions(),
    cmdclass={"build_ext": build_ext_class()},
    entry_points={"console_scripts": ["clippo=clippo.cli:main"]},
    zip_safe=False,
)
