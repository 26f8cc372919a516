// A hook that sees every engine op (forward and backward) start and end, for profiling: `deit bench
// step` installs one to break a training step's time down by op (bench/op_profiler.h). Ops announce
// themselves from detail::dispatch (engine/ops/op_utils.h) with the name they report errors under
// ("layernorm", "layernorm backward", ...). With no observer installed, the cost is one load of a
// thread-local pointer per op.
//
// begin() comes before the op's kernel is issued and end() after, on the thread that issues it:
// on CUDA the kernel is only queued by then, so an observer that wants device time records events
// on the op's stream. end() also runs when the op throws (from a destructor, possibly while an
// exception unwinds), so it must not throw: an observer keeps its own failure for later.
#pragma once
#include "engine/device.h"

namespace deit {

class OpObserver {
 public:
  virtual ~OpObserver() = default;
  virtual void begin(const char* op, Device device) = 0;
  virtual void end(const char* op, Device device) noexcept = 0;
};

// The current thread's observer (nullptr: none).
OpObserver* op_observer();

// Installs `observer` for the current thread for the scope's lifetime, then restores the previous.
class ObserveOps {
 public:
  explicit ObserveOps(OpObserver& observer);
  ~ObserveOps();
  ObserveOps(const ObserveOps&) = delete;
  ObserveOps& operator=(const ObserveOps&) = delete;

 private:
  OpObserver* previous_;
};

// What dispatch holds around one op: tells the observer, if any, when the op begins and ends.
class ObservedOp {
 public:
  ObservedOp(const char* op, Device device) : observer_(op_observer()), op_(op), device_(device) {
    if (observer_) observer_->begin(op_, device_);
  }
  ~ObservedOp() {
    if (observer_) observer_->end(op_, device_);
  }
  ObservedOp(const ObservedOp&) = delete;
  ObservedOp& operator=(const ObservedOp&) = delete;

 private:
  OpObserver* observer_;
  const char* op_;
  Device device_;
};

}  // namespace deit
