#!/usr/bin/python3
"""JPEG files and the pixels Pillow decodes from them, for tests/test_data_image.cpp's check that
deit decodes JPEG as the DeiT III reference's loader does (torchvision's ImageFolder:
PIL.Image.open(path).convert("RGB")).

Writes under tests/data/jpeg/ one small JPEG per kind the datasets hold (baseline and progressive,
4:2:0, 4:2:2 and 4:4:4 chroma, grayscale, CMYK, restart markers, odd sizes that leave partial
blocks) and, beside each, NAME.ppm: binary PPM (P6) of Pillow's RGB pixels. The images are smooth
noise, so that the IDCT and the chroma upsampling are exercised at every pixel.

Run with Pillow 10 or later (its CMYK conversion is the one deit follows), e.g. in a venv:
    python3 -m venv /tmp/pil && /tmp/pil/bin/pip install pillow numpy
    /tmp/pil/bin/python scripts/make_jpeg_reference.py
The files it writes are committed, so the tests need no Python.
"""
import os

import numpy as np
import PIL
from PIL import Image, ImageFile, features

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "jpeg")
ImageFile.MAXBLOCK = 1 << 20  # a progressive file's scans written whole

# name, mode, (width, height), save options
CASES = [
    ("baseline_420", "RGB", (37, 29), dict(quality=90, subsampling=2)),
    ("progressive_422", "RGB", (41, 23), dict(quality=75, subsampling=1, progressive=True)),
    ("baseline_444", "RGB", (40, 24), dict(quality=95, subsampling=0)),
    ("grayscale", "L", (37, 29), dict(quality=90)),
    ("cmyk", "CMYK", (33, 21), dict(quality=90)),
    # A restart marker after every MCU row, as cameras write them: the check that a file is whole
    # must step over them inside the scans (data/jpeg_decode.cpp).
    ("restart_420", "RGB", (96, 64), dict(quality=90, subsampling=2, restart_marker_rows=1)),
]


def smooth_noise(rng, mode, size):
    """Noise on a grid an eighth of the size, upsampled bicubically: JPEG-like content."""
    width, height = size
    channels = len(mode) if mode != "L" else 1
    small = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), channels), np.uint8)
    image = Image.fromarray(small[..., 0] if channels == 1 else small, mode)
    return image.resize(size, Image.BICUBIC)


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20261205)
    for name, mode, size, options in CASES:
        path = os.path.join(OUT, name + ".jpg")
        smooth_noise(rng, mode, size).save(path, **options)
        Image.open(path).convert("RGB").save(os.path.join(OUT, name + ".ppm"))
    print("Pillow", PIL.__version__, "libjpeg-turbo", features.version("libjpeg_turbo"), "->", OUT)


if __name__ == "__main__":
    main()
