#!/usr/bin/env bash
# One prepared run for a session that has the GPU machine (the `device` tool): build the
# CUDA kernels, run the GPU tests, check the rasterizer with compute-sanitizer, run the
# benchmarks. Everything it writes lands in $OUT (log.txt, *.json); commit the JSON under
# benchmarks/results/<gpu>-<date>/.
#
# The device image has torch, triton, numpy and nvcc but not pytest or freetype-py. Before
# the call, download their wheels into .whl/ (ignored by git) as the device README says:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     pytest pluggy iniconfig packaging freetype-py
# then: run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=600)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/clippo-gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
step() { printf '\n=== %s (%s)\n' "$*" "$(date +%T)"; }

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

step "build (CUDA)"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} CLIPPO_USE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
python3 setup.py -q build_ext --inplace || { echo "BUILD FAILED"; exit 1; }

step "GPU tests"
CLIPPO_AUTOTUNE=0 timeout 200 python3 -m pytest -q -p no:cacheprovider tests -k "cuda or gpu" \
  --junitxml="$OUT/gpu-tests.xml" || echo "GPU TESTS FAILED (rc=$?)"

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
  timeout 90 compute-sanitizer --tool memcheck --error-exitcode 9 python3 /tmp/sanitize.py \
    || echo "SANITIZER REPORTED ERRORS (rc=$?)"
else
  python3 /tmp/sanitize.py
fi

step "benchmarks"
timeout 90 python3 benchmarks/render.py --out "$OUT" || echo "render benchmark failed"
timeout 120 python3 benchmarks/kernels.py --budget 90 --out "$OUT" || echo "kernel benchmark failed"
timeout 150 python3 benchmarks/encode.py --out "$OUT" || echo "encode benchmark failed"
step "done"
