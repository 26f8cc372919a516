#!/usr/bin/env python3
"""bench/torch_baseline.py, the PyTorch side of the comparison, held to a fair and comparable run:
cudnn.benchmark on as timm's and DeiT's training scripts set it, the attention rival given its
output gradient in the layout a ViT's backward hands it (not one that makes torch copy it inside
the timed region), and its step JSON with every field `deit bench step --json` prints. Needs torch
(skipped, exit 77, without it); the JSON comparison also needs timm and the deit binary, and is
left out, saying so, without them. CTest runs it (torch_baseline_py).

  test_torch_baseline.py PATH/TO/bench/torch_baseline.py [PATH/TO/deit]
"""
import importlib.util
import json
import subprocess
import sys

try:
    import torch
except ImportError:
    print("test_torch_baseline.py: no torch here: skipped")
    sys.exit(77)


def load(path):
    spec = importlib.util.spec_from_file_location("torch_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_backends(baseline):
    torch.backends.cudnn.benchmark = False
    settings = baseline.configure_backends()
    assert torch.backends.cudnn.benchmark, "cudnn.benchmark left off"
    assert settings == {"cudnn_benchmark": True}, settings


def check_attention_layout(baseline):
    B, T, H, D = 2, 5, 3, 4
    q, k, v, dout = baseline.attention_tensors(B, T, H, D, device="cpu", dtype=torch.float32)
    for t in (q, k, v):
        assert t.shape == (B, H, T, D), t.shape
        assert t.stride() == (T * 3 * H * D, D, 3 * H * D, 1), t.stride()
        assert t.is_leaf and t.requires_grad
    # The gradient timm's Attention gives SDPA's output: that of x.transpose(1, 2).reshape(B, T, C).
    out = torch.randn(B, H, T, D, requires_grad=True)
    seen = {}
    through = out * 1

    def hook(grad):
        seen["stride"] = grad.stride()

    through.register_hook(hook)
    through.transpose(1, 2).reshape(B, T, H * D).backward(torch.randn(B, T, H * D))
    assert dout.shape == (B, H, T, D), dout.shape
    assert dout.stride() == seen["stride"], (dout.stride(), seen["stride"])
    assert float(dout.abs().min()) >= 0 and float(dout.abs().max()) <= 1


def check_json_fields(script, deit):
    try:
        import timm  # noqa: F401
    except ImportError:
        print("the JSON fields against deit's: left out (no timm here)")
        return
    if not deit:
        print("the JSON fields against deit's: left out (no deit binary given)")
        return
    model = ["--model", "deit3_small", "--input-size", "32", "--batch-size", "2", "--dim", "32",
             "--depth", "1", "--heads", "2", "--num-classes", "5", "--device", "cpu",
             "--warmup", "1", "--steps", "1", "--json"]
    ours = json.loads(subprocess.run([deit, "bench", "step", *model, "--opt", "adamw"],
                                     capture_output=True, text=True, check=True).stdout)
    theirs = json.loads(subprocess.run([sys.executable, script, "step", *model, "--drop-path",
                                        str(ours["drop_path"])],
                                       capture_output=True, text=True, check=True).stdout)
    missing = [key for key in ours if key not in theirs]
    assert not missing, f"torch_baseline.py step lacks deit's fields {missing}"
    assert theirs["whole_batch_branches"] is True and theirs["branch_sample_share"] == 1.0, theirs
    assert theirs["cudnn_benchmark"] is True, theirs
    assert theirs["shape"] == ours["shape"], (theirs["shape"], ours["shape"])
    print("the JSON fields against deit's: every one of deit's there")


def main():
    script = sys.argv[1]
    deit = sys.argv[2] if len(sys.argv) > 2 else None
    baseline = load(script)
    check_backends(baseline)
    check_attention_layout(baseline)
    check_json_fields(script, deit)
    print("torch_baseline.py: cudnn.benchmark, the attention inputs' layout and the JSON fields "
          "as expected")


if __name__ == "__main__":
    main()
