#!/usr/bin/env python3
"""The PyTorch + timm side of deit's benchmarks (bench/compare.sh runs both sides).

  torch_baseline.py step --model NAME --input-size S --batch-size B [--compile]
                        [--grad-checkpointing] [--device cuda|cpu] [--json] ...
      One DeiT III training step in PyTorch as people run it: timm's deit3_* model, bf16 autocast,
      SDPA attention (timm's fused_attn: torch picks the backend), BCE on binarised targets, a
      fused optimizer, and cudnn.benchmark on (as timm's train.py and DeiT's main.py set it).
      --device cpu runs it in fp32 without autocast, as `deit bench step --device cpu` does,
      timed by the host's clock (bench/compare.sh --cpu: the comparison where no GPU is). torch
      has no LAMB, let alone a fused one, so the default is torch's fused
      AdamW as the stand-in (--opt lamb takes timm's Lamb, which is not fused). Prints the fields
      of `deit bench step --json` (bench/step_bench.h), with impl "torch" or "torch.compile".
      FLOPs per image, the peak for MFU and the drop-path rate are deit's
      (--train-gflops-per-image, --peak-tflops, --drop-path: compare.sh passes what `deit info`
      and `deit bench step` report), so both sides use one count and run the same model.

  torch_baseline.py attention --shapes-from KERNELS.json [--json]
      torch's SDPA attention forward and backward with the cuDNN and the flash backends, at the
      attention shapes of a `deit bench kernels --json` report, timed as deit times its kernels:
      CUDA events, warm-up, L2 flushed before every run, median of many. cuDNN's backward is the
      rival deit's C++ side cannot plan (bench/cudnn_attention.h).

Synthetic data already on the device; nothing is downloaded (pretrained=False).
"""
import argparse
import contextlib
import json
import platform
import re
import statistics
import sys
import time

import torch
import torch.nn.functional as F

# timm's names for the presets (RECIPE.md); the two timm lacks are its neighbours resized.
TIMM_MODELS = {
    "deit3_tiny": ("deit3_small_patch16_224", dict(embed_dim=192, num_heads=3)),
    "deit3_small": ("deit3_small_patch16_224", {}),
    "deit3_medium": ("deit3_medium_patch16_224", {}),
    "deit3_base": ("deit3_base_patch16_224", {}),
    "deit3_large": ("deit3_large_patch16_224", {}),
    "deit3_huge": ("deit3_huge_patch14_224", {}),
    "deit3_huge52": ("deit3_huge_patch14_224", dict(depth=52)),
}


def cuda_events(n):
    return [torch.cuda.Event(enable_timing=True) for _ in range(n)]


class HostMark:
    """A CUDA event's record() and elapsed_time() on the host's clock: on the CPU ops run as they
    are called, so the time a mark is recorded is the time the work before it ended."""

    def record(self):
        self.seconds = time.perf_counter()

    def elapsed_time(self, later):
        return 1000.0 * (later.seconds - self.seconds)


def marks_on(device, n):
    return cuda_events(n) if device.type == "cuda" else [HostMark() for _ in range(n)]


def wait_for(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "cpu"


class L2Flusher:
    """Reads a buffer of 4x the L2 size (zeros), as bench/cuda_timing.h's L2Flusher does: a
    read leaves clean lines, where a write would leave the timed kernel their write-back."""

    def __init__(self):
        l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 64 << 20)
        self.buffer = torch.zeros(max(4 * l2, 64 << 20), dtype=torch.uint8, device="cuda")

    def flush(self):
        self.buffer.sum()


# --- step -------------------------------------------------------------------------------------

def make_model(args):
    import timm
    name, preset_overrides = TIMM_MODELS[args.model]
    overrides = dict(preset_overrides)
    for key, flag in (("patch_size", "patch"), ("embed_dim", "dim"), ("depth", "depth"),
                      ("num_heads", "heads")):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    return timm.create_model(name, pretrained=False, img_size=args.input_size,
                             num_classes=args.num_classes, drop_path_rate=args.drop_path,
                             **overrides)


def make_optimizer(args, model, device):
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}]
    if args.opt == "adamw":
        if device.type == "cuda":
            return torch.optim.AdamW(groups, lr=args.lr, fused=True), "adamw (torch, fused)"
        return torch.optim.AdamW(groups, lr=args.lr), "adamw (torch)"
    from timm.optim import Lamb
    return Lamb(groups, lr=args.lr), "lamb (timm, not fused)"


