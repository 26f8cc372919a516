// Central finite-difference gradient checks in double precision, for kernels and engine ops alike.
//
// The checked scalar is L = sum(out * g) for a random upstream gradient g, so one numeric
// derivative per input element exercises every output element at once. Typical use:
//
//   deit::Rng rng(1);
//   auto x = deit::test::random_vector(rng, n);
//   auto g = deit::test::random_vector(rng, m);
//   auto loss = [&] { forward(x.data(), y.data()); return deit::test::dot(y, g); };
//   backward(g.data(), x.data(), dx.data());
//   CHECK(deit::test::gradient_error(x, dx, loss) < deit::test::kGradTolerance);
//
// Whatever loss() reads is perturbed in place (and restored), so the same call checks a gradient
// with respect to weights, biases or any other buffer the forward reads.
#pragma once
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include "engine/rng.h"

namespace deit::test {

// Step and acceptance threshold of a double-precision check. With h = 1e-6 a central difference
// is off by ~h^2 = 1e-12 (truncation) plus ~1e-16 / h = 1e-10 (rounding), relative; the kernels'
// checks land near 1e-9, and a wrong gradient lands near 1.
constexpr double kGradStep = 1e-6;
constexpr double kGradTolerance = 1e-6;

// n values uniform in [lo, hi): no zeros or lattices that could hide a wrong index, and different
// for every seed.
inline std::vector<double> random_vector(Rng& rng, size_t n, double lo = -1.0, double hi = 1.0) {
  std::vector<double> v(n);
  for (double& x : v) x = rng.uniform(lo, hi);
  return v;
}

// n NaNs: the initial contents of an output buffer, so a kernel that leaves an element unwritten
// (or accumulates into it instead of overwriting) is caught.
inline std::vector<double> nan_vector(size_t n) {
  return std::vector<double>(n, std::numeric_limits<double>::quiet_NaN());
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// ||a - b|| / ||b|| (||a - b|| when b is all zeros): b is the reference. A NaN anywhere makes it
// NaN, which fails every "< tolerance" comparison.
inline double relative_error(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double diff = 0, norm = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    diff += (a[i] - b[i]) * (a[i] - b[i]);
    norm += b[i] * b[i];
  }
  return norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

// dL/dx[i] = (L(x + h e_i) - L(x - h e_i)) / 2h for every element of x: (n), x restored after.
// x may be any floating type (an engine check perturbs a float tensor in place, with a larger h
// and a looser tolerance than the double defaults).
template <typename T, typename Loss>
std::vector<double> numeric_gradient(T* x, size_t n, Loss&& loss, double h = kGradStep) {
  std::vector<double> grad(n);
  for (size_t i = 0; i < n; ++i) {
    const T saved = x[i];
    const T x_up = static_cast<T>(saved + h), x_down = static_cast<T>(saved - h);
    x[i] = x_up;
    const double up = loss();
    x[i] = x_down;
    const double down = loss();
    x[i] = saved;
    // Divide by the step actually taken, which rounding may have moved away from 2h.
    grad[i] = (up - down) / (static_cast<double>(x_up) - static_cast<double>(x_down));
  }
  return grad;
}

// Relative error of an analytic gradient with respect to x against the numeric one.
template <typename Loss>
double gradient_error(std::vector<double>& x, const std::vector<double>& analytic, Loss&& loss,
                      double h = kGradStep) {
  return relative_error(analytic, numeric_gradient(x.data(), x.size(), loss, h));
}

}  // namespace deit::test
