// Every parameter of a DeiT III ViT: timm's name, shape, initialisation and whether weight decay
// applies. The model, the checkpoint code, the safetensors export and `deit info` all read this one
// table, so the parameter count they report cannot drift apart.
#pragma once
#include <string>
#include <vector>

#include "engine/tensor.h"
#include "model/config.h"

namespace deit::model {

enum class Init {
  trunc_normal,  // std 0.02, truncated to [-2, 2] (timm's trunc_normal_): pos_embed, cls_token,
                 // every linear weight. The bounds are absolute, not in std units: 100 std, so
                 // nothing is ever cut and the draw is in effect a plain normal, as in timm
  conv_default,  // U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = channels * patch^2: the patch
                 // projection's weight and bias, a Conv2d the reference leaves at PyTorch's
                 // default (kaiming_uniform with a = sqrt(5)); its _init_weights covers nn.Linear
                 // and nn.LayerNorm only
  zeros,         // biases
  ones,          // LayerNorm weights
  layerscale,    // gamma = layerscale_init (1e-4)
};

struct ParamSpec {
  std::string name;
  Shape shape;
  Init init;
  // The reference code decays only weight matrices: no decay on biases, LayerNorm weights,
  // gammas, pos_embed, cls_token. LAMB's trust ratio follows the same split.
  bool weight_decay;
};

// In the order VisionTransformer registers them.
// Throws std::invalid_argument for a config that ViTConfig::validate refuses.
std::vector<ParamSpec> vit_param_specs(const ViTConfig& config);

}  // namespace deit::model
