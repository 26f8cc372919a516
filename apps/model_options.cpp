#include "apps/model_options.h"

namespace deit::apps {

void ModelOptions::add_to(CLI::App& cmd, int64_t default_input_size) {
  default_input_size_ = default_input_size;
  std::string names;
  for (const auto& n : model::preset_names()) names += (names.empty() ? "" : ", ") + n;
  cmd.add_option("--model", model, "Model preset: " + names)->required();
  cmd.add_option("--patch", patch, "Override the patch size");
  cmd.add_option("--dim", dim, "Override the embedding dimension");
  cmd.add_option("--depth", depth, "Override the number of blocks");
  cmd.add_option("--heads", heads, "Override the number of attention heads");
  cmd.add_option("--num-classes", num_classes, "Number of classes (default 1000)");
  cmd.add_option("--input-size", input_size,
                 "Image side in pixels (default " + std::to_string(default_input_size) + ")");
}

model::ViTConfig ModelOptions::resolve() const {
  model::ViTConfig c = model::preset(model);
  c.input_size = default_input_size_;
  if (patch) c.patch = *patch;
  if (dim) c.dim = *dim;
  if (depth) c.depth = *depth;
  if (heads) c.heads = *heads;
  if (num_classes) c.num_classes = *num_classes;
  if (input_size) c.input_size = *input_size;
  if (patch || dim || depth || heads) c.name += " (custom)";
  c.validate();
  return c;
}

}  // namespace deit::apps
