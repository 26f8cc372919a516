#!/usr/bin/env python3
"""bench/report.py on recorded runs made up here: the step table's ratios, each side's fastest of
repeated runs (compare.sh --repeat), a comparison of two different models refused, failures listed,
the kernel tables (attention's passes, the GEMMs with and without autotuning). Plain Python, as report.py; CTest runs it (report_py).

  test_report.py PATH/TO/bench/report.py
"""
import json
import os
import subprocess
import sys
import tempfile

SMALL = {"patch": 16, "dim": 384, "depth": 12, "heads": 6, "num_classes": 1000}


def step_result(impl, images_per_s, shape):
    return {"impl": impl, "model": "deit3_small", "shape": shape, "input_size": 224,
            "batch_size": 64, "drop_path": 0.05,
            "optimizer": "lamb" if impl == "deit" else "adamw",
            "precision": "bf16", "images_per_s": images_per_s, "step_ms": 64000 / images_per_s,
            "mfu": 0.25, "peak_memory_bytes": 2 * 1024 ** 3,
            "phases_ms": {"forward": 10.0, "backward": 20.0, "optimizer": 2.0}}


def kernel(name, impl, shape, ms, **fields):
    return dict({"kernel": name, "impl": impl, "shape": shape, "available": True,
                 "median_ms": ms}, **fields)


KERNELS = {"device": "Test GPU", "copy_gbps": 4000.0, "gemm_tflops": 800.0, "repeats": 30,
           "warmup": 5, "cudnn": "9.19.0", "kernels": [
               kernel("attention backward", "deit", "T=197", 1.0, tflops=75.0,
                      fraction_of_ceiling=0.09),
               kernel("attention backward+qkv bias gradient", "deit", "T=197", 1.1, tflops=70.0,
                      fraction_of_ceiling=0.09),
               kernel("attention backward", "cudnn", "T=197", 0.5),
               kernel("linear dweight", "cublaslt", "fc1 M=50432", 0.3, tflops=400.0,
                      fraction_of_ceiling=0.5),
               kernel("linear dweight", "cublaslt-autotuned", "fc1 M=50432", 0.2, tflops=600.0,
                      fraction_of_ceiling=0.75)]}


def record(run_dir, index, label, result, rc=0, err="", kind="step"):
    stem = os.path.join(run_dir, f"{index:03d}")
    for ext, text in (("kind", kind), ("label", label), ("cmd", f"{kind} run {index}"),
                      ("rc", str(rc)), ("json", json.dumps(result) if result else ""),
                      ("err", err)):
        with open(f"{stem}.{ext}", "w") as f:
            f.write(text)


def main():
    report = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        runs = os.path.join(tmp, "runs")
        os.mkdir(runs)
        # One configuration where every side ran deit3_small, one where torch.compile ran a model
        # of one block (as a stale or mistyped flag would make it).
        record(runs, 1, "deit3_small 224 64",
               dict(step_result("deit", 2000.0, SMALL), branch_sample_share=0.83))
        record(runs, 2, "deit3_small 224 64", step_result("torch", 1000.0, SMALL))
        record(runs, 3, "deit3_small 224 64", step_result("torch.compile", 1600.0, SMALL))
        record(runs, 4, "deit3_small 160 64", step_result("deit", 3000.0, SMALL))
        record(runs, 5, "deit3_small 160 64", step_result("torch", 1500.0, SMALL))
        record(runs, 6, "deit3_small 160 64",
               step_result("torch.compile", 9000.0, dict(SMALL, depth=1)))
        record(runs, 7, "deit3_base 224 64", None, rc=1, err="CUDA error: out of memory")
        record(runs, 8, "kernels", KERNELS, kind="kernels")
        # Two rounds of one configuration: each side counts with its faster run, in either round.
        for index, (impl, speed) in enumerate((("deit", 2400.0), ("torch", 1000.0),
                                               ("torch.compile", 1500.0), ("deit", 2500.0),
                                               ("torch", 1200.0), ("torch.compile", 1000.0))):
            record(runs, 9 + index, "deit3_small 192 64", step_result(impl, speed, SMALL))
        record(runs, 15, "deit3_small 128 64", step_result("deit", 4000.0, SMALL))
        record(runs, 16, "deit3_small 128 64", dict(step_result("torch", 2000.0, SMALL),
                                                    drop_path=0.0))
        record(runs, 17, "deit3_small 128 64", step_result("torch.compile", 2000.0, SMALL))
        out = os.path.join(tmp, "report.md")
        subprocess.run([sys.executable, report, runs, "--device", "Test GPU", "--commit", "abc",
                        "--command", "bench/compare.sh", "--out", out],
                       check=True, stdout=subprocess.DEVNULL)
        text = open(out).read()

    rows = {line.split(" | ")[1]: line.split(" | ") for line in text.splitlines()
            if line.startswith("| deit3_small |")}
    same, mismatched = rows["224"], rows["160"]
    # Columns: model, px, batch, deit, torch, compile, deit / torch, deit / compile, ...
    assert same[6:8] == ["2.00", "1.25"], same
    assert mismatched[6:8] == ["2.00", "n/a"], mismatched
    repeated = rows["192"]
    assert repeated[3:8] == ["2500", "1200", "1500", "2.08", "1.67"], repeated
    assert ("- deit3_small 192 64: deit 2400, 2500; torch 1000, 1200; torch.compile 1500, 1000"
            in text), text
    assert "deit3_small 224 64: deit" not in text, text  # one run a side: nothing to list
    assert "**The sides measured different models:**" in text, text
    assert ("- deit3_small 160 64: deit ran patch 16, dim 384, depth 12, heads 6, num_classes "
            "1000, drop-path 0.05; torch.compile ran patch 16, dim 384, depth 1, heads 6, "
            "num_classes 1000, drop-path 0.05. No ratio is given.") in text, text
    # The same shape at another drop-path rate (PyTorch's run after deit's failed: rate 0) is
    # another model too.
    other_rate = rows["128"]
    assert other_rate[6:8] == ["n/a", "2.00"], other_rate
    assert ("- deit3_small 128 64: deit ran patch 16, dim 384, depth 12, heads 6, num_classes "
            "1000, drop-path 0.05; torch ran patch 16, dim 384, depth 12, heads 6, num_classes "
            "1000, drop-path 0.0. No ratio is given.") in text, text
    assert "deit3_small 224 64:" not in text.split("different models")[1].split("Precision")[0]
    assert "## Failures" in text and "CUDA error: out of memory" in text, text
    # ... and in the table's row, so that a ratio built on skipped work is seen where it is read
    # (the last column); a row whose deit run reported no share says nothing.
    assert same[-1] == "83.0% |", same
    assert repeated[-1] == "- |", repeated
    # deit's branches on their kept samples, said once (the run that reported it).
    assert text.count("deit's residual branches ran on 83.0% of the samples") == 1, text
    assert "# deit vs PyTorch + timm on Test GPU" in text and "- commit: abc" in text, text
    # Attention's passes by name, the fused one whole; the GEMM with both choices and the speedup.
    assert "| backward | T=197 | 1.0000 | 0.5000 |" in text, text
    assert "| backward+qkv bias gradient | T=197 | 1.1000 | - |" in text, text
    assert "| dweight | fc1 M=50432 | 0.3000 | 0.2000 | 1.50 | 600.0 | 75.0% |" in text, text
    print("report.py: ratios, repeated runs, a model mismatch, a failure, the branches' share and "
          "the kernel tables reported as expected")


if __name__ == "__main__":
    main()