def op_breakdown(step, steps, device):
    """Device time per PyTorch op (its own kernels, self time) over `steps` profiled steps; on the
    CPU, the op's own host time."""
    from torch.profiler import ProfilerActivity, profile
    on_gpu = device.type == "cuda"
    start, stop = marks_on(device, 2)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as prof:
        start.record()
        for _ in range(steps):
            step(None)
        stop.record()
        wait_for(device)
    profiled_step_ms = start.elapsed_time(stop) / steps
    rows = []
    for evt in prof.key_averages():
        # Ops launched from the host (aten ops, compiled kernels' launches) carry their kernels'
        # time as self device time; the kernel entries themselves would count it twice.
        if evt.device_type != torch.autograd.DeviceType.CPU:
            continue
        if not on_gpu:
            us = evt.self_cpu_time_total
        else:
            us = getattr(evt, "self_device_time_total", None)
            if us is None:
                us = evt.self_cuda_time_total
        if us <= 0:
            continue
        ms = us / 1000.0 / steps
        rows.append({"op": evt.key, "ms_per_step": ms, "calls_per_step": evt.count / steps,
                     "fraction_of_step": ms / profiled_step_ms if profiled_step_ms > 0 else 0.0})
    rows.sort(key=lambda r: -r["ms_per_step"])
    in_ops = sum(r["ms_per_step"] for r in rows)
    return rows, profiled_step_ms, max(0.0, profiled_step_ms - in_ops)


def configure_backends():
    """The backend settings of the training scripts people run: timm's train.py and DeiT's main.py
    both set cudnn.benchmark, which lets cuDNN time its algorithms for the patch embedding's
    convolution (3 input channels, a 16x16 stride-16 kernel). Without it, cuDNN's heuristic choice
    took 1.7 ms forward and 0.9 ms backward a step for deit3_small at batch 256 on an H200
    (bench/results/2026-12-04-nvidia-h200-compare-small-base-3.md), 8% of torch.compile's step,
    for 30 GFLOP a pass (a twentieth of a ms at the GEMM rate); what benchmark mode saves there is
    not yet measured. Returns the settings for the report."""
    torch.backends.cudnn.benchmark = True
    return {"cudnn_benchmark": torch.backends.cudnn.benchmark}


