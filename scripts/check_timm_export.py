#!/usr/bin/python3
"""Does timm itself load what `deit export` writes, and compute what deit computes with it?

tests/test_torch_parity.cpp holds deit's model to a plain-PyTorch mirror of timm's (written by
scripts/torch_reference.py, since timm is not a Debian package); this closes the loop with timm:

  1. `deit demo --epochs 1` trains the demo's small ViT (seconds on a CPU);
  2. `deit eval --eval-crop-ratio 1 --json` scores it on the demo's val split, whose images are
     already the model's input size, so the evaluation transform is the identity bar the
     normalisation;
  3. `deit export` writes its weights, which timm's VisionTransformer, built as timm builds its
     deit3_* models, loads with strict=True (every name and shape must match, none left over);
  4. timm scores the same images: top-1 and top-5 must agree to within one image (an argmax may
     flip on a near-tie between fp32 sums taken in another order), the loss to 1e-4 relative;
     then the same images saved as JPEGs by Pillow, which deit must decode to Pillow's pixels:
     the loss to 1e-6 relative (stb_image's decoding, deit's before libjpeg-turbo, missed it);
     then JPEGs of other sizes through the reference's evaluation transform at crop ratio 0.875
     (torchvision's Resize and CenterCrop), against deit eval --eval-crop-ratio 0.875;
  5. a deit3_small checkpoint (one step of training at 224) is exported and loaded, strictly, into
     timm.create_model("deit3_small_patch16_224");
  6. the other way: timm's own weights (a demo-sized model of timm's with random weights of order
     0.2 everywhere, so that no block is near the identity and no logit ties, saved with
     safetensors.torch.save_file as the Hub's files are) evaluated by `deit eval --weights` on the
     same images score as timm scores them; so do the same weights saved in F16 (after .half()).

Needs torch, torchvision (timm imports it), timm, safetensors and Pillow. On Debian 12:
    apt-get install python3-torch python3-torchvision python3-yaml python3-pil
    pip install --no-deps --target /tmp/timm-site timm safetensors
    PYTHONPATH=/tmp/timm-site /usr/bin/python3 scripts/check_timm_export.py --deit build/deit
Prints one line per check and exits 1 if any fails.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer
from torchvision import transforms
from torchvision.transforms import InterpolationMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEMO_HEADS = 3  # the demo model's (apps/cmd_demo.cpp); head count is not in the tensor shapes


def deit(binary, *args):
    result = subprocess.run([binary, *args], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"deit {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


def deit3_like(weights, heads):
    """timm's VisionTransformer with deit3_*'s arguments (timm/models/deit.py), sized by the
    tensors: no class-token slot in pos_embed, LayerScale, LayerNorm eps 1e-6 (timm's default)."""
    dim, _, patch, _ = weights["patch_embed.proj.weight"].shape
    grid = round(weights["pos_embed"].shape[1] ** 0.5)
    depth = len({name.split(".")[1] for name in weights if name.startswith("blocks.")})
    return VisionTransformer(img_size=grid * patch, patch_size=patch, embed_dim=dim, depth=depth,
                             num_heads=heads, num_classes=weights["head.weight"].shape[0],
                             no_embed_class=True, init_values=1e-6)


def load_strict(model, weights):
    """load_state_dict(strict=True), reported as a check rather than an exception."""
    try:
        model.load_state_dict(weights, strict=True)
        return True, f"{len(weights)} tensors"
    except RuntimeError as e:
        return False, str(e).splitlines()[0]


def normalised(image):
    """A PIL image as the model's input, with no resize or crop: ToTensor, then Normalize."""
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    return (x - mean.view(3, 1, 1)) / std.view(3, 1, 1)


def timm_scores(model, split, classes, transform=normalised):
    """Top-1 and top-5 counts and the summed cross-entropy of `model` over split/<class>/*, each
    image opened by Pillow and made the model's input by `transform`."""
    top1 = top5 = 0
    loss = 0.0
    images = 0
    model.eval()
    for label, name in enumerate(classes):
        folder = os.path.join(split, name)
        files = sorted(os.listdir(folder))
        x = torch.stack([transform(Image.open(os.path.join(folder, f)).convert("RGB"))
                         for f in files])
        with torch.no_grad():
            logits = model(x)
        target = torch.full((len(files),), label)
        loss += torch.nn.functional.cross_entropy(logits.double(), target, reduction="sum").item()
        best5 = logits.topk(5, dim=1).indices
        top1 += (best5[:, 0] == label).sum().item()
        top5 += (best5 == label).any(dim=1).sum().item()
        images += len(files)
    return top1, top5, loss, images


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deit", default="build/deit", help="the deit binary")
    args = parser.parse_args()
    binary = os.path.abspath(args.deit)
    checks = []

    with tempfile.TemporaryDirectory() as work:
        demo = os.path.join(work, "demo")
        deit(binary, "demo", "--epochs", "1", "--out", demo, "--quiet")
        data, run = os.path.join(demo, "data"), os.path.join(demo, "run")
        ours = json.loads(deit(binary, "eval", "--checkpoint", run, "--data", data,
                               "--eval-crop-ratio", "1", "--json"))
        exported = os.path.join(work, "demo.safetensors")
        deit(binary, "export", "--checkpoint", run, "--out", exported)
        weights = load_file(exported)
        model = deit3_like(weights, DEMO_HEADS)
        loaded, detail = load_strict(model, weights)
        checks.append(("demo model: timm loads the export (strict)", loaded, detail))
        if loaded:
            classes = sorted(os.listdir(os.path.join(data, "val")))
            top1, top5, loss, images = timm_scores(model, os.path.join(data, "val"), classes)
            ours_top1 = round(ours["acc1"] * ours["images"] / 100)
            ours_top5 = round(ours["acc5"] * ours["images"] / 100)
            checks.append(("demo model: same images scored", images == ours["images"],
                           f"timm {images}, deit {ours['images']}"))
            checks.append(("demo model: top-1 within one image",
                           abs(top1 - ours_top1) <= 1, f"timm {top1}, deit {ours_top1}"))
            checks.append(("demo model: top-5 within one image",
                           abs(top5 - ours_top5) <= 1, f"timm {top5}, deit {ours_top5}"))
            relative = abs(loss / images - ours["loss"]) / ours["loss"]
            checks.append(("demo model: loss to 1e-4", relative < 1e-4,
                           f"timm {loss / images:.6f}, deit {ours['loss']:.6f} "
                           f"(relative {relative:.1e})"))

            # The same images as JPEGs, as ImageNet holds them (Pillow, quality 90, 4:2:0): deit
            # decodes them to Pillow's pixels, so the loss agrees as closely as for the PNGs.
            jpeg_data = os.path.join(work, "jpeg")
            for name in classes:
                source = os.path.join(data, "val", name)
                target = os.path.join(jpeg_data, "val", name)
                os.makedirs(target)
                for f in sorted(os.listdir(source)):
                    Image.open(os.path.join(source, f)).convert("RGB").save(
                        os.path.join(target, os.path.splitext(f)[0] + ".jpg"), quality=90)
            on_jpeg = json.loads(deit(binary, "eval", "--checkpoint", run, "--data", jpeg_data,
                                      "--eval-crop-ratio", "1", "--json"))
            _, _, loss, images = timm_scores(model, os.path.join(jpeg_data, "val"), classes)
            relative = abs(loss / images - on_jpeg["loss"]) / on_jpeg["loss"]
            checks.append(("demo model on JPEGs: loss to 1e-6 (Pillow's pixels)", relative < 1e-6,
                           f"timm {loss / images:.8f}, deit {on_jpeg['loss']:.8f} "
                           f"(relative {relative:.1e})"))

            # JPEGs of other sizes, evaluated as the reference's main.py evaluates at crop ratio
            # 0.875: Resize(int(64 / 0.875), bicubic), CenterCrop(64), ToTensor, Normalize.
            sized_data = os.path.join(work, "sized")
            rng = np.random.default_rng(0)
            for name in classes:
                source = os.path.join(data, "val", name)
                target = os.path.join(sized_data, "val", name)
                os.makedirs(target)
                for f in sorted(os.listdir(source)):
                    size = tuple(int(side) for side in rng.integers(64, 129, 2))
                    Image.open(os.path.join(source, f)).convert("RGB").resize(
                        size, Image.BICUBIC).save(
                            os.path.join(target, os.path.splitext(f)[0] + ".jpg"), quality=90)
            on_sized = json.loads(deit(binary, "eval", "--checkpoint", run, "--data", sized_data,
                                       "--eval-crop-ratio", "0.875", "--json"))
            reference_eval = transforms.Compose([
                transforms.Resize(int(64 / 0.875), interpolation=InterpolationMode.BICUBIC),
                transforms.CenterCrop(64), transforms.ToTensor(),
                transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
            _, _, loss, images = timm_scores(model, os.path.join(sized_data, "val"), classes,
                                             reference_eval)
            relative = abs(loss / images - on_sized["loss"]) / on_sized["loss"]
            checks.append(("JPEGs of 64 to 128 px at crop ratio 0.875: loss to 1e-6 (the "
                           "reference's eval transform)", relative < 1e-6,
                           f"timm {loss / images:.8f}, deit {on_sized['loss']:.8f} "
                           f"(relative {relative:.1e})"))

            # timm's weights read by deit: what timm computes with them, deit computes.
            theirs = deit3_like(weights, DEMO_HEADS)
            torch.manual_seed(0)
            with torch.no_grad():
                for parameter in theirs.parameters():
                    parameter.normal_(0, 0.2)
            def deit_scores_weights(state_dict, name):
                path = os.path.join(work, name)
                save_file({k: v.contiguous() for k, v in state_dict.items()}, path)
                return json.loads(deit(binary, "eval", "--model", "deit3_small", "--dim",
                                       str(theirs.embed_dim), "--depth", str(len(theirs.blocks)),
                                       "--heads", str(DEMO_HEADS), "--weights", path, "--data",
                                       data, "--eval-crop-ratio", "1", "--json"))

            def check_scores(what, read):
                top1, top5, loss, images = timm_scores(theirs, os.path.join(data, "val"), classes)
                relative = abs(loss / images - read["loss"]) / read["loss"]
                checks.append((what, relative < 1e-4 and
                               abs(top1 - round(read["acc1"] * images / 100)) <= 1,
                               f"loss timm {loss / images:.6f}, deit {read['loss']:.6f}; top-1 "
                               f"timm {top1}, deit {round(read['acc1'] * images / 100)}"))

            check_scores("timm's weights: deit eval scores them as timm does",
                         deit_scores_weights(theirs.state_dict(), "timm.safetensors"))
            # Saved after .half() (F16 in the file): deit widens them to fp32, as timm does the
            # same half weights here.
            half = {k: v.half() for k, v in theirs.state_dict().items()}
            with torch.no_grad():
                for parameter in theirs.parameters():
                    parameter.copy_(parameter.half().float())
            check_scores("timm's weights in F16: deit eval scores them as timm does",
                         deit_scores_weights(half, "timm-f16.safetensors"))

        # deit3_small at 224: one step on a few of the demo's images, enough to make a checkpoint.
        few = os.path.join(work, "few")
        for split in ("train", "val"):
            for name in ("disc", "dots"):
                os.makedirs(os.path.join(few, split, name))
                source = os.path.join(data, split, name)
                for f in sorted(os.listdir(source))[:4]:
                    os.link(os.path.join(source, f), os.path.join(few, split, name, f))
        small_run = os.path.join(work, "small")
        deit(binary, "train", "--model", "deit3_small", "--data", few, "--output", small_run,
             "--epochs", "1", "--batch-size", "8", "--quiet")
        small_exported = os.path.join(work, "small.safetensors")
        deit(binary, "export", "--checkpoint", small_run, "--out", small_exported)
        small = timm.create_model("deit3_small_patch16_224", pretrained=False, num_classes=2)
        loaded, detail = load_strict(small, load_file(small_exported))
        checks.append(("deit3_small: timm.create_model loads the export (strict)", loaded, detail))

    print(f"torch {torch.__version__}, timm {timm.__version__}")
    for name, passed, detail in checks:
        print(f"{'pass' if passed else 'FAIL'}  {name}: {detail}")
    sys.exit(0 if all(passed for _, passed, _ in checks) else 1)


if __name__ == "__main__":
    main()
