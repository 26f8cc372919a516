// --finetune: start from another run's weights at a new resolution or class count, as the
// reference main.py does: the position embedding is resized over its patch grid (bicubic,
// align_corners=False, as torch.nn.functional.interpolate), and the head keeps its fresh
// initialisation when the class count differs. Everything else must match the model (the model a
// checkpoint or deit's export names too, whose head count no tensor's shape shows).
#pragma once
#include <string>
#include <vector>

#include "engine/tensor.h"
#include "model/vit.h"

namespace deit::train {

// Loads a checkpoint or a weights file (timm names, or the reference code's gamma_1/gamma_2).
// Returns a line for each thing it did to fit them, for the run to print: the head made new (with
// both class counts), the position embedding resized (both grids), and a warning where the head is
// kept although the source was trained on classes other than `class_names` (the dataset's, in
// label order; not checked where either list is empty, as for timm's weights, which name none).
std::vector<std::string> load_finetune_weights(model::VisionTransformer& model,
                                               const std::string& path,
                                               const std::vector<std::string>& class_names = {});

// Resizes the pos_embed of `tensors` (timm names) to the patch grid of `config` where its grid
// differs: weights trained at one resolution, used at another. `source` names them in errors.
// Returns whether it resized.
bool fit_pos_embed(NamedTensors& tensors, const model::ViTConfig& config,
                   const std::string& source);

// pos: (1, old_grid^2, C) -> (1, new_grid^2, C), bicubic (a = -0.75) with align_corners=False.
Tensor resize_pos_embed(const Tensor& pos, int64_t old_grid, int64_t new_grid);

}  // namespace deit::train
