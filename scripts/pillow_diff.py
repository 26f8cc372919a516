#!/usr/bin/python3
"""Decodes every file of a folder with deit and with Pillow, and tallies where they part.

The DeiT III reference reads images with torchvision's ImageFolder, PIL.Image.open(path)
.convert("RGB"); deit decodes with libjpeg-turbo, its own PNM reader and stb_image, changed where
stb_image differs from Pillow (data/image_io.cpp). Run over a fuzzer's corpus
(build-fuzz/corpus/image, scripts/fuzz.sh) it finds the files the two read differently: its first
run found TGAs stored right to left, which deit read unmirrored (2026-12-07). Files that both read
must give the same pixels; a file only one side reads is a difference to look at (deit is the
more lenient with corrupt files that some of Pillow's checks refuse, such as a PNG's CRCs).

Usage: scripts/pillow_diff.py FOLDER [--deit build/deit] [--examples 4]
Needs Pillow (10 or later, e.g. python3 -m venv /tmp/pil && /tmp/pil/bin/pip install pillow);
deit decodes each file through `deit augment --op hflip --op hflip`, which changes no pixel.
"""
import argparse
import collections
import os
import subprocess
import sys
import tempfile
import warnings

import PIL
from PIL import Image

# Pillow's decompression-bomb limit is deit's (data/image.h): both refuse an image past it. Below
# it, the warning Pillow gives past half of it says nothing about the pixels.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)

MAGIC = [(b"\xff\xd8", "JPEG"), (b"\x89PNG", "PNG"), (b"BM", "BMP"), (b"GIF", "GIF"),
         (b"8BPS", "PSD"), (b"P5", "PNM"), (b"P6", "PNM")]


def format_of(data):
    return next((name for magic, name in MAGIC if data.startswith(magic)), "TGA or none")


def deit_pixels(deit, path, out):
    """deit's RGB pixels of the file as (size, bytes), or its error text."""
    run = subprocess.run([deit, "augment", "--in", path, "--out", out, "--op", "hflip", "--op",
                          "hflip"], capture_output=True, timeout=60)
    if run.returncode != 0:
        return None, run.stderr.decode(errors="replace").strip().replace(path + ": ", "")
    with Image.open(out) as image:
        rgb = image.convert("RGB")
        return (rgb.size, rgb.tobytes()), ""


def pillow_pixels(path):
    """Pillow's RGB pixels of the file as (size, bytes), or its error text."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
            return (rgb.size, rgb.tobytes()), ""
    except Exception as error:  # Pillow raises many kinds for bad files
        return None, f"{type(error).__name__}: {error}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--deit", default=os.path.join(os.path.dirname(__file__), "..", "build",
                                                       "deit"))
    parser.add_argument("--examples", type=int, default=4, help="files named per difference")
    args = parser.parse_args()
    tally = collections.Counter()
    examples = collections.defaultdict(list)
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "decoded.png")
        for name in sorted(os.listdir(args.folder)):
            path = os.path.join(args.folder, name)
            if not os.path.isfile(path):
                continue
            with open(path, "rb") as file:
                kind = format_of(file.read(4))
            ours, our_error = deit_pixels(args.deit, path, out)
            theirs, their_error = pillow_pixels(path)
            if ours and theirs:
                outcome = "same pixels" if ours == theirs else "different pixels"
            elif ours:
                outcome = "deit reads, Pillow refuses"
            elif theirs:
                outcome = "Pillow reads, deit refuses"
            else:
                outcome = "both refuse"
            tally[kind, outcome] += 1
            if outcome not in ("same pixels", "both refuse"):
                examples[kind, outcome].append(f"{name}: {our_error or their_error}"[:150])
    print(f"Pillow {PIL.__version__}, {sum(tally.values())} files of {args.folder}")
    for (kind, outcome), count in sorted(tally.items()):
        print(f"  {kind:12} {outcome:28} {count}")
    for (kind, outcome), names in sorted(examples.items()):
        print(f"{kind}, {outcome}:")
        for line in names[:args.examples]:
            print("  " + line)
    return 1 if any(outcome == "different pixels" for _, outcome in tally) else 0


if __name__ == "__main__":
    sys.exit(main())
