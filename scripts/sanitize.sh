#!/usr/bin/env bash
# The CPU tests under AddressSanitizer and UndefinedBehaviorSanitizer: reads and writes out of
# bounds, use after free, leaks, signed overflow, misaligned or null accesses, in deit's host code
# and in the `deit` processes the CLI tests start. The ordinary build's tests cannot see an
# out-of-bounds read that changes no result, and the file formats in data/ are where a bad file's
# bytes meet pointer arithmetic. Not part of CI: the build takes about 25 minutes of one core.
#
# Usage: scripts/sanitize.sh [CATCH2_TEST_SPEC]
#   the default spec is every CPU case: "~[gpu]~[mpi]~[address_space]" ([address_space] cases set
#   an address-space limit, which the sanitizer's terabytes of shadow memory cannot live under).
# Run scripts/setup.sh once first: it installs the packages this build needs. The build goes into
# build-sanitize/ (CPU only, -O1 -g); any report fails the run and names the file and line.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
spec="${1:-~[gpu]~[mpi]~[address_space]}"

sanitizers="-fsanitize=address,undefined -fno-omit-frame-pointer"
cmake -S . -B build-sanitize -G Ninja -DDEIT_ENABLE_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 -g" "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g" \
  "-DCMAKE_C_FLAGS=$sanitizers" "-DCMAKE_CXX_FLAGS=$sanitizers" \
  "-DCMAKE_EXE_LINKER_FLAGS=$sanitizers" >/dev/null
cmake --build build-sanitize -j "$(nproc)" --target deit deit_tests

# UndefinedBehaviorSanitizer's checks are compiled recoverable so that its suppressions apply (to
# third-party code only); halt_on_error makes every other report end the process all the same.
export ASAN_OPTIONS="detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:suppressions=$PWD/scripts/ubsan_suppressions.txt"
export OMP_WAIT_POLICY=PASSIVE
./build-sanitize/tests/deit_tests "$spec"
