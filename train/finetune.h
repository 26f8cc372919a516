// --finetune: start from another run's weights at a new resolution or class count, as the
// reference main.py does: the position embedding is resized over its patch grid (bicubic,
// align_corners=False, as torch.nn.functional.interpolate), and the head keeps its fresh
// initialisation when the class count differs. Everything else must match the model.
#pragma once
#include <string>

#include "engine/tensor.h"
#include "model/vit.h"

namespace deit::train {

// Loads a checkpoint or a weights file (timm names, or the reference code's gamma_1/gamma_2).
void load_finetune_weights(model::VisionTransformer& model, const std::string& path);

// Resizes the pos_embed of `tensors` (timm names) to the patch grid of `config` where its grid
// differs: weights trained at one resolution, used at another. `source` names them in errors.
// Returns whether it resized.
bool fit_pos_embed(NamedTensors& tensors, const model::ViTConfig& config,
                   const std::string& source);

// pos: (1, old_grid^2, C) -> (1, new_grid^2, C), bicubic (a = -0.75) with align_corners=False.
Tensor resize_pos_embed(const Tensor& pos, int64_t old_grid, int64_t new_grid);

}  // namespace deit::train
