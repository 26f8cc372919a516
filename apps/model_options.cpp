#include "apps/model_options.h"

namespace deit::apps {

void ModelOptions::add_to(CLI::App& cmd, const std::string& input_size_default,
                          const std::string& num_classes_default,
                          const std::string& required_unless) {
  std::string names;
  for (const auto& n : model::preset_names()) names += (names.empty() ? "" : ", ") + n;
  CLI::Option* option = cmd.add_option("--model", model, "Model preset: " + names);
  if (required_unless.empty())
    option->required();
  else
    option->description(option->get_description() + " (required unless " + required_unless + ")");
  cmd.add_option("--patch", patch, "Override the patch size");
  cmd.add_option("--dim", dim, "Override the embedding dimension");
  cmd.add_option("--depth", depth, "Override the number of blocks");
  cmd.add_option("--heads", heads, "Override the number of attention heads");
  cmd.add_option("--num-classes", num_classes,
                 "Number of classes (default " + num_classes_default + ")");
  cmd.add_option("--input-size", input_size,
                 "Image side in pixels (default " + input_size_default + ")");
}

model::ViTConfig ModelOptions::apply_to(model::ViTConfig c) const {
  const model::ViTConfig base = c;
  if (patch) c.patch = *patch;
  if (dim) c.dim = *dim;
  if (depth) c.depth = *depth;
  if (heads) c.heads = *heads;
  if (num_classes) c.num_classes = *num_classes;
  if (input_size) c.input_size = *input_size;
  // Other sizes make another model, named after the one it was made from. A description in
  // parentheses no longer holds ("demo (deit3, patch 16, ...)" with --patch 8), and a custom
  // model is named so already.
  if (c.patch != base.patch || c.dim != base.dim || c.depth != base.depth || c.heads != base.heads)
    c.name = c.name.substr(0, c.name.find(" (")) + " (custom)";
  c.validate();
  return c;
}

}  // namespace deit::apps
