#!/usr/bin/env python3
"""bench/kernel_diff.py on kernel runs made up here: a raw JSON run against a compare report that
embeds one, kernels matched by kernel and shape, the speedup, rivals left out, the kernels one run
lacks listed. Plain Python, as kernel_diff.py; CTest runs it (kernel_diff_py).

  test_kernel_diff.py PATH/TO/bench/kernel_diff.py
"""
import json
import os
import subprocess
import sys
import tempfile


def kernel(name, shape, median_ms, impl="deit", fraction=0.5):
    return {"kernel": name, "impl": impl, "shape": shape, "available": True,
            "median_ms": median_ms, "fraction_of_ceiling": fraction}


def run(*kernels):
    return {"device": "NVIDIA H200", "copy_gbps": 4000.0, "gemm_tflops": 800.0,
            "kernels": list(kernels)}


def main():
    script = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        before = os.path.join(tmp, "before.json")
        with open(before, "w") as f:
            json.dump(run(kernel("gelu forward", "rows=8 hidden=32", 0.4),
                          kernel("attention forward", "T=197", 0.3),
                          kernel("attention forward", "T=197", 0.17, impl="cudnn"),
                          kernel("layernorm forward", "C=768", 0.1)), f)
        after = os.path.join(tmp, "after.md")
        with open(after, "w") as f:
            f.write("# a report\n\n## Raw results\n\n```\n")
            f.write(json.dumps(run(kernel("gelu forward", "rows=8 hidden=32", 0.2, fraction=0.8),
                                   kernel("attention forward", "T=197", 0.25),
                                   kernel("linear bias gradient", "N=3072", 0.05))) + "\n")
            f.write(json.dumps({"device": "NVIDIA H200", "kernels": []}) + "\n```\n")
        out = subprocess.run([sys.executable, script, before, after], capture_output=True,
                             text=True, check=True).stdout
        print(out)
        assert "| gelu forward | rows=8 hidden=32 | 0.4000 | 0.2000 | 2.00x | 80% |" in out, out
        assert "| attention forward | T=197 | 0.3000 | 0.2500 | 1.20x | 50% |" in out, out
        assert "0.1700" not in out, "the cuDNN rival is not deit's kernel"
        assert "- layernorm forward C=768 (before)" in out, out
        assert "- linear bias gradient N=3072 (after)" in out, out

        assert "Two different devices" not in out, out
        elsewhere = os.path.join(tmp, "elsewhere.json")
        with open(elsewhere, "w") as f:
            json.dump(dict(run(kernel("gelu forward", "rows=8 hidden=32", 0.3)),
                           device="NVIDIA H100 80GB HBM3"), f)
        other = subprocess.run([sys.executable, script, before, elsewhere], capture_output=True,
                               text=True, check=True).stdout
        assert "**Two different devices" in other, other

        empty = os.path.join(tmp, "empty.md")
        with open(empty, "w") as f:
            f.write("no JSON here\n")
        failed = subprocess.run([sys.executable, script, before, empty], capture_output=True,
                                text=True)
        assert failed.returncode != 0 and "holds no" in failed.stderr, failed.stderr
    print("kernel_diff.py: ok")


if __name__ == "__main__":
    main()
