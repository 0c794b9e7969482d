#!/usr/bin/env bash
# Developer build: compiles frod_rt._C with CMake into build/dev and copies it next to the
# Python sources, so `PYTHONPATH=python` (or an editable install) picks it up.
#   tools/dev_build.sh            # CPU only
#   FROD_CUDA=AUTO tools/dev_build.sh   # also the CUDA kernels when nvcc + nvidia-cutlass exist
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
cmake -S . -B build/dev -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DFROD_CUDA="${FROD_CUDA:-OFF}" \
  -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" \
  -DPython_EXECUTABLE="$(command -v "$PY")" >/dev/null
cmake --build build/dev -j "$(nproc)"
cp build/dev/_C*.so python/frod_rt/
echo "built $(ls python/frod_rt/_C*.so)"