def run_step(args):
    torch.manual_seed(args.seed)
    device = torch.device("cuda:0" if args.device == "cuda" else "cpu")
    on_gpu = device.type == "cuda"
    backends = configure_backends()
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    model = make_model(args).to(device).train()
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)  # torch.utils.checkpoint around every block
    optimizer, optimizer_name = make_optimizer(args, model, device)
    forward = torch.compile(model) if args.compile else model
    B, S, K = args.batch_size, args.input_size, args.num_classes
    images = torch.randn(B, 3, S, S, device=device)
    # Binarised mixup targets: two classes on per sample, as deit's synthetic batch.
    targets = torch.zeros(B, K, device=device)
    targets.scatter_(1, torch.randint(0, K, (B, 2), device=device), 1.0)
    criterion = torch.nn.BCEWithLogitsLoss()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else contextlib.nullcontext()

    def step(marks):
        if marks is not None:
            marks[0].record()
        with autocast:
            loss = criterion(forward(images), targets)
        if marks is not None:
            marks[1].record()
        loss.backward()
        if marks is not None:
            marks[2].record()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if marks is not None:
            marks[3].record()

    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step(None)
    wait_for(device)
    warmup_s = time.perf_counter() - t0

    marks = [marks_on(device, 4) for _ in range(args.steps)]
    for m in marks:
        step(m)
    wait_for(device)
    step_ms = marks[0][0].elapsed_time(marks[-1][3]) / args.steps
    phases = [sum(m[p].elapsed_time(m[p + 1]) for m in marks) / args.steps for p in range(3)]
    # The caching allocator's peak, as deit's; torch keeps no such count for the CPU.
    peak_memory = torch.cuda.max_memory_allocated() if on_gpu else None
    images_per_s = 1000.0 * B / step_ms

    result = {
        "impl": "torch.compile" if args.compile else "torch",
        "model": args.model,
        "shape": {"patch": model.patch_embed.patch_size[0], "dim": model.embed_dim,
                  "depth": len(model.blocks), "heads": model.blocks[0].attn.num_heads,
                  "num_classes": model.num_classes},
        "input_size": S, "batch_size": B, "world_size": 1,
        "device": str(device), "device_name": device_name(device),
        "precision": "bf16" if on_gpu else "fp32", "optimizer": optimizer_name,
        "drop_path": args.drop_path,
        # timm keeps every activation and runs drop-path's branches over the whole batch, dropped
        # samples included (its DropPath multiplies them by 0).
        "recompute_gelu": False, "whole_batch_branches": True, "branch_sample_share": 1.0,
        "grad_checkpointing": args.grad_checkpointing,
        # deit's cuBLASLt settings: not PyTorch's to choose.
        "gemm_epilogues": None, "gemm_autotune": None, "gemm_plans_off_first_choice": None,
        "zero": False,
        "warmup_steps": args.warmup, "timed_steps": args.steps,
        "step_ms": step_ms, "images_per_s": images_per_s,
        "train_gflops_per_image": args.train_gflops_per_image,
        "achieved_tflops": None, "peak_tflops": args.peak_tflops,
        "peak_tflops_source": "--peak-tflops" if args.peak_tflops else None, "mfu": None,
        "peak_memory_bytes": peak_memory,
        "phases_ms": {"forward": phases[0], "backward": phases[1], "optimizer": phases[2]},
        "breakdown": None,
        # deit's --cuda-graph rows; no CUDA graph is captured here.
        "graph_step_ms": None, "graph_images_per_s": None, "graph_error": None,
        "comm": None,
        # PyTorch's side only:
        "warmup_s": warmup_s,  # with --compile: the compilation, mostly
        **backends,
        "torch_version": torch.__version__, "timm_version": __import__("timm").__version__,
        "sdpa_backends_enabled": {
            "flash": torch.backends.cuda.flash_sdp_enabled(),
            "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
            "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
        } if on_gpu else None,
    }
    if args.train_gflops_per_image:
        result["achieved_tflops"] = args.train_gflops_per_image * images_per_s / 1000.0
        if args.peak_tflops:
            result["mfu"] = result["achieved_tflops"] / args.peak_tflops
    if args.profile_steps > 0:
        rows, profiled_ms, other_ms = op_breakdown(step, args.profile_steps, device)
        result.update(breakdown=rows, profiled_step_ms=profiled_ms, other_ms=other_ms)
    return result


# --- attention --------------------------------------------------------------------------------

def median_ms(work, flusher, warmup, repeats, before=None):
    """Median of `repeats` timed calls of work() after `warmup`, L2 flushed before each;
    before() (untimed) runs ahead of each flush."""
    for _ in range(warmup):
        if before:
            before()
        work()
    times = []
    for _ in range(repeats):
        if before:
            before()
        flusher.flush()
        start, stop = cuda_events(2)
        start.record()
        work()
        stop.record()
        times.append((start, stop))
    torch.cuda.synchronize()
    ms = sorted(a.elapsed_time(b) for a, b in times)
    return statistics.median(ms), ms[0], ms[-1]


