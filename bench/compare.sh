#!/usr/bin/env bash
# deit against PyTorch + timm on one GPU, in one go: `deit bench kernels` and PyTorch's SDPA at the
# same attention shapes, then for each model `deit bench step`, the same step in PyTorch eager and
# under torch.compile (bench/torch_baseline.py). bench/report.py writes the Markdown table (ratio
# column: deit / PyTorch) to bench/results/DATE-DEVICE-compare.md with the date, device, commit and
# command, and prints it.
#
#   bench/compare.sh [--quick | --every-model | --full | --cpu] [--models M,M,...] [--build DIR]
#                    [--repeat N] [--deadline SECONDS]
#
#   --quick (default) deit3_small and deit3_base at 224, batch 256 per GPU; kernels at ViT-B's
#           width, 30 runs each. A few minutes on an H200, most of it torch.compile compiling.
#   --every-model  deit3_small, base, large, huge at 224 (batch 256, 256, 128, 64); kernels at
#           ViT-B's width, 20 runs each: the table issue 7 asks for, in about ten minutes.
#   --full  deit3_small, base, large, huge at 224 and at the recipe's low resolutions (B and L
#           192, H 160), and deit3_huge at 224 with batch 256 and every block recomputed in backward
#           on both sides (--grad-checkpointing); kernels at every preset width, 100 runs each.
#           Tens of minutes.
#   --cpu   no GPU: the step alone, on the CPU in fp32 on both sides (deit's CPU reference path
#           against PyTorch's CPU kernels), for the demo's model (64 px, batch 64) and deit3_tiny
#           at 224 (batch 16), 10 timed steps each; no kernels. It runs the whole comparison where
#           no GPU is, so the scripts are tried before a GPU's minutes are spent on them.
#   --models  only the mode's runs of these models (e.g. deit3_large,deit3_huge: a lent machine's
#           second call finishing a table whose other rows an earlier call measured)
#   --build the build folder holding `deit` (default build-gpu, what bench/gpu-check.sh builds;
#           with --cpu, build, what scripts/setup.sh builds)
#   --repeat  run each model's three steps (deit, PyTorch, torch.compile) N times in turn, each in
#           a process of its own; the table takes each side's fastest run and lists them all. One
#           run a side is at the mercy of its host: a torch.compile step whose kernels took the
#           usual time measured 9% slow once, its GPU waiting on the CPU
#           (bench/results/2026-12-04-h200-gpu-check-4.md).
#   --deadline  finish within SECONDS: each run's time limit is cut to what is left, a run that
#           would start with under a minute left is listed as not run, and the report is written
#           with what finished (a lent GPU machine's minutes are few)
#
# Needs the built deit, nvidia-smi (but --cpu), and a python3 with torch and timm (PYTHON, else
# python3); no network, no Debian packages. A run that fails is reported in the table's Failures
# section; the others go on.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
mode=quick
build=""
models=""
repeat=1
deadline_at=""
invocation="bench/compare.sh $*"
while [ $# -gt 0 ]; do
  case $1 in
    --quick) mode=quick ;;
    --every-model) mode=every-model ;;
    --full) mode=full ;;
    --cpu) mode=cpu ;;
    --models) models=",${2:?--models needs a list of models},"; shift ;;
    --build) build=$2; shift ;;
    --repeat) repeat=${2:?--repeat needs a count}; shift ;;
    --deadline) deadline_at=$(($(date +%s) + ${2:?--deadline needs seconds})); shift ;;
    *) echo "usage: bench/compare.sh [--quick | --every-model | --full | --cpu]" \
         "[--models M,M,...] [--build DIR] [--repeat N] [--deadline SECONDS]" >&2
       exit 2 ;;
  esac
  shift
done
if ! [[ $repeat =~ ^[1-9][0-9]*$ ]]; then
  echo "compare.sh: --repeat takes a count of at least 1, not '$repeat'" >&2
  exit 2
fi
if [ -z "$build" ]; then
  build=build-gpu
  [ "$mode" = cpu ] && build=build
fi
deit=$build/deit
python=${PYTHON:-python3}
device=cuda
step_flags=(--cuda-graph)  # deit's only: the step replayed as one graph too
step_repeats=()            # both sides' --warmup and --steps (default: each side's own)
if [ ! -x "$deit" ]; then
  echo "compare.sh: no $deit: build deit first (bench/gpu-check.sh does)" >&2
  exit 1
fi

if [ "$mode" = full ]; then
  # model, input size, batch per GPU: the recipe's per-GPU batch where it fits (2048 over 8 GPUs
  # for S and B), smaller for L and H; then flags both sides take.
  configs=("deit3_small 224 256" "deit3_base 224 256" "deit3_base 192 256"
           "deit3_large 224 128" "deit3_large 192 128" "deit3_huge 224 64" "deit3_huge 160 64"
           "deit3_huge 224 256 --grad-checkpointing")
  kernel_flags=(--full)
  torch_repeats=(--warmup 10 --repeats 100)
elif [ "$mode" = cpu ]; then
  configs=("deit3_small 64 64 --dim 96 --depth 4 --heads 3 --num-classes 10" "deit3_tiny 224 16")
  device=cpu
  step_flags=()
  step_repeats=(--warmup 3 --steps 10)
