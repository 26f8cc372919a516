// The learning-rate schedule of the DeiT III reference trainer: timm's CosineLRScheduler (0.6) as
// create_scheduler builds it from main.py's arguments (--sched cosine --lr --min-lr --warmup-lr
// --warmup-epochs --epochs), and the per-epoch stepping of main.py's training loop.
//
// timm's value at time t (epochs, possibly fractional):
//   t < warmup_epochs:  warmup_lr + t * (lr - warmup_lr) / warmup_epochs     (linear)
//   otherwise, in cycle i (of length t_i, t_curr into it; one cycle of length `epochs` by default)
//   with peak lr_i = lr * cycle_decay^i:
//     i < cycle_limit:  min_lr + 0.5 * (lr_i - min_lr) * (1 + cos(pi * t_curr^k / t_i^k))
//     after the last:   min_lr
// Cycles that shrink (cycle_mul < 1) have all ended by t = epochs / (1 - cycle_mul), where timm's
// log of the cycle index has no argument (a math domain error): min_lr from there on too.
// With warmup_prefix false (create_scheduler's choice) the cosine's t counts from 0, not from the
// end of the warm-up: the warm-up eats the first warmup_epochs of the cosine, and the cosine
// reaches min_lr at t = epochs, not epochs + warmup_epochs.
//
// main.py trains an epoch and only then calls lr_scheduler.step(epoch), so epoch e trains with the
// value at e - 1 (epoch 0 with the initial one, warmup_lr): epochs 0 and 1 both run at warmup_lr
// and the peak lr is never used exactly. epoch_lr() gives those values; a trainer that reproduces
// the reference calls set_lr(epoch_lr(epoch)) before each epoch.
#pragma once
#include <cstdint>

namespace deit {

// Defaults are main.py's (--min-lr 1e-5, --warmup-lr 1e-6, --warmup-epochs 5, --epochs 300) and
// create_scheduler's (cycle settings: one cycle, so cycle_mul, cycle_decay and k_decay do not
// matter unless cycle_limit > 1 or k_decay != 1).
struct CosineScheduleOptions {
  double lr = 5e-4;  // peak
  double min_lr = 1e-5;
  double warmup_lr = 1e-6;
  double warmup_epochs = 5;
  double epochs = 300;  // t_initial: the length of the first cycle
  double cycle_mul = 1;  // each cycle this many times longer than the previous
  double cycle_decay = 0.1;  // each cycle's peak this many times the previous
  int64_t cycle_limit = 1;  // cycles before the rate stays at min_lr
  double k_decay = 1;  // k-decay exponent on the cosine's time
  bool warmup_prefix = false;  // true: the cosine's t starts at the end of the warm-up
};

class CosineSchedule {
 public:
  // Throws std::invalid_argument on a setting timm rejects or cannot evaluate (epochs <= 0,
  // negative rates or warm-up, cycle_mul <= 0, cycle_limit < 1).
  explicit CosineSchedule(const CosineScheduleOptions& options);

  // timm's value at t (CosineLRScheduler._get_lr(t)); fractional t for per-step use. Throws
  // std::invalid_argument for t < 0 (or NaN), where the formulas give no rate of the schedule's.
  double lr_at(double t) const;
  // The learning rate main.py trains epoch `epoch` (0-based) with: the initial value (warmup_lr,
  // or lr without warm-up) for epoch 0, lr_at(epoch - 1) after.
  double epoch_lr(int64_t epoch) const;

  const CosineScheduleOptions& options() const { return options_; }

 private:
  CosineScheduleOptions options_;
};

}  // namespace deit