def attention_shapes(path):
    with open(path) as f:
        report = json.load(f)
    shapes = []
    for row in report["kernels"]:
        if row["kernel"] == "attention forward" and row["impl"] == "deit":
            shapes.append({k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", row["shape"])})
    return shapes


def attention_tensors(B, T, H, D, device="cuda", dtype=torch.bfloat16):
    """Q, K, V and the output's gradient, (B, H, T, D) each, laid out as timm's Attention hands
    them to SDPA in a training step: Q, K and V strided views of the packed qkv linear output
    (B, T, 3, H, D), and the gradient that of out.transpose(1, 2).reshape(B, T, C), i.e. a
    (B, T, H, D) buffer seen as (B, H, T, D), as deit's kernel gets it. (A contiguous (B, H, T, D)
    gradient, which no ViT produces, makes torch's cuDNN backward copy it into the output's layout
    first, inside the timed region, on cuDNN before 9.5.1.)"""
    qkv = torch.rand(B, T, 3, H, D, device=device, dtype=dtype) * 2 - 1
    q, k, v = (t.detach().requires_grad_() for t in qkv.permute(2, 0, 3, 1, 4).unbind(0))
    dout = (torch.rand(B, T, H, D, device=device, dtype=dtype) * 2 - 1).transpose(1, 2)
    return q, k, v, dout


def run_attention(args):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    flusher = L2Flusher()
    rows = []
    for s in attention_shapes(args.shapes_from):
        B, T, H, D = s["B"], s["T"], s["H"], s["D"]
        shape = f"B={B} T={T} H={H} D={D}"
        fwd_flops = 4.0 * B * H * T * T * D
        q, k, v, dout = attention_tensors(B, T, H, D)
        for name, backend in (("torch-cudnn", SDPBackend.CUDNN_ATTENTION),
                              ("torch-flash", SDPBackend.FLASH_ATTENTION)):
            with sdpa_kernel([backend]):
                state = {}

                def fwd():
                    state["out"] = F.scaled_dot_product_attention(q, k, v)

                def bwd():
                    torch.autograd.grad(state["out"], (q, k, v), dout)

                for kernel, work, before, flops in (
                        ("attention forward", fwd, None, fwd_flops),
                        ("attention backward", bwd, fwd, 2.5 * fwd_flops)):
                    row = {"kernel": kernel, "impl": name, "shape": shape}
                    try:
                        med, lo, hi = median_ms(work, flusher, args.warmup, args.repeats, before)
                        row.update(available=True, median_ms=med, min_ms=lo, max_ms=hi,
                                   flops=flops, tflops=flops / (med * 1e-3) / 1e12)
                    except RuntimeError as e:
                        row.update(available=False, note=str(e).splitlines()[0])
                    print(f"torch attention: {kernel} ({name}) {shape}", file=sys.stderr)
                    rows.append(row)
    return {"device": torch.cuda.get_device_name(0), "torch_version": torch.__version__,
            "cudnn": torch.backends.cudnn.version(), "warmup": args.warmup,
            "repeats": args.repeats, "l2_flushed": True, "kernels": rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    step = sub.add_parser("step", help="training step speed (deit bench step's fields)")
    step.add_argument("--model", required=True, choices=sorted(TIMM_MODELS))
    step.add_argument("--input-size", type=int, default=224)
    step.add_argument("--batch-size", type=int, default=64)
    step.add_argument("--num-classes", type=int, default=1000)
    for flag in ("patch", "dim", "depth", "heads"):
        step.add_argument(f"--{flag}", type=int, default=None, help=f"override the preset's {flag}")
    step.add_argument("--compile", action="store_true", help="torch.compile the model")
    step.add_argument("--grad-checkpointing", action="store_true",
                      help="recompute every block in backward (timm's set_grad_checkpointing), "
                           "as deit bench step --grad-checkpointing does")
    step.add_argument("--opt", choices=("adamw", "lamb"), default="adamw")
    step.add_argument("--lr", type=float, default=1e-3)
    step.add_argument("--drop-path", type=float, default=0.0,
                      help="drop-path rate (compare.sh passes the one deit ran with)")
    step.add_argument("--warmup", type=int, default=5)
    step.add_argument("--steps", type=int, default=10)
    step.add_argument("--profile-steps", type=int, default=2)
    step.add_argument("--train-gflops-per-image", type=float, default=None,
                      help="deit's count (`deit info --json`), for achieved TFLOP/s and MFU")
    step.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU")
    step.add_argument("--seed", type=int, default=0)
    step.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                      help="cpu: fp32, no autocast, timed by the host's clock")
    step.add_argument("--json", action="store_true", help="print one JSON object")
    attention = sub.add_parser("attention", help="SDPA cuDNN / flash vs deit's attention shapes")
    attention.add_argument("--shapes-from", required=True,
                           help="a `deit bench kernels --json` report")
    attention.add_argument("--warmup", type=int, default=5)
    attention.add_argument("--repeats", type=int, default=30)
    attention.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if getattr(args, "device", "cuda") == "cuda" and not torch.cuda.is_available():
        sys.exit("torch_baseline.py needs a CUDA device (step takes --device cpu)")
    result = run_step(args) if args.command == "step" else run_attention(args)
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