elif [ "$mode" = every-model ]; then
  configs=("deit3_small 224 256" "deit3_base 224 256" "deit3_large 224 128" "deit3_huge 224 64")
  kernel_flags=(--repeats 20)
  torch_repeats=(--warmup 5 --repeats 20)
else
  configs=("deit3_small 224 256" "deit3_base 224 256")
  kernel_flags=()
  torch_repeats=(--warmup 5 --repeats 30)
fi

if [ "$device" = cpu ]; then
  gpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
  gpu="${gpu:-unknown CPU}, $(nproc) cores"
else
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
  gpu=${gpu:-unknown GPU}
fi
# A lent GPU machine gets a copy of the working tree without .git: there the caller names the
# commit (DEIT_COMMIT=$(git rev-parse --short HEAD) in the command it sends).
if [ -n "${DEIT_COMMIT:-}" ]; then
  commit=$DEIT_COMMIT
else
  commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    commit="$commit (with uncommitted changes)"
  fi
fi
work=$(mktemp -d)
runs=0
last=""

# record KIND LABEL SECONDS COMMAND...: runs the command with a time limit, keeping its stdout
# (one JSON object), stderr, exit status and command line for report.py. Under --deadline the limit
# is cut to what is left but the report's 30 s, and a command that would get under a minute goes
# to not-run.txt instead.
record() {
  local kind=$1 label=$2 limit=$3
  shift 3
  if [ -n "$deadline_at" ]; then
    local left=$((deadline_at - $(date +%s) - 30))
    if ((left < 60)); then
      echo "$*" >>"$work/not-run.txt"
      echo "== not run (the --deadline): $*" >&2
      last=$work/not-run
      echo skipped >"$last.rc"
      return
    fi
    ((left < limit)) && limit=$left
  fi
  runs=$((runs + 1))
  last=$(printf '%s/%03d' "$work" "$runs")
  echo "$kind" >"$last.kind"
  echo "$label" >"$last.label"
  echo "$*" >"$last.cmd"
  echo "== $kind $label: $*" >&2
  local start=$SECONDS
  timeout "$limit" "$@" >"$last.json" 2>"$last.err"
  echo $? >"$last.rc"
  [ "$(cat "$last.rc")" = 124 ] && echo "stopped at its $limit s limit" >>"$last.err"
  echo "   exit $(cat "$last.rc") after $((SECONDS - start)) s" >&2
}

# field FILE KEY: a top-level field of the JSON object in FILE, empty when absent or null.
field() {
  python3 -c 'import json,sys
try:
    v = json.load(open(sys.argv[1])).get(sys.argv[2])
except Exception:
    v = None
print("" if v is None else v)' "$1" "$2"
}

if [ "$device" = cuda ]; then
  record kernels deit 900 "$deit" bench kernels --json "${kernel_flags[@]}"
  if [ "$(cat "$last.rc")" = 0 ]; then
    record attention torch 900 "$python" bench/torch_baseline.py attention \
      --shapes-from "$last.json" --json "${torch_repeats[@]}"
  fi
fi

for config in "${configs[@]}"; do
  # $flags stays unquoted below: no words, or several.
  read -r model size batch flags <<<"$config"
  [ -n "$models" ] && [[ $models != *",$model,"* ]] && continue
  "$deit" info --model "$model" --input-size "$size" --json $flags >"$work/info.json"
  gflops=$(field "$work/info.json" train_gflops_per_image)
  # --cuda-graph: the step replayed as one graph too, a row of its own under the model's phases
  # (a failed capture is reported there and spares the eager numbers).
  # --opt adamw: the optimizer PyTorch runs (fused AdamW; torch has no fused LAMB), so that both
  # sides time the same step.
  drop_path=""
  peak=""
  for ((round = 1; round <= repeat; round++)); do
    record step "$config" 900 "$deit" bench step --model "$model" --input-size "$size" \
      --batch-size "$batch" --device "$device" "${step_flags[@]}" "${step_repeats[@]}" \
      --opt adamw --json $flags
    # PyTorch runs the model deit ran: its drop-path rate, its FLOP count, its peak for MFU (from
    # an earlier round's run if this one failed).
    value=$(field "$last.json" drop_path) && [ -n "$value" ] && drop_path=$value
    value=$(field "$last.json" peak_tflops) && [ -n "$value" ] && peak=$value
    torch_args=(--model "$model" --input-size "$size" --batch-size "$batch" --device "$device"
                --drop-path "${drop_path:-0}" "${step_repeats[@]}" --json $flags)
    [ -n "$gflops" ] && torch_args+=(--train-gflops-per-image "$gflops")
    [ -n "$peak" ] && torch_args+=(--peak-tflops "$peak")
    record step "$config" 900 "$python" bench/torch_baseline.py step "${torch_args[@]}"
    record step "$config" 1200 "$python" bench/torch_baseline.py step "${torch_args[@]}" --compile
  done
done

slug=$(echo "$gpu" | tr '[:upper:] ' '[:lower:]-' | tr -cd 'a-z0-9-')
mkdir -p bench/results
out="bench/results/$(date -u +%Y-%m-%d)-$slug-compare.md"
if ! python3 bench/report.py "$work" --device "$gpu" --commit "$commit" \
  --command "$invocation" --out "$out"; then
  echo "compare.sh: bench/report.py failed; the runs' outputs are kept in $work" >&2
  exit 1
fi
echo "written: $out"
