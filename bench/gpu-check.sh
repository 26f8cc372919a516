#!/usr/bin/env bash
# The GPU check (DESIGN.md, "Verifying on a GPU"): on a CUDA machine with CMake but possibly
# without Debian's packages or a network, configure, build, run the [gpu] tests (each case in a
# process of its own, so that one faulting kernel does not fail the cases after it), run them again
# (but the NCCL ones) under compute-sanitizer memcheck and racecheck (racecheck case by case), run
# the benchmarks next to PyTorch + timm (bench/compare.sh), and print a summary table last. The
# tests include `deit demo --device cuda`, the whole training path on the GPU, and a short `deit train`
# through NCCL on one GPU.
#
#   bench/gpu-check.sh [--no-tests] [--no-cpu-tests] [--bench quick|every-model|full|none]
#                      [--bench-models M,M,...] [--bench-repeat N] [--sanitizer-limit SECONDS]
#                      [--sanitizer-cases SPEC] [--only CHECK,CHECK,...] [--deadline SECONDS]
#
#   --no-tests      skip the tests and the sanitizers (e.g. a second call that only benchmarks,
#                   reusing build-gpu/ from the first)
#   --no-cpu-tests  skip the CPU tests (CI runs them; they take minutes a GPU session may not have)
#   --bench MODE    bench/compare.sh --quick (default), --every-model, --full, or no benchmarks
#   --bench-models  only these models of the mode (compare.sh --models), e.g. the rows an earlier
#                   call did not finish
#   --bench-repeat N  each model's steps run N times on both sides (compare.sh --repeat), the
#                   fastest of each side counting: slower, but one side's off run does not set the
#                   ratio
#   --sanitizer-limit  seconds each of memcheck and racecheck may take (default 300): a lent
#                   machine's minutes are few, and a check cut short is reported as such
#   --sanitizer-cases  the test cases memcheck and racecheck run, as a Catch2 test spec
#                   (default "[gpu]~[nccl]~[api-error]"), e.g. the cases an earlier call did not
#                   reach, or those of the kernels changed since the last run. It replaces the
#                   default, exclusions included, and Catch2 matches names case-insensitively
#                   ("CUDA*" is every "cuda ..." case too): list it first with
#                   deit_tests SPEC --list-test-names-only
#   --only CHECKS   run just these of the checks (after the build), whatever the flags above say:
#                   gpu_tests, demo_cuda, train_nccl (needs demo_cuda's data), cpu_tests,
#                   memcheck, racecheck, bench_data, bench_nccl, bench_gemms, bench_whole_batch,
#                   bench (compare.sh in the --bench mode, quick unless given), ncu
#                   (bench/ncu-profile.sh, only when named here; its reports come back in
#                   logs.tar.gz). For lent minutes
#                   split over calls, e.g. --only gpu_tests,demo_cuda, then --only
#                   memcheck,racecheck (the second call reuses build-gpu/ while the machine is
#                   warm).
#   --deadline SECONDS  end within SECONDS of starting, the build included: each check's limit is
#                   cut to what is left (less 20 s for the table), a check that would get under 30 s
#                   is reported as not run, and bench/compare.sh writes its report with what
#                   finished. For a lent machine's single call: a deadline 30 s or so under the
#                   call's timeout_s.
#
# Each check's result is appended to $OUT/summary.txt as it ends, so a call stopped at its time
# limit still brings back what finished. The checks' logs are in $OUT/logs.tar.gz, remade after
# each check (a lent machine brings back at most 8 files), beside the benchmark report.
#
# A lent machine's copy of the tree has no .git: name the commit for the benchmark report with
# DEIT_COMMIT=$(git rev-parse --short HEAD) in the command sent there.
#
# Header-only dependencies, zlib and libjpeg-turbo come from .deps/ (make it with
# scripts/vendor_headers.sh on a machine that ran scripts/setup.sh, and carry it along). cuDNN and
# NCCL come from the CUDA toolkit, or else from the wheels PyTorch installed (nvidia-cudnn-*,
# nvidia-nccl-*); without either, deit is built without them and says so. Results go to $OUT when
# set, else build-gpu/.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
tests=yes
cpu_tests=yes
bench=quick
bench_models=""
bench_repeat=1
sanitizer_limit=300
# Not the [nccl] cases: their own kernels are fills and copies, and NCCL's are not deit's to
# fix, while NCCL under the sanitizer reports its driver-symbol probes and its 16-byte
# over-reads of user buffers as errors, or hangs (NVIDIA/nccl issues 265, 727). Not the
# [api-error] case either: it makes a CUDA call fail on purpose.
sanitized_cases="[gpu]~[nccl]~[api-error]"
only=""
deadline=""
while [ $# -gt 0 ]; do
  case $1 in
    --only) only=",${2:?--only needs a list of checks},"; shift ;;
    --no-tests) tests=no ;;
    --no-cpu-tests) cpu_tests=no ;;
    --bench) bench=$2; shift ;;
    --bench-models) bench_models=${2:?--bench-models needs a list of models}; shift ;;
    --bench-repeat) bench_repeat=${2:?--bench-repeat needs a count}; shift ;;
    --sanitizer-limit) sanitizer_limit=$2; shift ;;
    --sanitizer-cases) sanitized_cases=${2:?--sanitizer-cases needs a test spec}; shift ;;
    --deadline) deadline=${2:?--deadline needs seconds}; shift ;;
    *) echo "usage: bench/gpu-check.sh [--no-tests] [--no-cpu-tests]" \
         "[--bench quick|every-model|full|none] [--bench-models M,M,...] [--bench-repeat N]" \
         "[--sanitizer-limit SECONDS] [--sanitizer-cases SPEC]" \
         "[--only CHECK,CHECK,...] [--deadline SECONDS]" >&2
       exit 2 ;;
  esac
  shift
