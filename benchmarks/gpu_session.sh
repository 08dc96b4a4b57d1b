#!/usr/bin/env bash
# Everything clippo checks on a GPU, in one run: build the CUDA kernels, run the GPU tests,
# run the benchmarks, and check the rasterizer under compute-sanitizer.
#
# Needs one NVIDIA GPU (sm_80 or newer; the build targets sm_90 unless TORCH_CUDA_ARCH_LIST
# says otherwise) with its driver; nvcc from the CUDA toolkit torch was built with (CUDA_HOME,
# default /usr/local/cuda); Python 3.10+ with a CUDA build of torch (2.6 or newer), triton,
# numpy, pytest, safetensors and freetype-py, at the versions requirements-dev.txt names.
# Used when present: pytest-xdist (parallel test compiles) and compute-sanitizer (CUDA
# toolkit). Wheels in .whl/ (ignored by git) are installed first, into a private folder, for
# a machine without a package index.
#
# Writes to $OUT (default benchmarks/out/gpu-session, ignored by git): log.txt (the whole
# run), gpu-tests.xml (JUnit), encode.json (with render_and_encode, text tokens all vs ink),
# profile.txt, train.json (the training step, text tokens all vs ink), render.json and
# kernels.json. To keep the numbers, copy the JSON to benchmarks/results/<gpu>-<date>/.
#
# Time: the script keeps inside BUDGET seconds (default 560). Steps run most important first;
# each gets what is left minus a reserve for the steps after it, so a slow step shortens the
# later ones instead of ending the run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/out/gpu-session}
BUDGET=${BUDGET:-560}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
step() { printf '\n=== %s (%s, %ss left)\n' "$*" "$(date +%T)" "$(left 0)"; }
# seconds left for a step that must leave `reserve` seconds to the steps after it, capped
left() { local l=$((BUDGET - SECONDS - $1)); local cap=${2:-100000}; ((l > cap)) && l=$cap; ((l < 5)) && l=5; echo $l; }

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
# the package is built in place (no pip install): make it importable from every script
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
python3 -c "import sys, torch, triton; print(sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"

step "build (CUDA)"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} CLIPPO_USE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
timeout "$(left 400 150)" python3 setup.py -q build_ext --inplace || { echo "BUILD FAILED"; exit 1; }
python3 -c "import clippo, torch; r = clippo.TextRenderer(device='cuda'); print('CUDA render ok', tuple(r(['hello']).shape))" \
  || echo "CUDA RENDER SMOKE TEST FAILED"

step "GPU tests (rendering CPU == CUDA, kernels in bf16 and at full size, the fused model)"
# pytest-xdist (in the image) spreads the Triton compiles over the CPU cores
XDIST=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8" || echo "")
CLIPPO_AUTOTUNE=0 timeout "$(left 330 140)" python3 -m pytest -q -p no:cacheprovider $XDIST tests \
  -k "cuda or gpu or through_kernels" --junitxml="$OUT/gpu-tests.xml" \
  || echo "GPU TESTS FAILED OR CUT SHORT (rc=$?)"

step "benchmark: encode (B/16 bf16, batch 1024; MFU, vs torch.compile, render_and_encode)"
T=$(left 200 230)
timeout "$T" python3 benchmarks/encode.py --budget $((T > 80 ? T - 50 : 30)) --out "$OUT" --profile "$OUT/profile.txt" \
  || echo "encode benchmark failed or cut short (rc=$?)"

step "benchmark: training step, text tokens all vs ink (B/16 bf16, batch 1024)"
timeout "$(left 90 110)" python3 benchmarks/train.py --text-tokens all,ink --steps 5 --out "$OUT" \
  || echo "train text-tokens benchmark failed or cut short (rc=$?)"

step "benchmark: render (CPU threads and CUDA, captions and paragraphs)"
timeout "$(left 90 60)" python3 benchmarks/render.py --out "$OUT" \
  || echo "render benchmark failed or cut short (rc=$?)"

step "benchmark: kernels (vs conv2d, best SDPA backend, F.layer_norm, eager/compiled linear)"
T=$(left 30 100)
timeout "$T" python3 benchmarks/kernels.py --budget $((T > 60 ? T - 30 : 30)) --out "$OUT" \
  || echo "kernel benchmark failed or cut short (rc=$?)"

step "compute-sanitizer on the CUDA rasterizer"
cat > /tmp/sanitize.py <<'PY'
import torch, clippo
r = clippo.TextRenderer(device="cuda")
texts = ["", "x" * 5000, "\ud800 \x00 \U0010FFFF 中文 😀" * 40, b"\xff\xfe\xed\xa0\x80"] * 8
a = r(texts); torch.cuda.synchronize()
b = clippo.TextRenderer()(texts)
assert torch.equal(a.cpu(), b), "CPU != CUDA"
big = clippo.TextRenderer(device="cuda", image_size=2100, max_chars=None)(texts)
torch.cuda.synchronize(); print("sanitize script ok", tuple(a.shape), tuple(big.shape))
PY
if command -v compute-sanitizer >/dev/null; then
  timeout "$(left 0 90)" compute-sanitizer --tool memcheck --error-exitcode 9 python3 /tmp/sanitize.py \
    || echo "SANITIZER REPORTED ERRORS OR WAS CUT SHORT (rc=$?)"
else
  timeout "$(left 0 60)" python3 /tmp/sanitize.py
fi
step "done"
