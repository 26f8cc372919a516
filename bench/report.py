#!/usr/bin/env python3
"""Turns the runs bench/compare.sh recorded into one Markdown report (plain Python, no packages).

  report.py RUN_DIR --device NAME --commit SHA --command CMD --out FILE.md

RUN_DIR holds one NNN.{kind,label,cmd,rc,json,err} group per run, in the order they ran: kind is
`kernels` (deit bench kernels --json), `attention` (torch_baseline.py attention --json) or `step`
(deit bench step --json / torch_baseline.py step --json, told apart by their `impl` field). A step
that ran more than once (compare.sh --repeat) counts with its fastest run, and the report lists
every run's images/s.
RUN_DIR/not-run.txt, when there, lists the commands compare.sh's --deadline left out.
Every ratio is deit's speed over the other's: > 1 means deit is faster.
"""
import argparse
import datetime
import glob
import json
import os

GIB = 1024.0 ** 3


def load_runs(run_dir):
    runs = []
    for cmd_path in sorted(glob.glob(os.path.join(run_dir, "*.cmd"))):
        stem = cmd_path[:-4]

        def read(ext):
            path = f"{stem}.{ext}"
            return open(path).read().strip() if os.path.exists(path) else ""

        run = {"kind": read("kind"), "label": read("label"), "cmd": read("cmd"),
               "rc": int(read("rc") or 1), "err": read("err"), "result": None}
        try:
            # A failed run may still have printed what it measured before it stopped (deit bench
            # kernels does, with an "error" field): keep it, and the failure is listed as well.
            run["result"] = json.loads(read("json"))
        except json.JSONDecodeError as e:
            if run["rc"] == 0:
                run["rc"], run["err"] = -1, f"output is not one JSON object ({e})\n" + run["err"]
        runs.append(run)
    return runs


def fmt(value, spec=".1f", none="-"):
    return none if value is None else format(value, spec)


def ratio(ours, theirs):
    return None if not ours or not theirs else ours / theirs


def shape_text(result):
    shape = result.get("shape")
    text = ", ".join(f"{k} {v}" for k, v in shape.items()) if shape else "an unstated shape"
    rate = result.get("drop_path")
    return text if rate is None else f"{text}, drop-path {rate}"


def same_model(ours, theirs):
    """Both sides trained the same model: its shape and its drop-path rate (compare.sh gives
    PyTorch deit's rate, or 0 when no deit run of the configuration reported one yet)."""
    rates = (ours.get("drop_path"), theirs.get("drop_path"))
    return ours.get("shape") == theirs.get("shape") and \
        (None in rates or rates[0] == rates[1])  # results from before the rate was recorded


