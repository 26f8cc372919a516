#include "train/run_state.h"

#include <cmath>
#include <cstdio>
#include <stdexcept>

#include "model/json_exact.h"

namespace deit::train {

using model::read_exactly;

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
  s.seed = read_exactly<uint64_t>(j, "seed");
  s.dataset_size = read_exactly<uint64_t>(j, "dataset_size");
  s.epoch = read_exactly<uint64_t>(j, "epoch");
  s.position = read_exactly<uint64_t>(j, "position");
  s.repeats = read_exactly<uint32_t>(j, "repeats");
  s.rank = read_exactly<uint32_t>(j, "rank");
  s.world_size = read_exactly<uint32_t>(j, "world_size");
  s.shuffle = read_exactly<uint32_t>(j, "shuffle");
  return s;
}

WithinEpoch within_epoch_from_json(const nlohmann::json& w) {
  return {read_exactly<int64_t>(w, "epoch"), read_exactly<double>(w, "batches"),
          read_exactly<double>(w, "loss_sum"), read_exactly<double>(w, "images"),
          read_exactly<double>(w, "seconds")};
}

// state[part] read by `read`, the part named in front of what it refuses: the sampler and the
// state both have an "epoch".
template <typename Read>
auto read_part(const nlohmann::json& state, const std::string& part, Read read) {
  try {
    return read(state.at(part));
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument("its " + part + "'s " + e.what());
  }
}

// A key older checkpoints may lack: its default then.
template <typename T>
T read_exactly_or(const nlohmann::json& j, const std::string& key, T fallback) {
  return j.contains(key) ? read_exactly<T>(j, key) : fallback;
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
  const auto last_epoch = read_exactly<int64_t>(state, "epoch");
  if (last_epoch == INT64_MAX)
    throw std::invalid_argument("its 'epoch' is " + std::to_string(last_epoch) +
                                ": no epoch can follow it");
  r.epochs_done = last_epoch + 1;
  if (state.contains("within_epoch"))
    r.within_epoch = read_part(state, "within_epoch", within_epoch_from_json);
  r.options = state.value("options", nlohmann::json::object());
  if (!r.options.is_object()) throw std::invalid_argument("its saved options are not an object");
  r.best_acc1 = read_exactly_or<double>(state, "best_acc1", 0.0);
  r.best_epoch = read_exactly_or<int64_t>(state, "best_epoch", -1);
  r.sampler = read_part(state, "sampler", sampler_from_json);
  r.world_size = read_exactly_or<int64_t>(state, "world_size", 1);
  r.optimizer_steps = read_exactly_or<int64_t>(state, "optimizer_steps", 0);
  r.val_images = read_exactly_or<int64_t>(state, "val_images", -1);
  r.train_listing = read_exactly_or<std::string>(state, "train_listing", "");
  r.last_log_line = state.value("last_log_line", nlohmann::json());
  if (r.epochs_done < 0 || r.world_size < 1 || r.optimizer_steps < 0 ||
      (r.within_epoch && r.within_epoch->epoch != r.epochs_done))
    throw std::invalid_argument("its run state is inconsistent: " + state.dump());
  return r;
}

void warn_if_moving_average_is_young(const std::string& path, const nlohmann::json& state) {
  const nlohmann::json& options = state.value("options", nlohmann::json::object());
  // A state that does not say them as numbers (edited by hand) leaves nothing to warn of.
  if (!options.is_object() || !state.contains("optimizer_steps") ||
      !model::holds_exactly<int64_t>(state.at("optimizer_steps")) ||
      !options.contains("model_ema_decay") ||
      !model::holds_exactly<double>(options.at("model_ema_decay")))
    return;
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
