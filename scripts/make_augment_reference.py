#!/usr/bin/python3
"""Expected outputs of the augmentation ops, computed by Pillow / torchvision as the DeiT III
reference pipeline computes them (facebookresearch/deit augment.py and main.py, which run
torchvision transforms on PIL images).

Writes small deterministic input images, applies each op with FIXED parameters (the random draws
of the reference transforms replaced by given values) and writes the results, plus cases.json
describing every case, under tests/data/augment/. tests/test_augment_reference.cpp replays the
cases through the C++ reference (data/transforms.h) and compares pixel by pixel.

Images are binary PPM (P6): a 3-line header and raw RGB bytes, read by the tests without a
decoder. The normalised output is raw little-endian float32 in (3, H, W) order.

Run with Debian's python3-pil, python3-torch, python3-torchvision and python3-numpy:
    /usr/bin/python3 scripts/make_augment_reference.py
The files it writes are committed, so the tests need no Python.
"""
import json
import os
import sys

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "augment")
BICUBIC = InterpolationMode.BICUBIC


def write_ppm(path, image):
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    h, w, _ = array.shape
    with open(path, "wb") as f:
        f.write(b"P6\n%d %d\n255\n" % (w, h))
        f.write(array.tobytes())


def make_inputs():
    """Three small images that exercise edges, gradients, noise, saturated values and odd sizes."""
    rng = np.random.default_rng(20220407)
    # a: 40 x 48 (H x W). Smooth gradients, a checkerboard, a sharp diagonal edge and mild noise:
    # resampling and blur are tested on both smooth areas and high-frequency content.
    y, x = np.mgrid[0:40, 0:48]
    a = np.stack([x * 255.0 / 47, y * 255.0 / 39, (x + y) * 255.0 / 85], axis=-1)
    checker = ((x // 3 + y // 3) % 2 == 0) & (x >= 26) & (y < 18)
    a[checker] = [250, 20, 120]
    a[(x + 2 * y > 70) & (x < 20)] = [15, 200, 60]
    a += rng.normal(0, 6, size=a.shape)
    a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    # b: 37 x 23, portrait with odd sizes: uniform noise, the worst case for resampling.
    b = rng.integers(0, 256, size=(37, 23, 3), dtype=np.uint8)
    # c: 24 x 32. Every value 0..255 in every channel (solarize and grayscale boundaries), blocks of
    # pure colours and extremes (clamping in colour ops and bicubic overshoot).
    c = np.stack([np.roll(np.arange(768) % 256, 85 * k) for k in range(3)], axis=-1).reshape(24, 32, 3)
    c[0:6, 0:8] = [255, 255, 255]
    c[0:6, 8:16] = [0, 0, 0]
    c[6:12, 0:8] = [255, 0, 0]
    c[6:12, 8:16] = [0, 0, 255]
    c = c.astype(np.uint8)
    return {"a": Image.fromarray(a, "RGB"), "b": Image.fromarray(b, "RGB"), "c": Image.fromarray(c, "RGB")}


def f32(v):
    """torchvision draws jitter factors as float32 and Pillow receives floats: use those values."""
    return float(np.float32(v))


# ---- Single ops, as `deit augment` names them, each the call the reference pipeline makes. ----

def op_image(img, spec):
    name, _, arg = spec.partition(":")
    args = [float(v) for v in arg.split(",")] if arg else []
    if name == "hflip":
        return F.hflip(img)  # RandomHorizontalFlip
    if name == "grayscale":
        return F.rgb_to_grayscale(img, num_output_channels=3)  # Grayscale(3) in gray_scale
    if name == "solarize":
        return ImageOps.solarize(img)  # Solarization: threshold 128
    if name == "blur":
        return img.filter(ImageFilter.GaussianBlur(radius=f32(args[0])))  # deit's GaussianBlur
    if name == "brightness":
        return F.adjust_brightness(img, f32(args[0]))  # ColorJitter
    if name == "contrast":
        return F.adjust_contrast(img, f32(args[0]))
    if name == "saturation":
        return F.adjust_saturation(img, f32(args[0]))
    if name == "resize":
        return transforms.Resize(int(args[0]), interpolation=BICUBIC)(img)  # eval, SRC
    if name == "center-crop":
        return transforms.CenterCrop(int(args[0]))(img)
    if name == "crop":
        x, y, w, h = (int(v) for v in args)
        return F.crop(img, y, x, h, w)
    if name == "pad-reflect":
        return F.pad(img, int(args[0]), padding_mode="reflect")  # RandomCrop(padding, 'reflect')
    raise ValueError(spec)


# Category -> what the C++ test allows (the tolerances are stated and justified there).
OP_CASES = [
    ("a", ["hflip"], "geometry"),
    ("b", ["hflip"], "geometry"),
    ("a", ["crop:5,3,20,17"], "geometry"),
    ("a", ["pad-reflect:4"], "geometry"),
    ("b", ["pad-reflect:7"], "geometry"),
    ("a", ["center-crop:21"], "geometry"),  # offsets 9.5 / 13.5: round half to even
    ("b", ["center-crop:20"], "geometry"),  # offsets 1.5 / 8.5
    ("a", ["solarize"], "solarize"),
    ("c", ["solarize"], "solarize"),
    ("a", ["grayscale"], "grayscale"),
    ("c", ["grayscale"], "grayscale"),
    ("a", ["resize:17"], "resample"),  # shrink 40x48 -> 17x20 (antialiased)
    ("a", ["resize:61"], "resample"),  # enlarge
    ("b", ["resize:9"], "resample"),   # shrink 2.6x on noise
    ("b", ["resize:30"], "resample"),  # enlarge on noise
    ("c", ["resize:13"], "resample"),  # overshoot on hard edges, clamping
    ("c", ["resize:24"], "resample"),  # unchanged size: Pillow copies
    ("a", ["blur:0.1"], "blur"),
    ("a", ["blur:0.63"], "blur"),
    ("a", ["blur:1.37"], "blur"),
    ("a", ["blur:2.0"], "blur"),
    ("b", ["blur:1.71"], "blur"),
    ("c", ["blur:0.95"], "blur"),
    ("a", ["brightness:0.7"], "color"),
    ("c", ["brightness:1.3"], "color"),
    ("a", ["contrast:0.74"], "color"),
    ("c", ["contrast:1.26"], "color"),
    ("a", ["saturation:1.29"], "color"),
    ("c", ["saturation:0.71"], "color"),
    ("b", ["brightness:1.13"], "color"),
    ("b", ["contrast:0.81"], "color"),
    ("b", ["saturation:1.07"], "color"),
]


# ---- Whole training views: augment.py's pipeline with its random draws fixed. ----

JITTER_NAMES = ["brightness", "contrast", "saturation"]


def train_view(img, p):
    crop = p["crop"]
    if crop["mode"] == "rrc":
        # RandomResizedCropAndInterpolation: F.resized_crop(img, i, j, h, w, size, bicubic).
        img = F.resized_crop(img, crop["y"], crop["x"], crop["h"], crop["w"], [crop["size"]] * 2, BICUBIC)
    else:
        # Simple Random Crop: Resize(size, bicubic), RandomCrop(size, padding=4, 'reflect').
        img = transforms.Resize(crop["size"], interpolation=BICUBIC)(img)
        crop["resized_width"], crop["resized_height"] = img.size  # recorded for the C++ side
        img = F.pad(img, crop["padding"], padding_mode="reflect")
        img = F.crop(img, crop["y"], crop["x"], crop["size"], crop["size"])
    if p["flip"]:
        img = F.hflip(img)
    three = p["three_augment"]
    if three == "grayscale":
        img = F.rgb_to_grayscale(img, num_output_channels=3)
    elif three == "solarize":
        img = ImageOps.solarize(img)
    elif three == "blur":
        img = img.filter(ImageFilter.GaussianBlur(radius=f32(p["blur_sigma"])))
    # ColorJitter.forward with fn_idx = the given order (hue is None and skipped).
    adjust = {"brightness": F.adjust_brightness, "contrast": F.adjust_contrast, "saturation": F.adjust_saturation}
    for name in p["jitter_order"]:
        img = adjust[name](img, f32(p[name]))
    return img


TRAIN_CASES = [
    ("a", {"crop": {"mode": "rrc", "size": 24, "x": 5, "y": 3, "w": 30, "h": 27}, "flip": True,
           "three_augment": "grayscale", "blur_sigma": 0.0, "brightness": 1.21, "contrast": 0.77,
           "saturation": 1.05, "jitter_order": ["saturation", "brightness", "contrast"]}),
    ("a", {"crop": {"mode": "rrc", "size": 56, "x": 0, "y": 0, "w": 48, "h": 40}, "flip": False,
           "three_augment": "solarize", "blur_sigma": 0.0, "brightness": 0.92, "contrast": 1.28,
           "saturation": 0.71, "jitter_order": ["contrast", "saturation", "brightness"]}),
    ("c", {"crop": {"mode": "rrc", "size": 32, "x": 11, "y": 4, "w": 9, "h": 12}, "flip": True,
           "three_augment": "blur", "blur_sigma": 1.37, "brightness": 0.75, "contrast": 1.1,
           "saturation": 1.3, "jitter_order": ["brightness", "contrast", "saturation"]}),
    ("b", {"crop": {"mode": "src", "size": 20, "padding": 4, "x": 3, "y": 7}, "flip": True,
           "three_augment": "blur", "blur_sigma": 0.45, "brightness": 1.02, "contrast": 0.7,
           "saturation": 1.17, "jitter_order": ["contrast", "brightness", "saturation"]}),
    ("a", {"crop": {"mode": "src", "size": 16, "padding": 4, "x": 8, "y": 0}, "flip": False,
           "three_augment": "none", "blur_sigma": 0.0, "brightness": 1.0, "contrast": 1.0,
           "saturation": 1.0, "jitter_order": ["brightness", "contrast", "saturation"]}),
]

# Evaluation: Resize(int(size / crop_ratio), bicubic), CenterCrop(size) (deit main.py).
EVAL_CASES = [("a", 20, 0.875), ("b", 16, 1.0), ("c", 16, 0.9)]


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    inputs = make_inputs()
    manifest = {
        "generated_by": "scripts/make_augment_reference.py",
        "versions": {"pillow": PIL.__version__, "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "numpy": np.__version__},
        "inputs": {},
        "cases": [],
    }
    for name, img in inputs.items():
        write_ppm(os.path.join(OUT_DIR, f"input_{name}.ppm"), img)
        manifest["inputs"][name] = f"input_{name}.ppm"

    def add_case(case_name, source, result, **fields):
        filename = case_name + ".ppm"
        write_ppm(os.path.join(OUT_DIR, filename), result)
        manifest["cases"].append({"name": case_name, "input": source, "expected": filename, **fields})

    for source, ops, category in OP_CASES:
        img = inputs[source]
        for spec in ops:
            img = op_image(img, spec)
        case_name = source + "_" + "_".join(s.replace(":", "").replace(",", "-").replace(".", "p") for s in ops)
        add_case(case_name, source, img, category=category, ops=ops)

    for index, (source, params) in enumerate(TRAIN_CASES):
        add_case(f"{source}_train{index}", source, train_view(inputs[source], params),
                 category="pipeline", train=params)

    for source, size, ratio in EVAL_CASES:
        resize = transforms.Resize(int(size / ratio), interpolation=BICUBIC)
        result = transforms.CenterCrop(size)(resize(inputs[source]))
        add_case(f"{source}_eval{size}", source, result, category="pipeline", eval={"size": size, "crop_ratio": ratio})

    # ToTensor + Normalize with the ImageNet statistics, as float32 (3, H, W).
    normalize = transforms.Compose([transforms.ToTensor(),
                                    transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    normalize(inputs["a"]).numpy().astype("<f4").tofile(os.path.join(OUT_DIR, "a_normalized.f32"))
    manifest["normalized"] = {"input": "a", "expected": "a_normalized.f32"}

    with open(os.path.join(OUT_DIR, "cases.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print(f"wrote {len(manifest['cases'])} cases to {os.path.normpath(OUT_DIR)}", file=sys.stderr)


if __name__ == "__main__":
    main()