done
known_checks=,gpu_tests,demo_cuda,train_nccl,cpu_tests,memcheck,racecheck,bench_data,bench_nccl,bench_gemms,bench_whole_batch,bench,ncu,
if [ -n "$only" ]; then
  for check in ${only//,/ }; do
    if [[ $known_checks != *",$check,"* ]]; then
      echo "gpu-check.sh: unknown check '$check'" >&2
      exit 2
    fi
  done
  [ "$bench" = none ] && bench=quick
fi
# wanted CHECK [FLAG]: whether to run CHECK: named by --only, or else FLAG (yes / no) says.
wanted() {
  if [ -n "$only" ]; then [[ $only == *",$1,"* ]]; else [ "${2:-yes}" = yes ]; fi
}
deps=$PWD/.deps
out=${OUT:-build-gpu}
logs=build-gpu/logs
rm -rf "$logs"
mkdir -p "$out" "$logs"
log() { echo "== $*"; }
# bundle_logs: $OUT/logs.tar.gz made again from every log written so far.
bundle_logs() { tar -czf "$out/logs.tar.gz" -C build-gpu logs; }
# time_left LIMIT: LIMIT, or what --deadline leaves after 20 s for the table when that is less;
# at least 1 (`timeout 0` would mean no limit).
time_left() {
  local limit=$1 left
  if [ -n "$deadline" ]; then
    left=$((deadline - SECONDS - 20))
    ((left < limit)) && limit=$left
  fi
  ((limit < 1)) && limit=1
  echo "$limit"
}

# wheel_prefix NAME HEADER LIB: when the CUDA toolkit has no HEADER, a prefix (include/, lib/)
# made of symbolic links into the pip wheel that holds HEADER and libLIB.so.*, for CMake's
# -DNAME_ROOT, in $prefix; the wheel's lib/ also goes on LD_LIBRARY_PATH (cuDNN opens its engine
# libraries by name at run time). $prefix is left empty when there is nothing to add.
wheel_prefix() {
  local name=$1 header=$2 lib=$3 site found so
  prefix=""
  [ -e "/usr/local/cuda/include/$header" ] && return
  site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null) || return
  found=$(find "$site/nvidia" -name "$header" -path '*/include/*' 2>/dev/null | head -1)
  [ -n "$found" ] || return
  so=$(find "$(dirname "$(dirname "$found")")/lib" -name "lib$lib.so*" 2>/dev/null | head -1)
  [ -n "$so" ] || return
  prefix=$PWD/build-gpu/wheel-$name
  mkdir -p "$prefix/lib"
  ln -sfn "$(dirname "$found")" "$prefix/include"
  ln -sf "$(dirname "$so")"/* "$prefix/lib/"
  ln -sf "$so" "$prefix/lib/lib$lib.so"
  LD_LIBRARY_PATH="$(dirname "$so")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export LD_LIBRARY_PATH
  echo "$name from the pip wheel at $(dirname "$(dirname "$found")")"
}
wheel_prefix cudnn cudnn.h cudnn
cudnn_root=$prefix
wheel_prefix nccl nccl.h nccl
nccl_root=$prefix

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$out/summary.txt"
log "configure"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DCATCH2_INCLUDE_DIR="$deps/include" -DSTB_INCLUDE_DIR="$deps/include/stb" \
  -DCLI11_INCLUDE_DIR="$deps/include" -DJSON_INCLUDE_DIR="$deps/include" -DZLIB_ROOT="$deps" \
  -DJPEG_ROOT="$deps" \
  -DCUDNN_ROOT="$cudnn_root" -DNCCL_ROOT="$nccl_root" 2>&1 | tail -9
log "build"
build_start=$SECONDS
# Only what the checks run: the emulated-device targets are a quarter of the whole build's CPU time
# (measured on the development machine), and CI builds them.
if ! cmake --build build-gpu -j "$(nproc)" --target deit deit_tests >"$logs/build.log" 2>&1; then
  bundle_logs
  grep -m 20 -B2 -A6 'error' "$logs/build.log"
  echo "build: FAIL (see build.log)" | tee -a "$out/summary.txt"
  exit 1
fi
echo "build: pass, $((SECONDS - build_start)) s" | tee -a "$out/summary.txt"
test_binary=build-gpu/tests/deit_tests

declare -A result
checks=()
# not_run NAME: NAME reported as left out by --deadline; true when that is so.
not_run() {
  (($(time_left 30) >= 30)) && return 1
  checks+=("$1")
  result[$1]="NOT RUN: the --deadline had come"
  echo "$1: ${result[$1]}" >>"$out/summary.txt"
}
# sanitizer_refused NAME: NAME's result says "not run" when its log shows compute-sanitizer
# refusing the machine: gVisor machines refuse it whatever the program (KINDS.md of the device
# tool), which says nothing of ours.
sanitizer_refused() {
  if grep -q "Device not supported" "$logs/$1.log"; then
    result[$1]="NOT RUN: compute-sanitizer refuses this machine's runtime (see $1.log)"
  fi
}
run() {  # name, time limit in seconds, command...
  local name=$1 limit
  limit=$(time_left "$2")
  shift 2
  not_run "$name" && return
  checks+=("$name")
  log "$name"
  local start=$SECONDS status
  timeout "$limit" "$@" >"$logs/$name.log" 2>&1
  status=$?
  case $status in
    0) result[$name]=pass ;;
    124) result[$name]="STOPPED at its ${limit} s limit (see $name.log)" ;;
    *) result[$name]="FAIL (see $name.log)" ;;
  esac
  [ "$status" != 0 ] && sanitizer_refused "$name"
  result[$name]="${result[$name]}, $((SECONDS - start)) s"
  echo "$name: ${result[$name]}" >>"$out/summary.txt"
  bundle_logs
  tail -4 "$logs/$name.log"
}
# each_case NAME LIMIT SPEC [PREFIX...]: the test cases SPEC selects, each in a process of its
# own (under PREFIX, e.g. compute-sanitizer, when given): a kernel that faults leaves its CUDA
# context unusable, and in one process every later case would fail with it (a sanitizer's own
# internal error does the same). NAME.log lists every case: pass (with its seconds), FAIL (with
# the first lines of its output) or CUT (stopped by its time limit: unchecked rather than failed);
# summary.txt names the failures and the cases cut short or not reached. LIMIT bounds them all.
each_case() {
  local name=$1 limit start=$SECONDS passed=0 status case case_limit case_start
  local list=build-gpu/$1-cases.txt spec=build-gpu/case.spec case_log=build-gpu/case.log
  local failed=() cut=() case_logs=$logs/$1.log filter=$3
  limit=$(time_left "$2")
  shift 3
  not_run "$name" && return
  checks+=("$name")
  log "$name"
  "$test_binary" "$filter" --list-test-names-only </dev/null | sed '/^$/d' >"$list"
  if [ ! -s "$list" ]; then  # the binary did not start, or lists nothing
    result[$name]="FAIL (no $filter cases listed)"
    echo "$name: ${result[$name]}" >>"$out/summary.txt"
    return
  fi
  : >"$case_logs"
  while IFS= read -r case; do
    if ((SECONDS - start > limit)); then
      cut+=("(not reached in the ${limit} s limit, nor the cases after it) $case")
      break
    fi
    # One name per line in an input file; Catch2 splits a name at an unescaped comma.
    printf '%s\n' "$case" | sed 's/[\\,]/\\&/g' >"$spec"
    # -w NoTests: a name that matched no case (an escaping slip) fails rather than passes.
    case_limit=$((limit - (SECONDS - start) + 1))
    ((case_limit > 180)) && case_limit=180
    case_limit=$(time_left "$case_limit")
    case_start=$SECONDS
    timeout "$case_limit" "$@" "$test_binary" -w NoTests -f "$spec" </dev/null >"$case_log" 2>&1
    status=$?
    # Each case's seconds, so that a later call can size its limit to the cases it has left.
    if [ $status -eq 0 ]; then
      passed=$((passed + 1))
      echo "pass  $case ($((SECONDS - case_start)) s)" >>"$case_logs"
    elif [ $status -eq 124 ]; then  # timeout's own status: the case ran out of time, no verdict
      cut+=("$case")
      echo "CUT   $case (stopped at its $case_limit s limit: unchecked, not failed)" >>"$case_logs"
    else
      failed+=("$case")
      { echo "FAIL  $case (exit $status)"; head -80 "$case_log"; echo; } >>"$case_logs"
    fi
  done <"$list"
  result[$name]="$passed pass, ${#failed[@]} FAIL, ${#cut[@]} cut short, $((SECONDS - start)) s"
  [ ${#failed[@]} -eq 0 ] && [ ${#cut[@]} -eq 0 ] &&
    result[$name]="pass ($passed cases), $((SECONDS - start)) s"
  sanitizer_refused "$name"
  echo "$name: ${result[$name]}" >>"$out/summary.txt"
  for case in "${failed[@]}"; do echo "  FAIL: $case" | tee -a "$out/summary.txt"; done
  for case in "${cut[@]}"; do
    echo "  CUT (its time limit, unchecked): $case" | tee -a "$out/summary.txt"
  done
  bundle_logs
}
wanted gpu_tests "$tests" && each_case gpu_tests 600 "[gpu]"
# Issue 5's end-to-end check: the demo trained on the GPU learns as on the CPU (93.0% top-1
# there, bench/results/2026-12-02-cpu-demo.md; 94.0% on an H200, 2026-12-04-h200-gpu-check.md);
# its per-epoch log lines are in the log.
wanted demo_cuda "$tests" &&
  run demo_cuda 600 build-gpu/deit demo --device cuda --out build-gpu/demo-cuda
# Issue 8's one-process run through NCCL: two epochs of the demo's data on a one-rank NCCL
# communicator (the gradient reducer's buckets, the broadcast at the start, the metrics' reduce),
# then the same with the optimizer state sharded (--zero).
if wanted train_nccl "$tests" && [ ! -d build-gpu/demo-cuda/data ]; then
  checks+=(train_nccl)
  result[train_nccl]="NOT RUN: it trains on demo_cuda's dataset, which is not there"
  echo "train_nccl: ${result[train_nccl]}" >>"$out/summary.txt"
elif wanted train_nccl "$tests"; then
  run train_nccl 300 env DEIT_NCCL_ONE_RANK=1 bash -c 'for zero in "" --zero; do
    build-gpu/deit train --model deit3_small --patch 16 --dim 96 --depth 4 --heads 3 \
      --input-size 64 --data build-gpu/demo-cuda/data --output build-gpu/train-nccl$zero \
      --device cuda --epochs 2 --warmup-epochs 0 --batch-size 64 --lr 1e-2 --no-repeated-aug \
      $zero || exit; done'
fi
cpu_tests_asked=no
[ "$tests" = yes ] && [ "$cpu_tests" = yes ] && cpu_tests_asked=yes
wanted cpu_tests "$cpu_tests_asked" && run cpu_tests 1200 "$test_binary" "~[gpu]"
# memcheck in one process: on an H200 it checked all of them in 22 s, where a process per case
# would spend most of its time starting the sanitizer. `-d yes` names each case as it ends.
wanted memcheck "$tests" && run memcheck "$sanitizer_limit" compute-sanitizer --tool memcheck \
  --error-exitcode 1 "$test_binary" -d yes "$sanitized_cases"
# racecheck case by case (an internal sanitizer error in one case failed every case after it in
# one process), judged on deit's kernels alone by bench/racecheck-deit.sh: on an H200 racecheck
# reports hazards inside cuBLASLt's Hopper kernels (nvjet_*), which are not ours to fix, and its
# own kernel filter ended every case with a GEMM in an internal error.
wanted racecheck "$tests" && each_case racecheck "$sanitizer_limit" "$sanitized_cases" \
  bench/racecheck-deit.sh
benchmarks=yes
[ "$bench" = none ] && benchmarks=no
# The GPU augmentation stage alone and the whole input path (issue 6's targets), then the same at
# 224 with fine-tuning's RandAugment in place of 3-Augment and jitter; JSON lines in the log.
wanted bench_data "$benchmarks" && run bench_data 600 bash -c \
  'build-gpu/deit bench data --device cuda --json &&
   build-gpu/deit bench data --device cuda --input-size 224 --aa rand-m9-mstd0.5-inc1 --json'
# Issue 8's number on one GPU: the step through NCCL (DEIT_NCCL_ONE_RANK), its gradient
# all-reduce's time and the part backward does not hide (the JSON's "comm"), in the log.
wanted bench_nccl "$benchmarks" && run bench_nccl 600 env DEIT_NCCL_ONE_RANK=1 \
  build-gpu/deit bench step --model deit3_small --batch-size 256 --device cuda \
  --profile-steps 0 --json
# The GEMM settings in deit3_small's step: as they are, with deit's own kernel adding the biases
# instead of cuBLASLt's epilogue (--no-gemm-epilogues: what the epilogue saves), and with every
# GEMM's algorithm timed among those cuBLASLt offers (--gemm-autotune: what the heuristic's first
# choice leaves, and "gemm_plans_off_first_choice" how many it changed); JSON lines in the log.
wanted bench_gemms "$benchmarks" && run bench_gemms 300 bash -c \
  'for flag in "" --no-gemm-epilogues --gemm-autotune; do
     build-gpu/deit bench step --model deit3_small --batch-size 256 --device cuda \
       --profile-steps 1 --json $flag || exit
   done'
# deit3_small's and deit3_base's steps with every residual branch run on the whole batch, dropped
# samples included, as timm runs them (--whole-batch-branches): the kernels' speed alone, without
# the work deit skips for the samples drop-path drops. compare.sh's table sets deit's default step
# against PyTorch's; its "deit branches" column says how much of the batch the branches ran on.
wanted bench_whole_batch "$benchmarks" && run bench_whole_batch 300 bash -c \
  'for model in deit3_small deit3_base; do
     build-gpu/deit bench step --model $model --batch-size 256 --device cuda --opt adamw \
       --whole-batch-branches --profile-steps 0 --json || exit
   done'
if wanted bench "$benchmarks"; then
  # compare.sh keeps to the deadline itself, so that it writes its report with what finished.
  compare_flags=("--$bench" --build build-gpu)
  [ -n "$bench_models" ] && compare_flags+=(--models "$bench_models")
  compare_flags+=(--repeat "$bench_repeat")
  [ -n "$deadline" ] && compare_flags+=(--deadline "$(time_left 7200)")
  run bench 7200 bench/compare.sh "${compare_flags[@]}"
  # The report (bench/results/DATE-GPU-compare.md) goes back with the logs.
  report=$(sed -n 's/^written: //p' "$logs/bench.log" | tail -1)
  [ -n "$report" ] && cp "$report" "$out/"
fi
# Nsight Compute on the kernels where the step loses time, only when --only names it.
if [[ $only == *",ncu,"* ]]; then
  run ncu 600 bench/ncu-profile.sh --build build-gpu --out "$logs/ncu"
fi

echo
printf '| %-10s | %-60s |\n' check result
printf '|%s|%s|\n' ------------ --------------------------------------------------------------
for name in "${checks[@]}"; do
  printf '| %-10s | %-60s |\n' "$name" "${result[$name]}"
done
