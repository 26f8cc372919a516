// The cosine learning-rate schedule (engine/schedule.h) against timm 0.6's CosineLRScheduler
// (tests/data/optim/schedule.json, written by scripts/optimizer_reference.py) and against the
// formula at the landmarks of the DeiT III 800-epoch schedule.
#include <catch2/catch.hpp>

#include <cmath>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "engine/schedule.h"

namespace {

using deit::CosineSchedule;
using deit::CosineScheduleOptions;
using nlohmann::json;

// The schedule evaluates timm's expressions in the same order, in double like Python, so the
// values agree to the last bit or two (an FMA contraction or another libm may move one ulp).
constexpr double kTolerance = 1e-14;

CosineScheduleOptions deit3_small_800() {
  CosineScheduleOptions o;
  o.lr = 4e-3;
  o.min_lr = 1e-5;
  o.warmup_lr = 1e-6;
  o.warmup_epochs = 5;
  o.epochs = 800;
  return o;
}

}  // namespace

TEST_CASE("cosine schedule matches timm CosineLRScheduler and the epochs of main.py",
          "[schedule]") {
  std::ifstream in(std::string(DEIT_SOURCE_DIR) + "/tests/data/optim/schedule.json");
  REQUIRE(in.good());
  const json ref = json::parse(in);
  for (const json& c : ref["cases"]) {
    const std::string case_name = c["name"];
    INFO("case " << case_name);
    const json& o = c["options"];
    CosineScheduleOptions options;
    options.lr = o["lr"];
    options.min_lr = o["min_lr"];
    options.warmup_lr = o["warmup_lr"];
    options.warmup_epochs = o["warmup_epochs"];
    options.epochs = o["epochs"];
    options.cycle_mul = o["cycle_mul"];
    options.cycle_decay = o["cycle_decay"];
    options.cycle_limit = o["cycle_limit"];
    options.k_decay = o["k_decay"];
    options.warmup_prefix = o["warmup_prefix"];
    const CosineSchedule schedule(options);
    for (const json& point : c["lr_at"]) {
      const double t = point[0], expected = point[1];
      INFO("t " << t);
      CHECK(schedule.lr_at(t) == Approx(expected).epsilon(kTolerance).margin(0));
    }
    const json& epoch_lr = c["epoch_lr"];
    for (size_t epoch = 0; epoch < epoch_lr.size(); ++epoch) {
      INFO("epoch " << epoch);
      CHECK(schedule.epoch_lr(epoch) ==
            Approx(epoch_lr[epoch].get<double>()).epsilon(kTolerance).margin(0));
    }
  }
}

TEST_CASE("DeiT III 800-epoch schedule at its landmarks", "[schedule]") {
  const CosineSchedule s(deit3_small_800());
  const double pi = 3.141592653589793;
  const auto cosine = [&](double t) {
    return 1e-5 + 0.5 * (4e-3 - 1e-5) * (1 + std::cos(pi * t / 800));
  };
  // Warm-up: linear from 1e-6, reaching lr only at t = 5, where the cosine has already begun
  // (warmup_prefix false: the cosine counts t from 0).
  CHECK(s.lr_at(0) == 1e-6);
  CHECK(s.lr_at(1) == Approx(1e-6 + (4e-3 - 1e-6) / 5).epsilon(1e-15));
  CHECK(s.lr_at(4) == Approx(1e-6 + 4 * (4e-3 - 1e-6) / 5).epsilon(1e-15));
  CHECK(s.lr_at(5) == Approx(cosine(5)).epsilon(1e-15));
  CHECK(s.lr_at(5) < 4e-3);
  CHECK(s.lr_at(400) == Approx((4e-3 + 1e-5) / 2).epsilon(1e-14));
  CHECK(s.lr_at(799) == Approx(cosine(799)).epsilon(1e-14));
  CHECK(s.lr_at(800) == 1e-5);  // past the single cycle: min_lr
  CHECK(s.lr_at(2.5) == Approx(1e-6 + 2.5 * (4e-3 - 1e-6) / 5).epsilon(1e-15));  // per-step use

  // main.py steps the scheduler after each epoch: epoch e trains with lr_at(e - 1).
  CHECK(s.epoch_lr(0) == 1e-6);
  CHECK(s.epoch_lr(1) == 1e-6);
  CHECK(s.epoch_lr(2) == s.lr_at(1));
  CHECK(s.epoch_lr(6) == s.lr_at(5));
  CHECK(s.epoch_lr(799) == s.lr_at(798));
}

