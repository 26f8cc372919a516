#!/usr/bin/env bash
# The GPU check (DESIGN.md, "Verifying on a GPU"): on a CUDA machine with CMake but possibly
# without Debian's packages or a network, configure, build, run the [gpu] tests, run them again
# under compute-sanitizer memcheck and racecheck, and print a summary table last.
#
# Header-only dependencies come from .deps/ (make it with scripts/vendor_headers.sh on a machine
# that ran scripts/setup.sh, and carry it along). Results go to $OUT when set, else build-gpu/.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
deps=$PWD/.deps
out=${OUT:-build-gpu}
mkdir -p "$out"
log() { echo "== $*"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
log "configure"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DCATCH2_INCLUDE_DIR="$deps/include" -DSTB_INCLUDE_DIR="$deps/include/stb" \
  -DCLI11_INCLUDE_DIR="$deps/include" -DJSON_INCLUDE_DIR="$deps/include" 2>&1 | tail -8
log "build"
cmake --build build-gpu -j "$(nproc)" 2>&1 | tail -3
tests=build-gpu/tests/deit_tests

declare -A result
run() {  # name, command...
  local name=$1
  shift
  log "$name"
  if "$@" >"$out/$name.log" 2>&1; then result[$name]=pass; else result[$name]="FAIL (see $name.log)"; fi
  tail -4 "$out/$name.log"
}
run gpu_tests "$tests" "[gpu]"
run cpu_tests "$tests" "~[gpu]"
run memcheck compute-sanitizer --tool memcheck --error-exitcode 1 "$tests" "[gpu]"
run racecheck compute-sanitizer --tool racecheck --error-exitcode 1 "$tests" "[gpu]"

echo
printf '| %-10s | %-40s |\n' check result
printf '|%s|%s|\n' ------------ ------------------------------------------
for name in gpu_tests cpu_tests memcheck racecheck; do
  printf '| %-10s | %-40s |\n' "$name" "${result[$name]}"
done
