#!/usr/bin/env python3
"""How far cuBLASLt's GELU epilogues (the tanh approximation) are from the exact erf GELU that
DeiT III trains with, in the precision the CUDA path stores activations in (bf16). Plain Python.

For every finite bf16 value x in [-10, 10], and those with |x| <= 3 (where fc1's outputs are):
how often bf16(gelu_tanh(x)) != bf16(gelu_erf(x)), and the largest absolute difference; the same
for the derivatives, which the DGELU epilogue would use in backward. kernels/gelu.h quotes the
result.

  /usr/bin/python3 scripts/gelu_epilogue_error.py
"""
import math
import struct

SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


def bf16(x):
    """x rounded to the nearest bf16 (ties to even), as a float."""
    bits = struct.unpack(">I", struct.pack(">f", x))[0]
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return struct.unpack(">f", struct.pack(">I", bits))[0]


def bf16_values(lo, hi):
    for high in range(0x10000):
        x = struct.unpack(">f", struct.pack(">I", high << 16))[0]
        if math.isfinite(x) and lo <= x <= hi:
            yield x


def gelu_erf(x):
    return 0.5 * x * math.erfc(-x / math.sqrt(2))


def gelu_tanh(x):
    return 0.5 * x * (1 + math.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x ** 3)))


def dgelu_erf(x):
    return 0.5 * math.erfc(-x / math.sqrt(2)) + x * math.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def dgelu_tanh(x):
    t = math.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x ** 3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)


def main():
    for name, exact, approx in (("gelu", gelu_erf, gelu_tanh), ("gelu'", dgelu_erf, dgelu_tanh)):
        for bound in (10, 3):
            xs = list(bf16_values(-bound, bound))
            differ = sum(1 for x in xs if bf16(exact(x)) != bf16(approx(x)))
            worst = max(abs(exact(x) - approx(x)) for x in xs)
            print(f"{name:6} |x| <= {bound:2}: {len(xs)} bf16 inputs, {differ} "
                  f"({100 * differ / len(xs):.2f}%) round to another bf16, "
                  f"largest difference {worst:.2e}")


if __name__ == "__main__":
    main()
