#!/usr/bin/env bash
# One call on a GPU machine: build frod_rt with the CUDA kernels, run the GPU tests, time the
# kernels against torch (cuBLAS) and write everything under $OUT (or bench/results/gpu).
#
#   bash bench/gpu/run_gpu.sh              # build + tests + timings
#   bash bench/gpu/run_gpu.sh --no-build   # use the already built python/frod_rt/_C*.so
#
# Needs: a Python with torch (CUDA build) and pytest as $PYTHON (default python3); for the
# build also nvcc (>= 12.4) and nvidia-cutlass. Build time on 2 cores: ~3-4 minutes.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-bench/results/gpu}
mkdir -p "$OUT_DIR"
nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed" >&2

if [[ "${1:-}" != "--no-build" ]]; then
  start=$(date +%s)
  PYTHON=$PY FROD_CUDA=ON tools/dev_build.sh > "$OUT_DIR/build.log" 2>&1 || {
    tail -40 "$OUT_DIR/build.log"; echo "BUILD FAILED"; exit 1; }
  echo "build: $(( $(date +%s) - start )) s"
fi

PYTHONPATH=python $PY -m pytest -q -m gpu tests -p no:cacheprovider > "$OUT_DIR/pytest_gpu.log" 2>&1
test_rc=$?
tail -25 "$OUT_DIR/pytest_gpu.log"
echo "gpu tests rc=$test_rc"

PYTHONPATH=python $PY bench/gpu/bench_kernels.py --out "$OUT_DIR/kernels.json" \
  2> "$OUT_DIR/bench.stderr"
bench_rc=$?
tail -20 "$OUT_DIR/bench.stderr"
exit $(( test_rc != 0 || bench_rc != 0 ))
