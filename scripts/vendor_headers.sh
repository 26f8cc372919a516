#!/usr/bin/env bash
# Copies the header-only dependencies installed by scripts/setup.sh (Catch2 v2 with its CMake
# helpers, stb, CLI11, nlohmann/json), and zlib's and libjpeg-turbo's headers and static libraries,
# into .deps/, for building on a machine without Debian's packages, such as a lent GPU machine
# (bench/gpu-check.sh reads them from there).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
deps=.deps
rm -rf "$deps"
mkdir -p "$deps/include" "$deps/lib/cmake"
cp -r /usr/include/catch2 /usr/include/stb /usr/include/CLI /usr/include/nlohmann "$deps/include/"
cp -r /usr/lib/cmake/Catch2 "$deps/lib/cmake/"
cp /usr/include/zlib.h /usr/include/zconf.h "$deps/include/"
cp "/usr/lib/$(gcc -print-multiarch)/libz.a" "$deps/lib/"
cp /usr/include/jpeglib.h /usr/include/jmorecfg.h /usr/include/jerror.h \
  "/usr/include/$(gcc -print-multiarch)/jconfig.h" "$deps/include/"
cp "/usr/lib/$(gcc -print-multiarch)/libjpeg.a" "$deps/lib/"
du -sh "$deps"
