// What the emulated tests share: bf16 inputs (the bits for the kernels, the same values in fp32 for
// the CPU twins) and how one shape is judged against the twin, as the [gpu] tests do on a GPU:
// every element compared, nothing non-finite. Each check appends its measure to the current line
// ("out 2.0e-03") and, when it fails, a FAIL line of its own; print() shows the lines and the
// verdict. Kernel families with several kernel pairs start a line per pair with part().
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/bf16.h"

namespace emu {

using deit::kernels::bf16_bits;

// bf16 data: the bits for the kernels, the same values in fp32 for the twins.
struct Bf16Data {
  std::vector<bf16_bits> bits;
  std::vector<float> values;
};

// (B, T, C) activations; offset 1 misaligns them (the launchers' scalar paths), as in the [gpu]
// tests.
struct RowShape {
  int64_t B, T, C;
  size_t offset;
  int64_t rows() const { return B * T; }
  size_t n() const { return static_cast<size_t>(B * T * C); }
  std::string str() const {
    return "B=" + std::to_string(B) + " T=" + std::to_string(T) + " C=" + std::to_string(C) +
           (offset != 0 ? " offset=" + std::to_string(offset) : "");
  }
};

inline Bf16Data round_to_bf16(const std::vector<float>& v) {
  Bf16Data d{std::vector<bf16_bits>(v.size()), std::vector<float>(v.size())};
  for (size_t i = 0; i < v.size(); ++i) {
    d.bits[i] = deit::kernels::float_to_bf16(v[i]);
    d.values[i] = deit::kernels::bf16_to_float(d.bits[i]);
  }
  return d;
}

// n fp32 values uniform in [lo, hi].
inline std::vector<float> random_f32(std::mt19937_64& rng, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

// n values uniform in [lo, hi], rounded to bf16.
inline Bf16Data random_bf16(std::mt19937_64& rng, size_t n, float lo, float hi) {
  return round_to_bf16(random_f32(rng, n, lo, hi));
}

inline std::vector<float> to_float(const std::vector<bf16_bits>& bits) {
  std::vector<float> v(bits.size());
  std::transform(bits.begin(), bits.end(), v.begin(), deit::kernels::bf16_to_float);
  return v;
}

// A kernel template's instance, for failure messages: "attention_forward_kernel<64>".
inline std::string kernel_name(const char* kernel, int parameter) {
  return std::string(kernel) + "<" + std::to_string(parameter) + ">";
}

inline double norm(const std::vector<float>& v) {
  double n = 0;
  for (float x : v) n += static_cast<double>(x) * x;
  return std::sqrt(n);
}

class ShapeChecks {
 public:
  explicit ShapeChecks(std::string shape) : shape_(std::move(shape)) {}

  // Starts the line of one kernel pair ("layernorm backward"); its failures name it.
  void part(const std::string& name) {
    part_ = name + ", ";
    lines_.push_back(shape_ + "  " + name + ":");
  }

  // ||got - ref|| / max(||ref||, floor) <= tol (||got - ref|| when that is 0), and every element
  // of got finite. A floor serves where the exact values are 0 and both sides hold only rounding
  // noise (attention's dq and dk at T = 1): a scale taken from a larger tensor stands in.
  void relative(const char* tensor, const std::vector<float>& got, const std::vector<float>& ref,
                double tol, double floor = 0) {
    report(tensor, "relative error", relative_error(got, ref, floor), tol, got);
  }

  // relative() of every pair got[k], ref[k] (the tensors of a multi-tensor launch), measured by
  // the worst of them; each failing pair is named by its index k.
  void relative_each(const char* tensors, const std::vector<std::vector<float>>& got,
                     const std::vector<std::vector<float>>& ref, double tol, double floor = 0) {
    double worst = 0;
    for (size_t k = 0; k < got.size(); ++k) {
      const double rel = relative_error(got[k], ref[k], floor);
      worst = std::max(worst, rel);
      const std::string name = std::string(tensors) + " " + std::to_string(k);
      if (!passes(rel, tol, got[k])) fail(name, why("relative error", rel, tol, got[k]));
    }
    append(tensors, worst);
  }

  // A property of the results that has no measure ("the norm is not finite").
  void expect(const std::string& what, bool holds) {
    if (!holds) fail(what, "does not hold");
  }

  // max |got - ref| <= tol, and every element of got finite.
  void absolute(const char* tensor, const std::vector<float>& got, const std::vector<float>& ref,
                double tol) {
    double worst = 0;
    for (size_t i = 0; i < got.size(); ++i)
      worst = std::max(worst, std::fabs(static_cast<double>(got[i]) - ref[i]));
    report(tensor, "max abs error", worst, tol, got);
  }

  // got and ref hold the same bits (a second run, another path to the same result).
  template <typename T>
  void same_bits(const char* what, const std::vector<T>& got, const std::vector<T>& ref) {
    for (size_t i = 0; i < got.size(); ++i)
      if (std::memcmp(&got[i], &ref[i], sizeof(T)) != 0)
        return fail(what, "element " + std::to_string(i) + " differs");
  }

  // Prints the lines, the last with the verdict, then the failures; true when it passed.
  bool print() const {
    const std::vector<std::string> lines = lines_.empty() ? std::vector{shape_} : lines_;
    for (size_t i = 0; i + 1 < lines.size(); ++i) std::printf("%s\n", lines[i].c_str());
    std::printf("%s  %s\n", lines.back().c_str(), failures_.empty() ? "ok" : "FAILED");
    for (const std::string& f : failures_) std::printf("FAIL %s: %s\n", shape_.c_str(), f.c_str());
    std::fflush(stdout);
    return failures_.empty();
  }

 private:
  static double relative_error(const std::vector<float>& got, const std::vector<float>& ref,
                               double floor) {
    double diff = 0;
    for (size_t i = 0; i < got.size(); ++i)
      diff += (static_cast<double>(got[i]) - ref[i]) * (static_cast<double>(got[i]) - ref[i]);
    const double scale = std::max(norm(ref), floor);
    return scale > 0 ? std::sqrt(diff) / scale : std::sqrt(diff);
  }

  static size_t non_finite(const std::vector<float>& got) {
    return static_cast<size_t>(
        std::count_if(got.begin(), got.end(), [](float x) { return !std::isfinite(x); }));
  }

  static bool passes(double value, double tol, const std::vector<float>& got) {
    return non_finite(got) == 0 && value <= tol;
  }

  static std::string why(const char* measure, double value, double tol,
                         const std::vector<float>& got) {
    char text[64];
    std::snprintf(text, sizeof text, " %.3g (tolerance %g), ", value, tol);
    return measure + std::string(text) + std::to_string(non_finite(got)) + " non-finite of " +
           std::to_string(got.size());
  }

  // Appends "  tensor 2.0e-03" to the current line.
  void append(const char* tensor, double value) {
    if (lines_.empty()) lines_.push_back(shape_);
    char text[64];
    std::snprintf(text, sizeof text, "  %s %.1e", tensor, value);
    lines_.back() += text;
  }

  void report(const char* tensor, const char* measure, double value, double tol,
              const std::vector<float>& got) {
    append(tensor, value);
    if (!passes(value, tol, got)) fail(tensor, why(measure, value, tol, got));
  }

  void fail(const std::string& what, const std::string& why) {
    failures_.push_back(part_ + what + ": " + why);
  }

  std::string shape_, part_;
  std::vector<std::string> lines_, failures_;
};

}  // namespace emu
