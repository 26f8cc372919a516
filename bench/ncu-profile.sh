#!/usr/bin/env bash
# Nsight Compute on the kernels where deit3_small's training step loses time to torch.compile's
# (bench/results/2026-12-04-h200-gpu-check.md): the attention forward and its two backward
# kernels, GELU forward and backward (the step's backward is the one that also sums fc1's bias
# gradient), the fused residual + LayerNorm forward and backward, the LayerNorm forward and backward, and a few
# of cuBLASLt's GEMMs from forward and backward. Each kernel is profiled at the step's own shapes, one launch of it
# taken after the first step's, with the sections that say what bounds it: speed of light,
# occupancy, launch statistics, warp states and what stalls them, memory and compute workload
# (which pipes are busy), instruction mix. One text report per kernel
# goes to DIR (default build-gpu/ncu), with the command that made it on its first line.
#
#   bench/ncu-profile.sh [--build DIR] [--out DIR] [--model NAME] [--batch-size B]
#
# Needs ncu (Nsight Compute) and a machine whose runtime lets it read the counters (the lent
# H200s on Firecracker do: KINDS.md of the device tool). --clock-control none leaves the clocks
# as the benchmarks run them. Each kernel re-runs the step program, about 10 to 20 s apiece.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
build=build-gpu
out=""
model=deit3_small
batch=256
while [ $# -gt 0 ]; do
  case $1 in
    --build) build=$2; shift ;;
    --out) out=$2; shift ;;
    --model) model=$2; shift ;;
    --batch-size) batch=$2; shift ;;
    *) echo "usage: bench/ncu-profile.sh [--build DIR] [--out DIR] [--model NAME]" \
         "[--batch-size B]" >&2
       exit 2 ;;
  esac
  shift
done
out=${out:-$build/ncu}
mkdir -p "$out"
if ! command -v ncu >/dev/null; then
  echo "ncu-profile.sh: no ncu (Nsight Compute) on this machine" >&2
  exit 1
fi

# name, the kernel-name base ncu matches against, its regex, launches to skip, launches to take.
# A deit3_small step runs each attention kernel 11 times (the last block's attention is the class
# token's, kernels/cuda/class_attention.cu), GELU 12 (the last block's on one row an image), the
# fused residual + LayerNorm kernels 23 (the last block's first on one row an image, last in
# forward order and first in backward), and about 150 GEMMs (50 forward, then 100 backward);
# skipping past the first step's launches takes a warm, whole-batch one, and the GEMMs' skip lands
# in the second step's backward. The LayerNorm
# alone runs twice a step: block 0's norm1 over every token (B x 197 rows, issue 7's row), and the
# final norm over the class tokens only (B rows), forward in that order and backward in the other,
# so the skips of 2 and 3 take the second step's wide one. The LayerNorm regexes, alone and fused,
# match either row layout's kernels (a warp per row up to 1024 columns, a block per row above).
profiles=(
  "attention_forward function ^attention_forward_kernel 14 1"
  "attention_dkdv function ^attention_dkdv_kernel 14 1"
  "attention_dq function ^attention_dq_kernel 14 1"
  "gelu_forward demangled GeluForwardOp 14 1"
  "gelu_backward function ^gelu_backward_column_partials_kernel 14 1"
  "layerscale_layernorm_forward function ^layerscale_layernorm_forward_ 30 1"
  "layerscale_layernorm_backward function ^layerscale_layernorm_backward_ 30 1"
  "layernorm_forward function ^layernorm_forward_ 2 1"
  "layernorm_backward function ^layernorm_backward_ 3 1"
  "gemms function ^nvjet 205 12"
)
# What each warp waits on, per issued instruction (barrier, long scoreboard = global memory, short
# scoreboard = shared memory and MUFU, math pipe throttle, ...): the WarpStateStats section's text
# leaves the breakdown out. Dropped, with a note, if this ncu does not know the metrics.
stall_metrics=(--metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio')
if ! ncu --query-metrics 2>/dev/null | grep -q smsp__average_warps_issue_stalled_barrier; then
  echo "ncu-profile.sh: this ncu lists no stall-reason metrics; the reports go without them" >&2
  stall_metrics=()
fi
status=0
for profile in "${profiles[@]}"; do
  read -r name base regex skip count <<<"$profile"
  report=$out/$name.txt
  command=(ncu --clock-control none --kernel-name-base "$base" --kernel-name "regex:$regex"
           --launch-skip "$skip" --launch-count "$count" --section SpeedOfLight
           --section Occupancy --section LaunchStats --section WarpStateStats
           --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis
           --section InstructionStats "${stall_metrics[@]}" --log-file "$report.tmp"
           "$build/deit" bench step --model "$model" --batch-size "$batch" --device cuda
           --warmup 1 --steps 1 --profile-steps 0 --json)
  echo "== $name"
  if "${command[@]}" >/dev/null 2>"$out/$name.err"; then
    { echo "${command[*]}"; cat "$report.tmp"; } >"$report"
    grep -E "^  [a-zA-Z_]|Duration|Compute \(SM\) Throughput|Memory Throughput|Achieved Occupancy" \
      "$report" | head -12
    # A kernel renamed since the list was written matches nothing, and ncu still exits 0.
    if grep -q "No kernels were profiled" "$report"; then
      status=1
      echo "   FAIL: no kernel matched $regex (the report lists those that ran)"
    fi
  else
    status=1
    { echo "${command[*]}"; cat "$report.tmp" "$out/$name.err"; } >"$report" 2>/dev/null
    echo "   FAIL (see $report)"
  fi
  rm -f "$report.tmp" "$out/$name.err"
done
exit $status
