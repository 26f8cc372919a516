// Which work on the emulated device is ordered before which, and the check that work on two
// streams that touches the same device memory is ordered (emulated_device.h). A GPU gives no
// such check: two streams that forget to wait for each other get the right result whenever the
// hardware happens to run them in a good order, which a test on an idle GPU nearly always sees.
//
// Ordering is tracked with vector clocks: each stream counts the work queued on it, and knows,
// for every other stream, how much of that stream's work is ordered before its own next piece
// (through cudaStreamWaitEvent, the legacy stream's implicit waits, and the host: work queued
// after the host waited for something is ordered after it). A piece of work touches device
// memory (its footprint: a copy's ranges, a GEMM's operands, the allocations a kernel's pointer
// arguments point into), and two pieces on different streams that touch overlapping memory, one
// of them writing, must be ordered one way or the other. The check happens when the later one is
// queued, so a failure names the host call that forgot to wait, whatever the streams then do.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace deit_emu {

// For each stream (by address), how many of its pieces of work are ordered before a point.
class VectorClock {
 public:
  uint64_t at(const void* stream) const;
  void tick(const void* stream) { ++counts_[stream]; }
  void merge(const VectorClock& other);

 private:
  std::map<const void*, uint64_t> counts_;
};

// Bytes [begin, end) of the device allocation that starts at `allocation`.
struct Access {
  uintptr_t allocation = 0;
  uintptr_t begin = 0, end = 0;
  bool writes = true;
};

// The return addresses of the host code that queued a piece of work: cheap to take at every
// call, and named (by addr2line, which reads the local symbols too) only for a failure.
struct CallStack {
  std::vector<void*> frames;

  static CallStack here();
  // One line per frame, "    deit::Tensor::copy_from(deit::Tensor const&)", the emulated
  // runtime's own frames left out.
  std::string describe() const;
};

// What a piece of work touches, and what to call it in a failure.
struct Footprint {
  std::string site;  // "kernels/cuda/layernorm.cu:43", "cudaMemcpyAsync"
  std::vector<Access> accesses;
  CallStack queued_by;  // taken when the work is queued (or captured), if not before
};

// Two pieces of work on different streams, neither ordered before the other, touching the same
// bytes, one of them writing.
struct Race {
  const void* earlier_stream;
  std::shared_ptr<const Footprint> earlier_work;
  Access earlier, later;
};

class RaceDetector {
 public:
  // Piece number clock.at(stream) of `stream`, ordered after what `clock` counts, touches
  // `footprint`: returns the first race with an earlier piece of another stream, or records it.
  std::optional<Race> check(const void* stream, const VectorClock& clock,
                            const Footprint& footprint);

  // Forgets the work the host has waited for (`host`): all work queued from now on is ordered
  // after it.
  void forget_ordered_before(const VectorClock& host);

 private:
  struct Record {
    const void* stream;
    uint64_t piece;  // of its stream
    Access access;
    std::shared_ptr<const Footprint> work;
  };
  std::map<uintptr_t, std::vector<Record>> by_allocation_;
};

}  // namespace deit_emu
