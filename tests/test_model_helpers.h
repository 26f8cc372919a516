// Shared by the command-line tests that write weights for deit to read: the model their tiny
// training runs make.
#pragma once
#include <cstdint>

#include "engine/rng.h"
#include "model/config.h"
#include "model/vit.h"

namespace deit::test {

// deit3_tiny as `deit train --model deit3_tiny --patch 4 --dim 16 --depth 2 --heads 2
// --input-size INPUT_SIZE` makes it for `classes` classes, initialised from `seed`.
inline model::VisionTransformer tiny_cli_model(int64_t classes, int64_t input_size, uint64_t seed) {
  model::ViTConfig c = model::preset("deit3_tiny");
  c.name += " (custom)";
  c.patch = 4;
  c.dim = 16;
  c.depth = 2;
  c.heads = 2;
  c.num_classes = classes;
  c.input_size = input_size;
  model::VisionTransformer vit(c);
  Rng rng(seed);
  vit.initialize(rng);
  return vit;
}

// The model's parameters under their names, as a weights file holds them.
inline NamedTensors parameters_of(const model::VisionTransformer& vit) {
  NamedTensors out;
  for (const Parameter& p : vit.parameters().all()) out.emplace_back(p.name, p.value);
  return out;
}

}  // namespace deit::test
