// Included ahead of every kernels/cuda/*.cu in the emulated build (tests/emulated/runtime/
// CMakeLists.txt), whose launches rewrite_launches.cmake has turned from
//     kernel<<<grid, block, shared_bytes, stream>>>(args...)
// into
//     kernel ^ ::deit_emu::LaunchConfig(__FILE__, __LINE__, grid, block, shared_bytes, stream)
//            ^ ::deit_emu::kernel_args(args...)
// The first ^ binds the kernel to its configuration, the second converts the arguments to the
// kernel's parameter types and queues the launch on the emulated device (emulated_device.h),
// keeping the arguments by value as CUDA does; the kernel then runs on the emulator
// (cuda_emulator.h) when the host waits for its stream.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "tests/emulated/cuda_emulator.h"
#include "tests/emulated/runtime/emulated_device.h"

namespace deit_emu {

struct LaunchConfig {
  LaunchConfig(const char* file, int line, dim3 grid, dim3 block, size_t shared_bytes = 0,
               cudaStream_t stream = nullptr)
      : site(std::string(file) + ":" + std::to_string(line)),
        grid(grid),
        block(block),
        shared_bytes(shared_bytes),
        stream(stream) {}
  std::string site;  // "kernels/cuda/layernorm.cu:43", the launch's name in failure messages
  dim3 grid, block;
  size_t shared_bytes;
  cudaStream_t stream;
};

template <typename... Params>
struct BoundKernel {
  void (*kernel)(Params...);
  LaunchConfig config;
};

template <typename... Args>
struct KernelArgs {
  std::tuple<Args...> values;
};

template <typename... Args>
KernelArgs<std::decay_t<Args>...> kernel_args(Args&&... args) {
  return {std::tuple<std::decay_t<Args>...>(std::forward<Args>(args)...)};
}

template <typename... Params>
BoundKernel<Params...> operator^(void (*kernel)(Params...), const LaunchConfig& config) {
  return {kernel, config};
}

// Every allocation one of the pointer-sized words in [bytes, bytes + size) points into, as
// written to (the words' pointee types are not known).
inline void add_word_accesses(Footprint& footprint, const void* bytes, size_t size) {
  for (size_t at = 0; at + sizeof(void*) <= size; at += alignof(void*)) {
    const void* word = nullptr;
    std::memcpy(&word, static_cast<const unsigned char*>(bytes) + at, sizeof word);
    if (const auto a = allocation_access(word, true)) footprint.accesses.push_back(*a);
  }
}

// What a kernel may touch through one argument: all of the allocation a pointer points into (read
// only through a pointer to const); through a struct (an op with its operands), all of every
// allocation one of its pointer-sized words points into. A pointer to structs may be a table in
// device memory (the optimizer's tensor slots): the words from where it points to the end of its
// allocation, at most kTableScanBytes of them, are read when the launch is queued. That sees the
// values the table was uploaded with (and waited for) before the launches that read it; the
// gradient pointers that set_grads_kernel writes into it each step may still be the last step's
// there, but that kernel, queued just before on the same stream, carries this step's in its
// arguments, where they are seen. The bound keeps the scan cheap where the structs share their
// allocation with bulk data (the augmentation's per-sample structs, ahead of the batch's pixels),
// whose words are offsets, sizes, floats and pixels, not addresses of the emulated device.
constexpr size_t kTableScanBytes = size_t{1} << 20;

template <typename T>
void add_accesses(Footprint& footprint, const T& arg) {
  if constexpr (std::is_pointer_v<T>) {
    using Pointee = std::remove_pointer_t<T>;
    const bool writes = !std::is_const_v<Pointee>;
    const auto a = allocation_access(arg, writes);
    if (!a) return;
    footprint.accesses.push_back(*a);
    if constexpr (std::is_class_v<Pointee>) {
      const uintptr_t from = reinterpret_cast<uintptr_t>(arg);
      add_word_accesses(footprint, arg, std::min(a->end - from, kTableScanBytes));
    }
  } else if constexpr (std::is_class_v<T>) {
    add_word_accesses(footprint, &arg, sizeof(T));
  }
}

template <typename... Params, typename... Args>
void operator^(const BoundKernel<Params...>& bound, KernelArgs<Args...>&& args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "a kernel launch with the wrong arity");
  std::tuple<std::decay_t<Params>...> params(std::move(args.values));
  const LaunchConfig& c = bound.config;
  Footprint footprint{c.site, {}, {}};
  std::apply([&](const auto&... arg) { (add_accesses(footprint, arg), ...); }, params);
  const emu::Launch launch{c.site, c.grid, c.block, c.shared_bytes};
  auto kernel = bound.kernel;
  launch_kernel(
      reinterpret_cast<const void*>(kernel), c.grid, c.block, c.shared_bytes, c.stream,
      [kernel, params, launch] { emu::launch(launch, [&] { std::apply(kernel, params); }); },
      std::move(footprint));
}

}  // namespace deit_emu

// The overload nvcc's cuda_runtime.h gives kernels (a kernel is a function pointer here).
template <typename... Params>
cudaError_t cudaFuncSetAttribute(void (*kernel)(Params...), cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attr, value);
}