TEST_CASE("cosine schedule without warm-up starts at lr and rejects bad settings",
          "[schedule]") {
  CosineScheduleOptions o = deit3_small_800();
  o.warmup_epochs = 0;
  const CosineSchedule s(o);
  CHECK(s.epoch_lr(0) == 4e-3);
  CHECK(s.lr_at(0) == Approx(4e-3).epsilon(1e-15));
  CHECK_THROWS_WITH(s.epoch_lr(-1), Catch::Contains("negative epoch -1"));
  // Rates of 0 are a schedule too (a frozen run, or a warm-up from 0): only negative ones are not.
  CosineScheduleOptions zero = deit3_small_800();
  zero.lr = zero.min_lr = zero.warmup_lr = 0;
  CHECK(CosineSchedule(zero).epoch_lr(10) == 0);
  // Before the start the formulas give no learning rate of timm's: below warmup_lr in the warm-up
  // (negative further back), lr / cycle_decay in cycle -1 without one.
  CHECK_THROWS_WITH(s.lr_at(-0.5), Catch::Contains("time -0.5"));
  CHECK_THROWS_WITH(CosineSchedule(deit3_small_800()).lr_at(-1), Catch::Contains("time -1"));
  CHECK_THROWS_AS(s.lr_at(std::nan("")), std::invalid_argument);

  const auto rejects = [](void (*edit)(CosineScheduleOptions&), const char* message) {
    CosineScheduleOptions bad = deit3_small_800();
    edit(bad);
    CHECK_THROWS_WITH(CosineSchedule(bad), Catch::Contains(message));
  };
  rejects([](CosineScheduleOptions& b) { b.epochs = 0; }, "epochs must be positive");
  rejects([](CosineScheduleOptions& b) { b.min_lr = -1; }, "must not be negative");
  rejects([](CosineScheduleOptions& b) { b.warmup_epochs = -1; }, "warmup_epochs");
  rejects([](CosineScheduleOptions& b) { b.cycle_mul = 0; }, "cycle_mul");
  rejects([](CosineScheduleOptions& b) { b.cycle_limit = 0; }, "cycle_limit");
}

TEST_CASE("cosine schedule rejects a negative peak or warm-up learning rate", "[schedule]") {
  CosineScheduleOptions bad = deit3_small_800();
  bad.lr = -1e-3;
  CHECK_THROWS_WITH(CosineSchedule(bad), Catch::Contains("learning rates must not be negative"));
  bad = deit3_small_800();
  bad.warmup_lr = -1e-6;
  CHECK_THROWS_WITH(CosineSchedule(bad), Catch::Contains("learning rates must not be negative"));
}

TEST_CASE("cycles that shrink end by epochs / (1 - cycle_mul), and min_lr follows", "[schedule]") {
  // Cycles of 10, 5, 2.5, ... epochs: all of them have ended by t = 20, where timm's log of the
  // cycle index has no argument.
  CosineScheduleOptions o;
  o.lr = 1e-3;
  o.min_lr = 1e-5;
  o.warmup_epochs = 0;
  o.epochs = 10;
  o.cycle_mul = 0.5;
  o.cycle_decay = 0.5;
  const double pi = 3.141592653589793;
  for (int64_t limit : {1, 2, 1000}) {
    INFO("cycle_limit " << limit);
    o.cycle_limit = limit;
    const CosineSchedule s(o);
    if (limit >= 2)  // cycle 1: epochs 10 to 15, peak lr * cycle_decay, 2 epochs in at t = 12
      CHECK(s.lr_at(12) ==
            Approx(1e-5 + 0.5 * (5e-4 - 1e-5) * (1 + std::cos(pi * 2 / 5))).epsilon(1e-14));
    else
      CHECK(s.lr_at(12) == 1e-5);
    if (limit == 1000) {  // cycle 10, of 10 / 2^10 epochs, from min_lr to its peak lr / 2^10
      CHECK(s.lr_at(19.99) >= 1e-3 / 1024);
      CHECK(s.lr_at(19.99) <= 1e-5);
    }
    for (double t : {20.0, 20.5, 21.0, 300.0, HUGE_VAL}) {
      INFO("t " << t);
      CHECK(s.lr_at(t) == 1e-5);
    }
  }
}
