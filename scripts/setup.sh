#!/usr/bin/env bash
# Makes a fresh Debian 12 machine ready for deit, then configures and builds it into build/.
# Idempotent: installs only the packages that are missing, and rebuilds only what changed.
# Extra arguments go to CMake, e.g. scripts/setup.sh -DDEIT_ENABLE_CUDA=OFF
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

packages=(
  build-essential cmake ninja-build
  libopenblas-openmp-dev # CBLAS for the CPU reference GEMMs, on the OpenMP thread pool
  catch2                 # Catch2 v2, the test framework
  libstb-dev             # stb_image / stb_image_write: decoding and writing images
  libjpeg62-turbo-dev    # libjpeg-turbo: JPEGs decoded as Pillow decodes them
  libcli11-dev           # the command line
  nlohmann-json3-dev     # JSON output, logs and checkpoints' metadata
  zlib1g-dev             # CRC-32 checksums of the tensors in checkpoints and weights files
  libopenmpi-dev openmpi-bin  # the CPU data-parallel backend and its tests
  python3                # bench/report.py's test (the benchmark scripts are Python)
)

scripts/install_missing.sh "${packages[@]}"

cmake_args=(-S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release)
# The CUDA toolkit is often installed without being on PATH.
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  cmake_args+=(-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc)
fi
cmake "${cmake_args[@]}" "$@"
cmake --build build -j "$(nproc)"
