// Shared by the `deit bench step` cases that run through NCCL (test_bench_cuda.cpp on one rank,
// test_nccl_ranks_cuda.cpp on two).
#pragma once
#include <catch2/catch.hpp>

#include "bench/step_bench.h"

namespace deit::test {

// The report's communication part, as an eager NCCL step measures it: the buckets' own time on
// the communication stream, and the part of it that backward did not hide.
inline void check_bucket_timing(const bench::StepReport& r) {
  CHECK(r.comm_backend == "nccl");
  CHECK(r.comm_measured_by == "bucket events");
  REQUIRE(r.comm_total_ms.has_value());
  CHECK(*r.comm_total_ms > 0);
  REQUIRE(r.comm_exposed_ms.has_value());
  CHECK(*r.comm_exposed_ms >= 0);
  CHECK(*r.comm_exposed_ms <= r.step_ms);
}

}  // namespace deit::test
