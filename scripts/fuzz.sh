#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer, with AddressSanitizer and UndefinedBehaviorSanitizer) of the
# readers that take files from outside: image decoding, shards, safetensors and checkpoints'
# metadata, and the run state a checkpoint carries (tests/fuzz/fuzz_*.cpp). A bad file must give an
# error naming it, never a crash, a hang or a read out of bounds. It found stb_image 2.27's JPEG,
# HDR and PNM troubles (data/stb_impl.cpp), run-state numbers converted past their range, and a
# BMP compression that stb_image reads as none.
# Not part of CI: it needs Clang, and a fuzzer finds things in minutes to hours, not seconds.
#
# Usage: scripts/fuzz.sh [TARGET] [SECONDS]
#   TARGET   image, shard, safetensors, run_state, or all (the default: each in turn)
#   SECONDS  how long each target runs (default 300)
# The build goes into build-fuzz/ (Clang, CPU only). Each target's corpus grows in
# build-fuzz/corpus/TARGET between runs, starting from tests/fuzz/seeds/TARGET; inputs that crash,
# hang (10 s) or exhaust memory are kept in build-fuzz/findings/TARGET, and the run then fails,
# naming them. Reproduce one with build-fuzz/tests/fuzz/fuzz_TARGET FILE.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
targets="${1:-all}"
seconds="${2:-300}"
[[ $targets == all ]] && targets="image shard safetensors run_state"

# Debian 12's Clang, its libFuzzer and OpenMP.
scripts/install_missing.sh clang libclang-rt-14-dev libomp-14-dev

flags="-fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer"
cmake -S . -B build-fuzz -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DDEIT_ENABLE_CUDA=OFF -DDEIT_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 -g" "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g" \
  "-DCMAKE_C_FLAGS=$flags" "-DCMAKE_CXX_FLAGS=$flags" >/dev/null
cmake --build build-fuzz -j "$(nproc)" --target $(printf 'fuzz_%s ' $targets)

export ASAN_OPTIONS="detect_leaks=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:suppressions=$PWD/scripts/ubsan_suppressions.txt"
failed=()
for target in $targets; do
  corpus=build-fuzz/corpus/$target findings=build-fuzz/findings/$target
  mkdir -p "$corpus" "$findings"
  echo "fuzz: $target for ${seconds}s"
  # -fork=1 goes on past a finding (each is kept) until the time is up.
  # A target's dictionary (tests/fuzz/TARGET.dict) holds tokens its format needs whole.
  dictionary=()
  [[ -f tests/fuzz/$target.dict ]] && dictionary=(-dict="tests/fuzz/$target.dict")
  build-fuzz/tests/fuzz/fuzz_"$target" "${dictionary[@]}" -fork=1 -ignore_crashes=1 \
    -ignore_timeouts=1 -ignore_ooms=1 -timeout=10 -rss_limit_mb=4096 -max_len=8192 \
    -max_total_time="$seconds" -artifact_prefix="$findings/" "$corpus" "tests/fuzz/seeds/$target" \
    >"build-fuzz/$target.log" 2>&1 || true
  grep "cov:" "build-fuzz/$target.log" | tail -n 1 || true
  if compgen -G "$findings/*" >/dev/null; then
    failed+=("$target")
    echo "fuzz: $target: $(ls "$findings" | wc -l) finding(s) in $findings (log: build-fuzz/$target.log)"
  fi
done
if ((${#failed[@]})); then
  echo "fuzz: findings for ${failed[*]}"
  exit 1
fi
echo "fuzz: nothing found"
