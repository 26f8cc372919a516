#include "bench/op_profiler.h"

#include <chrono>
#include <stdexcept>

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
  clear();
  for (cudaEvent_t e : spare_events_) cudaEventDestroy(e);
#endif
}

void OpProfiler::clear() {
#if DEIT_HAVE_CUDA
  for (Span& s : spans_)
    for (cudaEvent_t e : {s.start, s.stop})
      if (e) spare_events_.push_back(e);
#endif
  spans_.clear();
}

void OpProfiler::begin(const char* op, Device device) {
  if (depth_ > 0) {  // a nested op: charged to the outermost
    ++depth_;
    return;
  }
  spans_.push_back(Span{op});  // owns its events from here on (the destructor frees them)
  if (device.is_cpu()) {
    cpu_start_ms_ = now_ms();
  } else {
#if DEIT_HAVE_CUDA
    Span& span = spans_.back();
    for (cudaEvent_t* e : {&span.start, &span.stop}) {
      if (spare_events_.empty()) {
        DEIT_CUDA_CHECK(cudaEventCreate(e));
      } else {
        *e = spare_events_.back();
        spare_events_.pop_back();
      }
    }
    DEIT_CUDA_CHECK(cudaEventRecord(span.start, compute_stream(device.index)));
#endif
  }
  ++depth_;  // only once begin() succeeded: a throwing begin() gets no end()
}

void OpProfiler::end(const char* /*op*/, Device device) noexcept {
  if (--depth_ > 0 || spans_.empty()) return;
  Span& span = spans_.back();
  if (device.is_cpu()) {
    span.cpu_ms = now_ms() - cpu_start_ms_;
  } else {
#if DEIT_HAVE_CUDA
    const cudaError_t e = cudaEventRecord(span.stop, compute_stream(device.index));
    if (e != cudaSuccess && end_error_.empty())
      end_error_ = std::string("op profiler: cudaEventRecord after ") + span.op + ": " +
                   cudaGetErrorString(e);
#endif
  }
}

std::map<std::string, OpTotal> OpProfiler::totals() {
  if (!end_error_.empty()) throw std::runtime_error(end_error_);
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
