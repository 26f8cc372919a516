// Shared by the `deit bench step` cases that run collectives: through NCCL (test_bench_cuda.cpp
// on one rank, test_nccl_ranks_cuda.cpp on two) and through MPI (test_bench_mpi.cpp).
#pragma once
#include <catch2/catch.hpp>
#include <string>

#include "bench/step_bench.h"

namespace deit::test {

// The report's communication part: the gradient reduction's time and the part of it that backward
// did not hide, as NCCL measures them (the buckets' events) or MPI (the step time difference); and
// with `zero` (the optimizer state sharded) a reduce-scatter, then the all-gather's time.
inline void check_comm_report(const bench::StepReport& r, const std::string& backend, bool zero) {
  CHECK(r.comm_backend == backend);
  CHECK(r.comm_measured_by == (backend == "nccl" ? "bucket events" : "step time difference"));
  REQUIRE(r.comm_total_ms.has_value());
  CHECK(*r.comm_total_ms > 0);
  REQUIRE(r.comm_exposed_ms.has_value());
  CHECK(*r.comm_exposed_ms >= 0);
  CHECK(*r.comm_exposed_ms <= r.step_ms);
  CHECK(r.sharded == zero);
  const auto comm = bench::to_json(r)["comm"];
  CHECK(comm["reduction"] == (zero ? "reduce-scatter" : "all-reduce"));
  REQUIRE(r.all_gather_ms.has_value() == zero);
  if (zero) {
    CHECK(*r.all_gather_ms > 0);
    CHECK(comm["all_gather_ms_per_step"].get<double>() == *r.all_gather_ms);
  } else {
    CHECK(comm["all_gather_ms_per_step"].is_null());
  }
}

}  // namespace deit::test
