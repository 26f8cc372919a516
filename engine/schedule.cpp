#include "engine/schedule.h"

#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>

namespace deit {

CosineSchedule::CosineSchedule(const CosineScheduleOptions& options) : options_(options) {
  const auto require = [](bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument("cosine schedule: " + what);
  };
  require(options.epochs > 0, "epochs must be positive, got " + std::to_string(options.epochs));
  require(options.lr >= 0 && options.min_lr >= 0 && options.warmup_lr >= 0,
          "learning rates must not be negative");
  require(options.warmup_epochs >= 0, "warmup_epochs must not be negative");
  require(options.cycle_mul > 0, "cycle_mul must be positive");
  require(options.cycle_limit >= 1, "cycle_limit must be at least 1");
}

double CosineSchedule::lr_at(double t) const {
  // Written in the order of timm's expressions, so the doubles match Python's.
  const CosineScheduleOptions& o = options_;
  if (!(t >= 0)) {  // NaN too
    char text[32];
    std::snprintf(text, sizeof text, "%g", t);
    throw std::invalid_argument(std::string("cosine schedule: time ") + text +
                                " is before the start (t >= 0 epochs)");
  }
  if (t < o.warmup_epochs) return o.warmup_lr + t * ((o.lr - o.warmup_lr) / o.warmup_epochs);
  if (o.warmup_prefix) t -= o.warmup_epochs;

  // Which cycle t falls in (i), that cycle's length (t_i) and the time into it (t_curr).
  double i, t_i, t_curr;
  if (o.cycle_mul != 1) {
    // Cycle lengths form a geometric series: cycle i starts at epochs * (mul^i - 1) / (mul - 1).
    // Below 1 it converges: from epochs / (1 - mul) on, every cycle has ended and the log has no
    // argument (NaN here, a math domain error in timm).
    const double cycle_log_argument = 1 - t / o.epochs * (1 - o.cycle_mul);
    if (!(cycle_log_argument > 0)) return o.min_lr;
    i = std::floor(std::log(cycle_log_argument) / std::log(o.cycle_mul));
    t_i = std::pow(o.cycle_mul, i) * o.epochs;
    t_curr = t - (1 - std::pow(o.cycle_mul, i)) / (1 - o.cycle_mul) * o.epochs;
  } else {
    i = std::floor(t / o.epochs);
    t_i = o.epochs;
    t_curr = t - o.epochs * i;
  }
  if (i >= static_cast<double>(o.cycle_limit)) return o.min_lr;
  const double lr_max = o.lr * std::pow(o.cycle_decay, i);
  const double pi = 3.141592653589793;
  return o.min_lr + 0.5 * (lr_max - o.min_lr) *
                        (1 + std::cos(pi * std::pow(t_curr, o.k_decay) / std::pow(t_i, o.k_decay)));
}

double CosineSchedule::epoch_lr(int64_t epoch) const {
  if (epoch < 0)
    throw std::invalid_argument("cosine schedule: negative epoch " + std::to_string(epoch));
  // Before the first scheduler step the optimizer runs at the value the scheduler's constructor
  // set: warmup_lr when there is a warm-up, else the base lr.
  if (epoch == 0) return options_.warmup_epochs > 0 ? options_.warmup_lr : options_.lr;
  return lr_at(static_cast<double>(epoch - 1));
}

}  // namespace deit
