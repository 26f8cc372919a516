// The run state a checkpoint carries (train/run_state.h), read by every command that takes a
// checkpoint: deit eval and export --ema (warn_if_moving_average_is_young), deit train --resume
// (resume_options, run_state_from_json, restore_last_log_line) and deit info. The input is the
// state's JSON, as model/checkpoint.cpp hands it on (an object). deit's own checkpoints carry a
// checksum of it, but a hand-edited one need not: any JSON must give a state or an error the
// caller can word with the file's name, never a number converted past its type's range (undefined
// behaviour) nor an exception that escapes unworded (a JSON library's type error).
#include <cstddef>
#include <cstdint>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "model/config.h"
#include "tests/fuzz/memory_file.h"
#include "train/recipe.h"
#include "train/run_log.h"
#include "train/run_state.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const nlohmann::json state = nlohmann::json::parse(data, data + size, nullptr, false);
  if (!state.is_object()) return 0;
  // Its callers add nothing: what it throws is the command's error as it stands.
  try {
    deit::train::warn_if_moving_average_is_young("checkpoint", state);
  } catch (const std::runtime_error&) {
  }
  static const deit::model::ViTConfig model = deit::model::preset("deit3_small");
  // deit train --resume names the file in front of a std::runtime_error only.
  try {
    (void)deit::train::resume_options(model, state.value("options", nlohmann::json::object()));
  } catch (const std::runtime_error&) {
  }
  deit::train::RunState saved;
  try {
    saved = deit::train::run_state_from_json(state);
  } catch (const std::exception&) {  // both callers name the file in front of any exception
    return 0;
  }
  const uint8_t no_log[1] = {};
  deit::train::restore_last_log_line(deit::fuzz::as_file(no_log, 0), saved);
  return 0;
}
