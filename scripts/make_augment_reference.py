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

RandAugment (timm's rand_augment_transform, spec rand-m9-mstd0.5-inc1, which deit uses for
fine-tuning) is referenced through timm's own op functions, called with fixed arguments: the
file timm/data/auto_augment.py of timm 0.3.2 (the version deit's requirements pin), loaded on
its own (it needs only PIL, numpy, math, random and re), without installing timm. Get it with:
    pip download timm==0.3.2 --no-deps -d /tmp/timm
    cd /tmp/timm && python3 -m zipfile -e timm-0.3.2-py3-none-any.whl whl
and pass its path (/tmp/timm/whl/timm/data/auto_augment.py) with --timm-auto-augment PATH or
the environment variable TIMM_AUTO_AUGMENT. Its sha256 is checked (TIMM_AUTO_AUGMENT_SHA256).

Run with Debian's python3-pil, python3-torch, python3-torchvision and python3-numpy:
    /usr/bin/python3 scripts/make_augment_reference.py \
        --timm-auto-augment /tmp/timm/whl/timm/data/auto_augment.py
The files it writes are committed, so the tests need no Python.
"""
import argparse
import hashlib
import importlib.util
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


# ---- RandAugment: timm 0.3.2's op functions (timm/data/auto_augment.py), fixed arguments. ----

TIMM_AUTO_AUGMENT_SHA256 = "7f9b0314dd882820def96ad6b3294beebdbaa1ba5d09a65a87af85e6e0138560"  # timm 0.3.2
TIMM_VERSION = "0.3.2"


def load_timm_auto_augment(path):
    """timm/data/auto_augment.py loaded as a module of its own (no timm package needed)."""
    if not path:
        sys.exit("make_augment_reference.py: timm's auto_augment.py is needed for the RandAugment cases:\n"
                 "pass --timm-auto-augment PATH or set TIMM_AUTO_AUGMENT (see the docstring: "
                 "pip download timm==0.3.2 --no-deps, unzip the wheel, timm/data/auto_augment.py)")
    if not os.path.isfile(path):
        sys.exit(f"make_augment_reference.py: timm's auto_augment.py not found at {path!r}")
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != TIMM_AUTO_AUGMENT_SHA256:
        sys.exit(f"make_augment_reference.py: {path} has sha256 {digest}, expected timm {TIMM_VERSION}'s "
                 f"{TIMM_AUTO_AUGMENT_SHA256}")
    spec = importlib.util.spec_from_file_location("timm_auto_augment", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, digest


def make_ra_inputs():
    """Small edge-case inputs for the RandAugment ops."""
    # d: 5 x 6, every channel a single value: equalize sees one histogram bin, autocontrast
    # hi == lo (both return the image unchanged); sharpness and brightness on a flat image.
    d = np.empty((5, 6, 3), dtype=np.uint8)
    d[...] = [200, 13, 77]
    # e: 16 x 20 (320 pixels). R: all 90 but one 30 -> equalize step = 1 // 255 = 0 (unchanged).
    # G: all 90 but one 200 -> step = 319 // 255 = 1, and the table entry for 200 is 319: Pillow's
    # point() clips it to 255. B: 64 values 100..163 -> step 1, entries above 255 clipped again.
    y, x = np.mgrid[0:16, 0:20]
    e = np.empty((16, 20, 3), dtype=np.uint8)
    e[..., 0] = 90
    e[7, 11, 0] = 30
    e[..., 1] = 90
    e[2, 5, 1] = 200
    e[..., 2] = 100 + (x * 13 + y * 7) % 64
    # f: 2 x 2 (square: rotate by 90 takes Pillow's transpose fast path; smaller than the 3x3
    # smoothing kernel: ImageEnhance.Sharpness's filter copies the image).
    f = np.array([[[10, 200, 30], [240, 15, 100]], [[90, 90, 250], [255, 255, 0]]], dtype=np.uint8)
    # g: 1 x 9, one row: a ramp, the reversed ramp and a spike.
    ramp = np.array([0, 32, 64, 96, 128, 160, 192, 224, 255])
    g = np.stack([ramp, ramp[::-1], np.where(np.arange(9) == 4, 255, 0)], axis=-1)[None].astype(np.uint8)
    # h: 24 x 32 noise of low contrast (a, b and c span 0..255, where autocontrast is the identity).
    # R in 37..201; G in 1..10: autocontrast maps 10 to 254 and 7 to 169 (int(x * scale + offset)
    # lands just below 255 and 170 in double precision; a fused multiply-add would give 255 and
    # 170); B in 60..61: scale 255. 768 pixels: equalize steps of 2 and more.
    rng = np.random.default_rng(20240611)
    h = np.stack([rng.integers(37, 202, size=(24, 32)), rng.integers(1, 11, size=(24, 32)),
                  rng.integers(60, 62, size=(24, 32))], axis=-1).astype(np.uint8)
    h[0, 0] = [37, 1, 60]
    h[1, 1] = [201, 10, 61]
    return {name: Image.fromarray(v, "RGB") for name, v in (("d", d), ("e", e), ("f", f), ("g", g), ("h", h))}


# timm's transforms_imagenet_train passes these to every op (AugmentOp.kwargs): fillcolor =
# img_mean = round(255 * ImageNet mean), resample = the train interpolation (deit: bicubic).
RA_FILL = (124, 116, 104)
RA_OP_NAMES = ["autocontrast", "equalize", "invert", "posterize", "solarize", "solarize-add", "sharpness",
               "saturation", "contrast", "brightness", "rotate", "shear-x", "shear-y", "translate-x", "translate-y"]
INT_OPS = {"posterize", "solarize", "solarize-add"}
NO_ARG_OPS = {"autocontrast", "equalize", "invert"}


def ra_call(aa, img, name, value):
    """The timm call for one op (value: the op's argument; for translate the fraction of the size)."""
    kw = dict(fillcolor=RA_FILL, resample=Image.BICUBIC)
    calls = {
        "autocontrast": lambda: aa.auto_contrast(img),
        "equalize": lambda: aa.equalize(img),
        "invert": lambda: aa.invert(img),
        "posterize": lambda: aa.posterize(img, value),
        "solarize": lambda: aa.solarize(img, value),
        "solarize-add": lambda: aa.solarize_add(img, value),  # its default thresh 128
        "sharpness": lambda: aa.sharpness(img, value),
        "saturation": lambda: aa.color(img, value),  # ImageEnhance.Color, as saturation:F
        "contrast": lambda: aa.contrast(img, value),
        "brightness": lambda: aa.brightness(img, value),
        "rotate": lambda: aa.rotate(img, value, **kw),
        "shear-x": lambda: aa.shear_x(img, value, **kw),
        "shear-y": lambda: aa.shear_y(img, value, **kw),
        "translate-x": lambda: aa.translate_x_rel(img, value, **kw),
        "translate-y": lambda: aa.translate_y_rel(img, value, **kw),
    }
    timm_names = {"autocontrast": "auto_contrast", "saturation": "color", "shear-x": "shear_x",
                  "shear-y": "shear_y", "translate-x": "translate_x_rel", "translate-y": "translate_y_rel",
                  "solarize-add": "solarize_add"}
    call = timm_names.get(name, name) + ("(img)" if name in NO_ARG_OPS else f"(img, {value!r})")
    return calls[name](), call


def ra_op_string(img, name, value):
    """The op as `deit augment --op` spells it: ints as ints, floats as repr() (strtod reads the
    same double); translate in pixels, pct * size exactly as timm computes it."""
    if name in NO_ARG_OPS:
        assert value is None
        return name
    if name in INT_OPS:
        assert isinstance(value, int)
        return f"{name}:{value}"
    if name == "translate-x":
        value = value * img.size[0]
    elif name == "translate-y":
        value = value * img.size[1]
    value = float(value)
    assert float(repr(value)) == value
    return f"{name}:{value!r}"


# (input, [(op, argument), ...], category). Translate arguments are timm's pct (fraction of the
# width / height); the op string carries pct * size in pixels.
RA_CASES = [
    # Integer table lookups.
    ("a", [("autocontrast", None)], "lut"),
    ("b", [("autocontrast", None)], "lut"),
    ("c", [("autocontrast", None)], "lut"),
    ("d", [("autocontrast", None)], "lut"),  # hi == lo in every channel: unchanged
    ("e", [("autocontrast", None)], "lut"),
    ("f", [("autocontrast", None)], "lut"),
    ("g", [("autocontrast", None)], "lut"),
    ("h", [("autocontrast", None)], "lut"),  # the only autocontrast cases that stretch: e, f, h
    ("a", [("equalize", None)], "lut"),
    ("b", [("equalize", None)], "lut"),
    ("c", [("equalize", None)], "lut"),
    ("d", [("equalize", None)], "lut"),  # one histogram bin per channel: unchanged
    ("e", [("equalize", None)], "lut"),  # step 0 (R); step 1 with table entries > 255 (G, B)
    ("f", [("equalize", None)], "lut"),  # 4 pixels: step 0
    ("g", [("equalize", None)], "lut"),
    ("h", [("equalize", None)], "lut"),
    ("a", [("invert", None)], "lut"),
    ("b", [("invert", None)], "lut"),
    ("c", [("invert", None)], "lut"),
    ("a", [("posterize", 0)], "lut"),  # all black
    ("a", [("posterize", 4)], "lut"),
    ("a", [("posterize", 8)], "lut"),  # timm returns the image itself
    ("b", [("posterize", 1)], "lut"),
    ("b", [("posterize", 3)], "lut"),
    ("c", [("posterize", 1)], "lut"),
    ("c", [("posterize", 4)], "lut"),
    ("a", [("solarize", 100)], "lut"),
    ("a", [("solarize", 230)], "lut"),
    ("b", [("solarize", 0)], "lut"),  # everything inverted
    ("b", [("solarize", 179)], "lut"),
    ("c", [("solarize", 0)], "lut"),
    ("c", [("solarize", 100)], "lut"),
    ("c", [("solarize", 128)], "lut"),  # the same as the bare `solarize`
    ("c", [("solarize", 256)], "lut"),  # unchanged
    ("a", [("solarize-add", 0)], "lut"),
    ("a", [("solarize-add", 73)], "lut"),
    ("b", [("solarize-add", 110)], "lut"),
    ("c", [("solarize-add", 40)], "lut"),
    ("c", [("solarize-add", 110)], "lut"),
    # ImageEnhance.Sharpness: blend with the SMOOTH-filtered image.
    ("a", [("sharpness", 0.1)], "sharpness"),
    ("a", [("sharpness", 0.55)], "sharpness"),
    ("a", [("sharpness", 1.0)], "sharpness"),  # blend returns the image
    ("a", [("sharpness", 1.9)], "sharpness"),
    ("b", [("sharpness", 0.1)], "sharpness"),
    ("b", [("sharpness", 1.9)], "sharpness"),
    ("c", [("sharpness", 0.0)], "sharpness"),  # the smoothed image itself
    ("c", [("sharpness", 0.55)], "sharpness"),
    ("c", [("sharpness", 1.9)], "sharpness"),
    ("d", [("sharpness", 1.9)], "sharpness"),
    ("e", [("sharpness", 1.37)], "sharpness"),
    ("f", [("sharpness", 1.9)], "sharpness"),  # smaller than 3x3: the filter copies
    ("g", [("sharpness", 0.1)], "sharpness"),
    # Affine transforms, bicubic, filled with RA_FILL.
    ("a", [("rotate", 0.0)], "affine"),  # Pillow's fast path: a copy
    ("a", [("rotate", 13.5)], "affine"),
    ("a", [("rotate", -30.0)], "affine"),
    ("a", [("rotate", 90.0)], "affine"),  # not square: the affine path, not transpose
    ("b", [("rotate", 29.7)], "affine"),
    ("b", [("rotate", -13.5)], "affine"),
    ("c", [("rotate", -7.25)], "affine"),
    ("c", [("rotate", 30.0)], "affine"),
    ("f", [("rotate", 90.0)], "affine"),  # square: transpose fast path
    ("g", [("rotate", 11.0)], "affine"),
    ("a", [("shear-x", 0.3)], "affine"),
    ("a", [("shear-x", -0.3)], "affine"),
    ("b", [("shear-x", 0.07)], "affine"),
    ("c", [("shear-x", -0.07)], "affine"),
    ("g", [("shear-x", 0.3)], "affine"),
    ("a", [("shear-y", -0.3)], "affine"),
    ("a", [("shear-y", -0.07)], "affine"),
    ("b", [("shear-y", 0.3)], "affine"),
    ("c", [("shear-y", 0.07)], "affine"),
    ("f", [("shear-y", 0.25)], "affine"),
    ("a", [("translate-x", 0.45)], "affine"),   # 21.6 px
    ("a", [("translate-x", -0.45)], "affine"),  # -21.6 px
    ("b", [("translate-x", 0.3)], "affine"),    # 6.8999999999999995 px
    ("c", [("translate-x", -0.13)], "affine"),  # -4.16 px
    ("a", [("translate-x", 2.5)], "affine"),    # 120 px on 48: all fill
    ("g", [("translate-x", 0.5)], "affine"),    # 4.5 px
    ("a", [("translate-y", 0.45)], "affine"),   # 18 px (whole)
    ("a", [("translate-y", -2.5)], "affine"),   # -100 px on 40: all fill
    ("b", [("translate-y", -0.45)], "affine"),  # -16.650000000000002 px
    ("c", [("translate-y", 0.17)], "affine"),   # 4.08 px
    ("f", [("translate-y", 0.5)], "affine"),    # 1 px
    ("g", [("translate-y", 0.3)], "affine"),    # 0.3 px on a 1-row image
    # Color / Contrast / Brightness at RandAugment's factors (0.1..1.9, and 0).
    ("a", [("saturation", 0.1)], "color"),
    ("b", [("saturation", 0.0)], "color"),
    ("c", [("saturation", 1.9)], "color"),
    ("a", [("contrast", 1.9)], "color"),
    ("b", [("contrast", 0.0)], "color"),
    ("c", [("contrast", 0.1)], "color"),
    ("f", [("contrast", 1.9)], "color"),
    ("a", [("brightness", 0.1)], "color"),
    ("b", [("brightness", 1.9)], "color"),
    ("c", [("brightness", 0.0)], "color"),
    ("d", [("brightness", 1.9)], "color"),
    # Two ops in a row, as RandAugment's num_layers=2 applies them.
    ("a", [("rotate", -27.3), ("equalize", None)], "pipeline"),
    ("a", [("sharpness", 1.81), ("translate-y", -9.5 / 40)], "pipeline"),  # -9.5 px
    ("c", [("posterize", 2), ("autocontrast", None)], "pipeline"),
    ("b", [("shear-x", 0.21), ("solarize", 179)], "pipeline"),
    ("c", [("translate-x", 0.37), ("saturation", 0.37)], "pipeline"),  # 11.84 px
    ("b", [("solarize-add", 55), ("contrast", 1.44)], "pipeline"),
    ("a", [("contrast", 0.3), ("autocontrast", None)], "pipeline"),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timm-auto-augment", default=os.environ.get("TIMM_AUTO_AUGMENT"), metavar="PATH",
                        help="timm 0.3.2's timm/data/auto_augment.py (default: $TIMM_AUTO_AUGMENT)")
    args = parser.parse_args()
    aa, aa_sha256 = load_timm_auto_augment(args.timm_auto_augment)

    os.makedirs(OUT_DIR, exist_ok=True)
    inputs = make_inputs()
    inputs.update(make_ra_inputs())
    manifest = {
        "generated_by": "scripts/make_augment_reference.py",
        "versions": {"pillow": PIL.__version__, "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "numpy": np.__version__,
                     "timm_auto_augment": {"version": TIMM_VERSION, "sha256": aa_sha256}},
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

    # RandAugment ops through timm's functions. "timm" records the calls, for reading only.
    manifest["randaugment"] = {"fillcolor": list(RA_FILL), "resample": "bicubic"}
    covered = set()
    for source, ops, category in RA_CASES:
        img, specs, calls = inputs[source], [], []
        for name, value in ops:
            specs.append(ra_op_string(img, name, value))
            img, call = ra_call(aa, img, name, value)
            calls.append(call)
            covered.add((name, source))
        case_name = source + "_" + "_".join(s.replace(":", "").replace(",", "-").replace(".", "p") for s in specs)
        add_case(case_name, source, img, category=category, ops=specs, timm=calls)
    missing = [(n, src) for n in RA_OP_NAMES for src in "abc" if (n, src) not in covered]
    assert not missing, f"RandAugment ops not tried on every one of a, b, c: {missing}"
    names = [c["name"] for c in manifest["cases"]]
    assert len(names) == len(set(names)), "duplicate case names"

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
