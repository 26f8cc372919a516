#!/usr/bin/python3
"""The coefficients of the GELU kernels' normal CDF (kernels/cuda/gelu_kernels.cuh), and their error.

The kernels compute Phi(x) without a branch on x and with one exponential, shared with the
backward's density phi(x):

    tail(x) = Phi(-|x|) = t * E * S(t),   t = 1 / (1 + |x| / (2 sqrt 2)),   E = exp(-x^2 / 2)
    Phi(x)  = tail(x) for x < 0, 1 - tail(x) otherwise;   phi(x) = E / sqrt(2 pi)

S is a polynomial in t in (0, 1], fitted here to S*(t) = erfc(u) exp(u^2) / (2 t), u = |x| / sqrt 2,
for the smallest worst relative error (least squares reweighted by the error, Lawson's method).
S* is smooth on all of (0, 1]: it tends to 1 / (4 sqrt pi) as |x| grows (erfc's asymptote) and is
1/2 at x = 0. A relative error in S is the same relative error in the tail, so Phi keeps its
digits deep in the negative tail, where 1 + erf(x / sqrt 2) would cancel.

Prints the coefficients (highest power first, as the kernel's Horner loop takes them) and the
worst relative error of GELU's forward and absolute one of its backward, the polynomial evaluated in
float32 as the kernel does (but for t, divided exactly here where the kernel's fast reciprocal is
within 2 ulp), over every bf16 value of x that GELU does not round to 0.

    /usr/bin/python3 scripts/fit_gelu_phi.py [--degree 6]
"""
import argparse
import math

import numpy as np

SLOPE = 1.0 / (2.0 * math.sqrt(2.0))  # t = 1 / (1 + SLOPE |x|)
X_MAX = 13.2  # exp(-x^2 / 2) leaves float32's normal range past here


def target(x):
    """S*(t(x)) for |x| in x, in float64."""
    t = 1.0 / (1.0 + SLOPE * x)
    scaled_erfc = np.array([math.erfc(v / math.sqrt(2.0)) * math.exp(v * v / 2.0) for v in x])
    return t, scaled_erfc / (2.0 * t)


def fit(degree):
    t, s = target(np.linspace(0.0, X_MAX, 200001))
    powers = np.vander(t, degree + 1)
    weights = np.ones_like(t)
    for _ in range(80):  # Lawson: weights grow where the error is large, toward the minimax fit
        rows = powers / s[:, None] * np.sqrt(weights)[:, None]
        coefficients, *_ = np.linalg.lstsq(rows, np.sqrt(weights), rcond=None)
        error = np.abs(powers @ coefficients / s - 1.0)
        weights *= error
        weights /= weights.sum()
    return coefficients


def every_bf16_value(lo, hi):
    """Every bf16 value in [lo, hi] (lo < 0 < hi), as float64."""
    bits = np.arange(0, 1 << 16, dtype=np.uint32) << 16
    values = bits.view(np.float32)
    values = values[np.isfinite(values)].astype(np.float64)
    return np.unique(values[(values >= lo) & (values <= hi)])


def kernel_gelu(x, coefficients):
    """The kernel's arithmetic in float32: GELU(x) and its derivative."""
    f = np.float32
    x = x.astype(f)
    a = np.abs(x)
    t = f(1) / (f(1) + f(SLOPE) * a)
    e = np.exp(f(-0.5) * x * x).astype(f)
    s = np.full_like(x, f(coefficients[0]))
    for c in coefficients[1:]:
        s = s * t + f(c)
    tail = t * e * s
    phi_cdf = np.where(x < 0, tail, f(1) - tail)
    return x * phi_cdf, phi_cdf + x * e * f(1 / math.sqrt(2 * math.pi))


def exact_gelu(x):
    cdf = np.array([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in x])
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return x * cdf, cdf + x * pdf


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--degree", type=int, default=6)
    degree = parser.parse_args().degree
    coefficients = fit(degree)
    print("S(t), highest power first:")
    for c in coefficients:
        print(f"  {np.float32(c)!r}f".replace("np.float32(", "").replace(")", ""))

    x = np.linspace(0.0, X_MAX, 200001)
    t, s = target(x)
    print(f"worst relative error of S, in float64: {np.abs(np.polyval(coefficients, t) / s - 1).max():.2e}")

    x = every_bf16_value(-X_MAX, X_MAX)
    x = x[np.abs(x) > 1e-30]
    y, dy = kernel_gelu(x, [np.float32(c) for c in coefficients])
    y_ref, dy_ref = exact_gelu(x)
    forward = np.abs(y / y_ref - 1)
    backward = np.abs(dy - dy_ref)  # absolute: the derivative is O(1) and crosses 0 near -0.75
    print(f"over {x.size} bf16 values of x in [-{X_MAX}, {X_MAX}], the kernel's float32 arithmetic:")
    print(f"  GELU forward, worst relative error {forward.max():.2e} (at x = {x[forward.argmax()]:g})")
    print(f"  GELU backward, worst absolute error {backward.max():.2e} "
          f"(at x = {x[backward.argmax()]:g})")


if __name__ == "__main__":
    main()
