#!/usr/bin/env python3
"""deit's kernels before and after a change, from two runs of `deit bench kernels` on the same GPU.

Each run is either the JSON `deit bench kernels --json` prints or a comparison report of
bench/compare.sh (bench/results/DATE-DEVICE-compare*.md), whose "Raw results" section holds that
JSON. Prints a Markdown table of deit's kernels found in both runs, matched by kernel and shape:
median time before and after, the speedup (before / after), and the fraction of its ceiling (copy
bandwidth or GEMM rate, measured in the same run) after; then the kernels found in one run only.

  bench/kernel_diff.py BEFORE AFTER
"""
import json
import sys


def kernel_run(path):
    """The `deit bench kernels` JSON object in the file at path."""
    with open(path) as f:
        text = f.read()
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and '"copy_gbps"' in line:
            return json.loads(line)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        sys.exit(f"kernel_diff.py: {path} holds no `deit bench kernels` JSON")


def deit_rows(run):
    """{(kernel, shape): measurement} of deit's own kernels that ran."""
    return {(k["kernel"], k["shape"]): k for k in run["kernels"]
            if k.get("impl") == "deit" and k.get("available", True) and k.get("median_ms")}


def table(before, after):
    lines = [f"Before: {before['device']}; after: {after['device']}.", ""]
    if before.get("device") != after.get("device"):
        lines += ["**Two different devices: the speedups compare the GPUs as much as the "
                  "kernels.**", ""]
    lines += ["| kernel | shape | before ms | after ms | speedup | after, of ceiling |",
              "|---|---|---|---|---|---|"]
    old, new = deit_rows(before), deit_rows(after)
    for key in [k for k in new if k in old]:
        b, a = old[key]["median_ms"], new[key]["median_ms"]
        ceiling = new[key].get("fraction_of_ceiling")
        share = f"{ceiling:.0%}" if ceiling is not None else "-"
        lines.append(f"| {key[0]} | {key[1]} | {b:.4f} | {a:.4f} | {b / a:.2f}x | {share} |")
    only = [("before", k) for k in old if k not in new] + [("after", k) for k in new if k not in old]
    if only:
        lines += ["", "In one run only:", ""]
        lines += [f"- {kernel} {shape} ({side})" for side, (kernel, shape) in only]
    return "\n".join(lines)


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: bench/kernel_diff.py BEFORE AFTER")
    print(table(kernel_run(sys.argv[1]), kernel_run(sys.argv[2])))


if __name__ == "__main__":
    main()
