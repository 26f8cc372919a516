#include "train/run_state.h"

#include <cmath>
#include <cstdio>
#include <stdexcept>

namespace deit::train {

namespace {

nlohmann::json sampler_to_json(const data::SamplerState& s) {
  return {{"seed", s.seed},
          {"dataset_size", s.dataset_size},
          {"epoch", s.epoch},
          {"position", s.position},
          {"repeats", s.repeats},
          {"rank", s.rank},
          {"world_size", s.world_size},
          {"shuffle", s.shuffle}};
}

data::SamplerState sampler_from_json(const nlohmann::json& j) {
  data::SamplerState s;
  s.seed = j.at("seed");
  s.dataset_size = j.at("dataset_size");
  s.epoch = j.at("epoch");
  s.position = j.at("position");
  s.repeats = j.at("repeats");
  s.rank = j.at("rank");
  s.world_size = j.at("world_size");
  s.shuffle = j.at("shuffle");
  return s;
}

}  // namespace

nlohmann::json RunState::to_json() const {
  nlohmann::json j = {{"epoch", epochs_done - 1},
                      {"options", options},
                      {"best_acc1", best_acc1},
                      {"best_epoch", best_epoch},
                      {"sampler", sampler_to_json(sampler)},
                      {"world_size", world_size},
                      {"optimizer_steps", optimizer_steps},
                      {"val_images", val_images},
                      {"train_listing", train_listing}};
  if (!last_log_line.is_null()) j["last_log_line"] = last_log_line;
  if (within_epoch)
    j["within_epoch"] = {{"epoch", within_epoch->epoch},
                         {"batches", within_epoch->batches},
                         {"loss_sum", within_epoch->loss_sum},
                         {"images", within_epoch->images},
                         {"seconds", within_epoch->seconds}};
  return j;
}

RunState run_state_from_json(const nlohmann::json& state) {
  RunState r;
  r.epochs_done = state.at("epoch").get<int64_t>() + 1;
  if (state.contains("within_epoch")) {
    const nlohmann::json& w = state.at("within_epoch");
    r.within_epoch = WithinEpoch{w.at("epoch"), w.at("batches"), w.at("loss_sum"), w.at("images"),
                                 w.at("seconds")};
  }
  r.options = state.value("options", nlohmann::json::object());
  if (!r.options.is_object()) throw std::invalid_argument("its saved options are not an object");
  r.best_acc1 = state.value("best_acc1", 0.0);
  r.best_epoch = state.value("best_epoch", int64_t{-1});
  r.sampler = sampler_from_json(state.at("sampler"));
  r.world_size = state.value("world_size", int64_t{1});
  r.optimizer_steps = state.value("optimizer_steps", int64_t{0});
  r.val_images = state.value("val_images", int64_t{-1});
  r.train_listing = state.value("train_listing", std::string());
  r.last_log_line = state.value("last_log_line", nlohmann::json());
  if (r.epochs_done < 0 || r.world_size < 1 || r.optimizer_steps < 0 ||
      (r.within_epoch && r.within_epoch->epoch != r.epochs_done))
    throw std::invalid_argument("its run state is inconsistent: " + state.dump());
  return r;
}

void warn_if_moving_average_is_young(const std::string& path, const nlohmann::json& state) {
  const nlohmann::json& options = state.value("options", nlohmann::json::object());
  if (!state.contains("optimizer_steps") || !options.contains("model_ema_decay")) return;
  const auto steps = state.at("optimizer_steps").get<int64_t>();
  const double decay = options.at("model_ema_decay").get<double>();
  const double start_share = std::pow(decay, static_cast<double>(steps));
  if (start_share > 0.1)
    std::fprintf(stderr,
                 "warning: the moving average in '%s' has had %lld optimizer steps at decay %g: "
                 "%.0f%% of it is still the weights its run started from (to fall to 10%% it needs "
                 "%.0f steps), so it scores far below the trained weights\n",
                 path.c_str(), static_cast<long long>(steps), decay, 100 * start_share,
                 std::ceil(std::log(0.1) / std::log(decay)));
}

}  // namespace deit::train
