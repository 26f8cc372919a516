// Where a run stands, as deit train saves it in each checkpoint (the "deit" metadata of
// model/checkpoint.h) and reads it back to resume: what `deit info --checkpoint` shows.
//
//   {"epoch": E,                  the last epoch completed (0-based; -1: none yet)
//    "options": {...},            the run's TrainOptions::to_json()
//    "best_acc1": A, "best_epoch": B,
//    "sampler": {...},            rank 0's data order and position (data/sampler.h)
//    "world_size": W, "optimizer_steps": S,
//    "val_images": V,             the val split's images when it was saved (-1: not said)
//    "train_listing": "...",      which image each index of the train split held
//                                 (ImageSource::listing_fingerprint; "": not said)
//    "last_log_line": {...},      log.txt's line of the last epoch done (absent: none yet, or
//                                 a deit that did not save it): a run stopped between saving an
//                                 epoch and logging it writes the line when it resumes
//    "within_epoch": {...}}       only for a checkpoint of a step inside epoch E + 1 (a stop
//                                 signal, --save-every): see WithinEpoch
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "data/sampler.h"

namespace deit::train {

// How far into an epoch a checkpoint of a step inside it is, with the epoch's sums so far over
// every rank (a resumed run carries them on to the epoch's log line).
struct WithinEpoch {
  int64_t epoch = 0;    // the epoch it is inside (0-based)
  double batches = 0;   // batches counted so far, summed over the ranks
  double loss_sum = 0;  // their losses, summed
  double images = 0;    // their images, summed
  double seconds = 0;   // spent training the epoch so far
};

struct RunState {
  int64_t epochs_done = 0;  // whole epochs trained
  std::optional<WithinEpoch> within_epoch;
  nlohmann::json options = nlohmann::json::object();  // the run's TrainOptions::to_json()
  double best_acc1 = 0;
  int64_t best_epoch = -1;  // -1: no evaluation yet
  data::SamplerState sampler;
  int64_t world_size = 1;
  int64_t optimizer_steps = 0;
  int64_t val_images = -1;  // -1: a checkpoint of a deit that did not save it
  std::string train_listing;  // "": a checkpoint of a deit that did not save it
  nlohmann::json last_log_line;  // null: none

  nlohmann::json to_json() const;
};

// Throws nlohmann::json::exception for a state without "epoch" or "sampler" (not a deit train
// checkpoint's), and std::invalid_argument, naming the key, for a value its field does not hold
// exactly (model/json_exact.h) or a state that contradicts itself; the other keys fall back to
// their defaults, as checkpoints of older deit lack some.
RunState run_state_from_json(const nlohmann::json& state);

// Warns on stderr when the moving average of the weights that the checkpoint at `path` holds
// (--model-ema) is still mostly the weights its run started from: after S optimizer steps at decay
// d, their share is d^S, and the recipe's d = 0.99996 takes some 17,000 steps to halve it, so a
// short run's average scores near chance though its trained weights do not. `state` is the
// checkpoint's run state; nothing is said for one that does not say its steps and decay.
void warn_if_moving_average_is_young(const std::string& path, const nlohmann::json& state);

}  // namespace deit::train
