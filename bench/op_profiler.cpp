#include "bench/op_profiler.h"

#include <chrono>

#if DEIT_HAVE_CUDA
#include "engine/stream.h"
#include "kernels/check.h"
#endif

namespace deit::bench {

double now_ms() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

OpProfiler::~OpProfiler() {
#if DEIT_HAVE_CUDA
  for (Span& s : spans_) {
    if (s.start) cudaEventDestroy(s.start);
    if (s.stop) cudaEventDestroy(s.stop);
  }
#endif
}

void OpProfiler::begin(const char* op, Device device) {
  if (depth_++ > 0) return;
  Span span;
  span.op = op;
  if (device.is_cpu()) {
    cpu_start_ms_ = now_ms();
  } else {
#if DEIT_HAVE_CUDA
    DEIT_CUDA_CHECK(cudaEventCreate(&span.start));
    DEIT_CUDA_CHECK(cudaEventCreate(&span.stop));
    DEIT_CUDA_CHECK(cudaEventRecord(span.start, compute_stream(device.index)));
#endif
  }
  spans_.push_back(std::move(span));
}

void OpProfiler::end(const char* /*op*/, Device device) {
  if (--depth_ > 0) return;
  Span& span = spans_.back();
  if (device.is_cpu()) {
    span.cpu_ms = now_ms() - cpu_start_ms_;
  } else {
#if DEIT_HAVE_CUDA
    DEIT_CUDA_CHECK(cudaEventRecord(span.stop, compute_stream(device.index)));
#endif
  }
}

std::map<std::string, OpTotal> OpProfiler::totals() {
  std::map<std::string, OpTotal> totals;
  for (const Span& s : spans_) {
    double ms = s.cpu_ms;
#if DEIT_HAVE_CUDA
    if (s.start) {
      DEIT_CUDA_CHECK(cudaEventSynchronize(s.stop));
      float elapsed = 0;
      DEIT_CUDA_CHECK(cudaEventElapsedTime(&elapsed, s.start, s.stop));
      ms = elapsed;
    }
#endif
    OpTotal& t = totals[s.op];
    t.ms += ms;
    ++t.calls;
  }
  return totals;
}

}  // namespace deit::bench
