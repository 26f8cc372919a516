// The model-selection flags shared by every subcommand that builds a ViT:
// --model NAME plus the overrides --patch --dim --depth --heads --num-classes --input-size.
#pragma once
#include <optional>
#include <string>

#include <CLI/CLI.hpp>

#include "model/config.h"

namespace deit::apps {

struct ModelOptions {
  std::string model;
  std::optional<int64_t> patch, dim, depth, heads, num_classes, input_size;

  // `input_size_default` and `num_classes_default` describe the defaults for --help. With
  // `required_unless` (e.g. "--resume"), --model may be left out, and the command checks that it is
  // given otherwise.
  void add_to(CLI::App& cmd, const std::string& input_size_default,
              const std::string& num_classes_default, const std::string& required_unless = "");
  // `base` (a preset, possibly with a recipe's resolution) with the overrides applied, validated
  // (throws std::invalid_argument).
  model::ViTConfig apply_to(model::ViTConfig base) const;
};

}  // namespace deit::apps