def step_section(runs):
    by_config, every_run = {}, {}
    for run in runs:
        if run["kind"] != "step":
            continue
        impl = run["result"]["impl"] if run["result"] else None
        config = by_config.setdefault(run["label"], {})
        if impl:
            every_run.setdefault(run["label"], {}).setdefault(impl, []).append(run["result"])
            best = config.get(impl)
            speed = run["result"].get("images_per_s") or 0
            if best is None or speed > (best.get("images_per_s") or 0):
                config[impl] = run["result"]
    lines = ["## Training step", "",
             "Images/s per process (one GPU each) on a synthetic batch already on the device; "
             "MFU against the dense bf16 peak deit reports (`peak_tflops`), with deit's FLOP "
             "count (6 x forward MACs) on both sides. Peak memory: each side's caching "
             "allocator (torch keeps none for the CPU). Both sides train the same model with "
             "the same drop-path rate (`drop_path`), but deit skips work timm does and then "
             "discards: its last block computes the class token alone past the qkv layer, and "
             "a branch that drop-path drops for more than 10% of the batch runs on the kept "
             "samples alone (docs/training-step.md); its MFU counts the whole model anyway. "
             "`deit branches`: the share of the samples deit's residual branches ran on (timm: "
             "100%); under 100%, part of deit's lead is work it skipped (`deit bench step "
             "--whole-batch-branches` measures it without).", "",
             "| model | px | batch | deit img/s | torch img/s | torch.compile img/s | "
             "deit / torch | deit / compile | deit MFU | compile MFU | deit peak GiB | "
             "compile peak GiB | deit branches |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    details, mismatches = [], []
    for label, config in by_config.items():
        model, size, batch, *flags = label.split()  # flags: what both sides ran with
        if flags:
            model += " (" + " ".join(flags) + ")"
        ours, eager, compiled = (config.get(k) for k in ("deit", "torch", "torch.compile"))
        # A ratio means something only when both sides trained the same model.
        comparable = {}
        for side, theirs in (("torch", eager), ("torch.compile", compiled)):
            comparable[side] = not ours or not theirs or same_model(ours, theirs)
            if not comparable[side]:
                mismatches.append(f"- {label}: deit ran {shape_text(ours)}; {side} ran "
                                  f"{shape_text(theirs)}. No ratio is given.")

        def get(result, key):
            return result.get(key) if result else None

        def pct(result):
            return fmt(100 * result["mfu"], ".1f") + "%" if result and result.get("mfu") else "-"

        def speedup(theirs, side):
            if not comparable[side]:
                return "n/a"
            return fmt(ratio(get(ours, "images_per_s"), get(theirs, "images_per_s")), ".2f")

        def gib(result):
            peak = get(result, "peak_memory_bytes")
            return "-" if peak is None else fmt(peak / GIB, ".1f")

        def branches(result):
            share = get(result, "branch_sample_share")
            return "-" if share is None else fmt(100 * share, ".1f") + "%"

        lines.append(
            f"| {model} | {size} | {batch} | {fmt(get(ours, 'images_per_s'), '.0f')} | "
            f"{fmt(get(eager, 'images_per_s'), '.0f')} | "
            f"{fmt(get(compiled, 'images_per_s'), '.0f')} | "
            f"{speedup(eager, 'torch')} | {speedup(compiled, 'torch.compile')} | "
            f"{pct(ours)} | {pct(compiled)} | {gib(ours)} | {gib(compiled)} | "
            f"{branches(ours)} |")
        details += phase_details(label, ours, eager, compiled)
    optimizers = sorted({f"{r['impl']}: {r['optimizer']}" for c in by_config.values()
                         for r in c.values()})
    precisions = sorted({f"{r['impl']}: {r['precision']}" for c in by_config.values()
                         for r in c.values()})
    repeated = [f"- {label}: " + "; ".join(
                    f"{impl} " + ", ".join(fmt(r.get("images_per_s"), ".0f") for r in results)
                    for impl, results in sides.items())
                for label, sides in every_run.items()
                if any(len(results) > 1 for results in sides.values())]
    if repeated:
        lines += ["", "Each side's fastest run above; images/s of every run, in order:", ""] + \
            repeated
    if mismatches:
        lines += ["", "**The sides measured different models:**", ""] + mismatches
    if precisions:
        lines += ["", "Precision: " + "; ".join(precisions) + "."]
    if optimizers:
        lines += ["", "Optimizers: " + "; ".join(optimizers) + ". torch has no LAMB, so its "
                  "AdamW (fused on the GPU) stands in (LAMB does a little more work: per-tensor "
                  "trust ratios)."]
    return lines + [""] + details


def phase_details(label, ours, eager, compiled):
    sides = [(name, r) for name, r in (("deit", ours), ("torch", eager),
                                        ("torch.compile", compiled)) if r]
    if not sides:
        return []
    lines = [f"### {label}: where the step goes", "",
             "| phase (ms per step) | " + " | ".join(name for name, _ in sides) + " |",
             "|---|" + "---|" * len(sides)]
    for phase in ("forward", "backward", "optimizer"):
        lines.append(f"| {phase} | " +
                     " | ".join(fmt(r["phases_ms"][phase], ".2f") for _, r in sides) + " |")
    lines.append("| step | " + " | ".join(fmt(r["step_ms"], ".2f") for _, r in sides) + " |")
    if any(r.get("graph_step_ms") for _, r in sides):
        lines.append("| step replayed as one CUDA graph | " +
                     " | ".join(fmt(r.get("graph_step_ms"), ".2f") for _, r in sides) + " |")
    for name, r in sides:
        if r.get("graph_error"):
            lines.append(f"\n{name}: the CUDA graph of the step failed: {r['graph_error']}")
    for name, r in sides:
        share = r.get("branch_sample_share")
        if share is not None and share < 1:
            lines.append(f"\n{name}'s residual branches ran on {fmt(100 * share, '.1f')}% of the "
                         "samples (drop-path's kept ones alone; the FLOP count is the whole batch's).")
    for name, r in sides:
        if not r.get("breakdown"):
            continue
        lines += ["", f"{name}, top ops of a profiled step ({fmt(r['profiled_step_ms'], '.2f')} ms; "
                  f"{fmt(r['other_ms'], '.2f')} ms outside any op):", "",
                  "| op | ms per step | share | calls |", "|---|---|---|---|"]
        for op in r["breakdown"][:10]:
            lines.append(f"| {op['op'][:60]} | {fmt(op['ms_per_step'], '.3f')} | "
                         f"{fmt(100 * op['fraction_of_step'], '.1f')}% | "
                         f"{fmt(op['calls_per_step'], '.0f')} |")
    if any(r.get("comm") for _, r in sides):
        for name, r in sides:
            if r.get("comm"):
                c = r["comm"]
                how = ", ".join(v for v in (c["backend"], c.get("measured_by")) if v)
                lines.append(f"\n{name}: gradient {c.get('reduction', 'all-reduce')} "
                             f"{fmt(c['total_ms_per_step'], '.2f')} ms per step, "
                             f"{fmt(c['exposed_ms_per_step'], '.2f')} ms of it not hidden behind "
                             f"backward ({how})")
                if c.get("all_gather_ms_per_step") is not None:
                    lines.append(f"{name}: all-gather of the updated parameters "
                                 f"{fmt(c['all_gather_ms_per_step'], '.2f')} ms per step, none "
                                 f"of it hidden")
    return lines + [""]


def kernel_section(runs):
    deit = next((r["result"] for r in runs if r["kind"] == "kernels" and r["result"]), None)
    torch_attention = next((r["result"] for r in runs if r["kind"] == "attention" and r["result"]),
                           None)
    if not deit:
        if not any(r["kind"] == "kernels" for r in runs):  # compare.sh --cpu runs none
            return []
        return ["## Kernels", "", "`deit bench kernels` did not run (see Failures).", ""]
    lines = ["## Kernels", "",
             f"Ceilings measured in the same run: copy {fmt(deit['copy_gbps'], '.0f')} GB/s "
             f"(bytes read + written), cuBLASLt bf16 GEMM 8192^3 "
             f"{fmt(deit['gemm_tflops'], '.1f')} TFLOP/s. Median of {deit['repeats']} runs after "
             f"{deit['warmup']} warm-up runs, L2 flushed before each. cuDNN: {deit['cudnn']}.", "",
             "Memory-bound kernels, judged by the bytes they must move:", "",
             "| kernel | shape | median ms | GB/s | of copy bandwidth |", "|---|---|---|---|---|"]
    if deit.get("error"):
        lines[2:2] = [f"**The run stopped early** (the rows below are those before it): "
                      f"{deit['error']}", ""]
    for k in deit["kernels"]:
        if k.get("bytes") and k["impl"] == "deit":
            lines.append(f"| {k['kernel']} | {k['shape']} | {fmt(k['median_ms'], '.4f')} | "
                         f"{fmt(k['gbps'], '.0f')} | {fmt(100 * k['fraction_of_ceiling'], '.1f')}% |")
    rivals = {}
    for source in (deit, torch_attention or {"kernels": []}):
        for k in source["kernels"]:
            if k["kernel"].startswith("attention"):
                rivals.setdefault((k["kernel"], k["shape"]), {})[k["impl"]] = k
    impls = ["deit", "cudnn", "torch-cudnn", "torch-flash"]
    lines += ["", "Attention, judged by its matmul FLOPs (forward 4 B H T^2 D, backward 2.5x that) "
              "against the GEMM rate, and against the libraries on the same shapes: `cudnn` is "
              "cuDNN's fused attention planned by deit through the graph API (forward only), "
              "`torch-*` are PyTorch's SDPA backends. Ratio: the fastest rival's time / deit's "
              "time.", "",
              "| pass | shape | " + " | ".join(f"{i} ms" for i in impls) +
              " | deit TFLOP/s | deit of GEMM | deit / best rival |",
              "|---|---|" + "---|" * (len(impls) + 3)]
    for (kernel, shape), by_impl in rivals.items():
        def ms(impl):
            k = by_impl.get(impl)
            return k["median_ms"] if k and k.get("available") else None
        ours = by_impl.get("deit")
        rival_times = [ms(i) for i in impls[1:] if ms(i)]
        best = min(rival_times) if rival_times else None
        lines.append(
            f"| {kernel.removeprefix('attention ')} | {shape} | " +
            " | ".join(fmt(ms(i), ".4f") for i in impls) +
            f" | {fmt(ours.get('tflops') if ours else None, '.1f')}"
            f" | {fmt(100 * ours['fraction_of_ceiling'], '.1f') + '%' if ours else '-'}"
            f" | {fmt(ratio(best, ms('deit')), '.2f')} |")
    notes = sorted({f"{i}: {k['note']}" for v in rivals.values() for i, k in v.items()
                    if not k.get("available") and k.get("note")})
    if notes:
        lines += ["", "Unavailable: " + "; ".join(notes)]
    return lines + [""] + gemm_lines(deit)


def gemm_lines(deit):
    """The linear layers' GEMMs, with cuBLASLt's first choice and autotuned, if the run has them."""
    gemms = {}
    for k in deit["kernels"]:
        if k["kernel"].startswith("linear ") and k["impl"].startswith("cublaslt"):
            gemms.setdefault((k["kernel"], k["shape"]), {})[k["impl"]] = k
    if not gemms:
        return []
    lines = ["GEMMs of a block's linear layers (M tokens, K in and N out features), judged by their "
             "FLOPs (2 M K N) against the 8192^3 GEMM: cuBLASLt's first choice, and the fastest of "
             "its offers (`--gemm-autotune`).", "",
             "| pass | layer and shape | first choice ms | autotuned ms | speedup | TFLOP/s "
             "| of GEMM |", "|---|---|---|---|---|---|---|"]
    for (kernel, shape), by_impl in gemms.items():
        first, tuned = by_impl.get("cublaslt"), by_impl.get("cublaslt-autotuned")
        first_ms, tuned_ms = (k.get("median_ms") if k else None for k in (first, tuned))
        best = min((k for k in (first, tuned) if k and k.get("median_ms")),
                   key=lambda k: k["median_ms"], default=None)
        lines.append(
            f"| {kernel.removeprefix('linear ')} | {shape} | {fmt(first_ms, '.4f')} | "
            f"{fmt(tuned_ms, '.4f')} | {fmt(ratio(first_ms, tuned_ms), '.2f')} | "
            f"{fmt(best.get('tflops') if best else None, '.1f')} | "
            f"{fmt(100 * best['fraction_of_ceiling'], '.1f') + '%' if best else '-'} |")
    return lines + [""]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--device", required=True, help="the GPU's name (or the CPU's)")
    parser.add_argument("--commit", required=True)
    parser.add_argument("--command", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    runs = load_runs(args.run_dir)
    versions = next((f"PyTorch {r['result']['torch_version']}, timm {r['result']['timm_version']}"
                     for r in runs if r["result"] and "timm_version" in r["result"]),
                    "PyTorch: no successful run")
    lines = [f"# deit vs PyTorch + timm on {args.device}", "",
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"- device: {args.device}", f"- commit: {args.commit}", f"- command: `{args.command}`",
             f"- {versions}",
             "- ratios are deit's speed over the other's: > 1 means deit is faster", ""]
    lines += step_section(runs) + kernel_section(runs)
    failed = [r for r in runs if r["rc"] != 0]
    if failed:
        lines += ["## Failures", ""]
        for r in failed:
            tail = "\n".join(r["err"].splitlines()[-6:])
            lines += [f"- `{r['cmd']}` (exit {r['rc']}):", "", "```", tail, "```", ""]
    not_run_path = os.path.join(args.run_dir, "not-run.txt")
    if os.path.exists(not_run_path):
        lines += ["## Not run (compare.sh's --deadline)", ""]
        lines += [f"- `{cmd}`" for cmd in open(not_run_path).read().splitlines()] + [""]
    lines += ["## Commands run", ""] + [f"- `{r['cmd']}`" for r in runs] + [""]
    lines += ["## Raw results", "", "<details><summary>one JSON object per run</summary>", "",
              "```json"] + [json.dumps(r["result"]) for r in runs if r["result"]] + \
             ["```", "", "</details>", ""]
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines[:lines.index("## Commands run")]))


if __name__ == "__main__":
    main()
