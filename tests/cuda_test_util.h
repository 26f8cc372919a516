// Device plumbing shared by the [gpu] tests (tests/*_cuda.cpp): a stream, device buffers that start
// poisoned with NaN, bf16 random data that the device and the CPU twin both see exactly, and the
// DESIGN.md comparison (every element finite, relative error ||got - ref|| / ||ref|| within tol).
#pragma once
#include <cuda_runtime.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "engine/rng.h"
#include "kernels/bf16.h"
#include "kernels/check.h"

namespace deit::test {

using kernels::bf16_bits;
using kernels::bf16_to_float;
using kernels::float_to_bf16;

// ---------------------------------------------------------------------------------------------
// Device plumbing.

// Whether the current device is the emulated one of tests/emulated/runtime (its name says so),
// where a test may rely on what that device does differently (cuda_emulator.h, cublaslt.cpp).
inline bool on_emulated_device() {
  int device = 0;
  DEIT_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  DEIT_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return std::string(prop.name).rfind("emulated", 0) == 0;
}

class Stream {
 public:
  Stream() { DEIT_CUDA_CHECK(cudaStreamCreate(&s_)); }
  ~Stream() { cudaStreamDestroy(s_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  operator cudaStream_t() const { return s_; }
  // Waits for the stream and surfaces any asynchronous kernel error here.
  void sync() const {
    DEIT_CUDA_CHECK(cudaStreamSynchronize(s_));
    DEIT_CUDA_CHECK(cudaGetLastError());
  }

 private:
  cudaStream_t s_ = nullptr;
};

// n elements of T on the device, `offset` elements past a 256-byte aligned allocation (offset 1
// misaligns the pointer and drives the kernels onto their scalar paths). Starts poisoned.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n, size_t offset = 0) : n_(n), offset_(offset) {
    DEIT_CUDA_CHECK(cudaMalloc(&base_, (n + offset + 1) * sizeof(T)));
    poison();
  }
  explicit DeviceBuffer(const std::vector<T>& host, size_t offset = 0)
      : DeviceBuffer(host.size(), offset) {
    DEIT_CUDA_CHECK(cudaMemcpy(get(), host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : base_(std::exchange(o.base_, nullptr)), n_(o.n_), offset_(o.offset_) {}
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(DeviceBuffer&&) = delete;
  ~DeviceBuffer() {
    if (base_) cudaFree(base_);
  }

  T* get() const { return base_ + offset_; }
  size_t size() const { return n_; }

  // All bytes 0xFF: 0xFFFF is a bf16 NaN, 0xFFFFFFFF an fp32 NaN.
  void poison() { DEIT_CUDA_CHECK(cudaMemset(base_, 0xFF, (n_ + offset_ + 1) * sizeof(T))); }

  std::vector<T> download() const {
    std::vector<T> host(n_);
    DEIT_CUDA_CHECK(cudaMemcpy(host.data(), get(), n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }

 private:
  T* base_ = nullptr;
  size_t n_;
  size_t offset_;
};

using Bf16Buffer = DeviceBuffer<bf16_bits>;
using F32Buffer = DeviceBuffer<float>;

// ---------------------------------------------------------------------------------------------
// Host data.

// Random numbers rounded to bf16 once: `bits` go to the device, `values` (the same numbers in
// fp32) to the CPU twin.
struct Bf16Host {
  std::vector<bf16_bits> bits;
  std::vector<float> values;
};

inline Bf16Host random_bf16(Rng& rng, size_t n, double lo, double hi) {
  Bf16Host h{std::vector<bf16_bits>(n), std::vector<float>(n)};
  for (size_t i = 0; i < n; ++i) {
    h.bits[i] = float_to_bf16(static_cast<float>(rng.uniform(lo, hi)));
    h.values[i] = bf16_to_float(h.bits[i]);
  }
  return h;
}

inline std::vector<float> random_f32(Rng& rng, size_t n, double lo, double hi) {
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(rng.uniform(lo, hi));
  return v;
}

inline std::vector<float> download_float(const Bf16Buffer& buf) {
  const std::vector<bf16_bits> bits = buf.download();
  std::vector<float> v(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) v[i] = bf16_to_float(bits[i]);
  return v;
}
inline std::vector<float> download_float(const F32Buffer& buf) { return buf.download(); }

// Every element finite, and ||got - ref|| / ||ref|| <= tol (the absolute norm when ref is 0).
inline void check_close(const std::string& what, const std::vector<float>& got,
                 const std::vector<float>& ref, double tol) {
  REQUIRE(got.size() == ref.size());
  size_t bad = 0;
  double diff = 0, norm = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) ++bad;
    diff += (static_cast<double>(got[i]) - ref[i]) * (static_cast<double>(got[i]) - ref[i]);
    norm += static_cast<double>(ref[i]) * ref[i];
  }
  const double rel = norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
  INFO(what << ": " << bad << " non-finite of " << got.size() << ", relative error " << rel
            << " (tolerance " << tol << ")");
  CHECK(bad == 0);
  CHECK(rel <= tol);
}

template <typename Buffer>
void check_close(const std::string& what, const Buffer& got, const std::vector<float>& ref,
                 double tol) {
  check_close(what, download_float(got), ref, tol);
}

// Bitwise equality of two downloads (determinism).
template <typename T>
void check_same_bits(const std::string& what, const std::vector<T>& a, const std::vector<T>& b) {
  INFO(what);
  REQUIRE(a.size() == b.size());
  CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

}  // namespace deit::test
