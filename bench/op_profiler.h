// Where a training step's time goes, by engine op: an OpObserver (engine/op_observer.h) that times
// every op the step issues, forward and backward ("linear", "linear backward", "attention", ...).
// On CUDA it records an event pair on the op's stream around each op and reads them after the
// step, so each op is charged the device time between its first kernel's start and its last's end
// (including any idle time of the device while the host was still issuing it); on the CPU, where
// ops run as they are called, a steady clock. Nested ops (an op that dispatches another) are
// charged to the outermost.
//
// Installed only for the steps being profiled: the steps that measure speed run without it.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "engine/device.h"
#include "engine/op_observer.h"

#if DEIT_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace deit::bench {

struct OpTotal {
  double ms = 0;
  int64_t calls = 0;
};

class OpProfiler : public OpObserver {
 public:
  OpProfiler() = default;
  ~OpProfiler() override;
  OpProfiler(const OpProfiler&) = delete;
  OpProfiler& operator=(const OpProfiler&) = delete;

  void begin(const char* op, Device device) override;
  void end(const char* op, Device device) noexcept override;

  // Waits for the device work recorded so far and returns the time and calls per op name. Throws
  // what end() could not (a failed event record) and what the wait reports.
  std::map<std::string, OpTotal> totals();

  // Forgets the ops recorded so far but keeps their events for the ops to come, so that a
  // profiled step after an unmeasured one does not create events while it is timed. Call it once
  // totals() has waited for them.
  void clear();

 private:
  struct Span {
    std::string op;
    double cpu_ms = 0;  // CPU ops: measured at end()
#if DEIT_HAVE_CUDA
    cudaEvent_t start = nullptr, stop = nullptr;
#endif
  };
  std::vector<Span> spans_;
#if DEIT_HAVE_CUDA
  std::vector<cudaEvent_t> spare_events_;  // from cleared spans, reused by begin()
#endif
  int depth_ = 0;
  double cpu_start_ms_ = 0;
  std::string end_error_;  // the first failure in end(), thrown by totals()
};

// Milliseconds on a monotonic clock.
double now_ms();

}  // namespace deit::bench
