// The model-selection flags shared by every subcommand that builds a ViT:
// --model NAME plus the overrides --patch --dim --depth --heads --num-classes --input-size.
#pragma once
#include <memory>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>

#include "model/config.h"

namespace deit::apps {

struct ModelOptions {
  std::string model;
  std::optional<int64_t> patch, dim, depth, heads, num_classes, input_size;

  void add_to(CLI::App& cmd, int64_t default_input_size);
  // The preset with the overrides applied, validated (throws std::invalid_argument).
  model::ViTConfig resolve() const;

 private:
  int64_t default_input_size_ = 224;
};

}  // namespace deit::apps
