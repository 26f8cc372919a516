// What a ViT costs: parameters, multiply-accumulates of one forward pass, and the activation
// memory one training image holds between forward and backward. Each throws
// std::invalid_argument for a config that ViTConfig::validate refuses (its bounds keep these sums
// inside int64).
#pragma once
#include <cstdint>

#include "model/config.h"

namespace deit::model {

int64_t parameter_count(const ViTConfig& config);

// Forward multiply-accumulates for one image, counting every GEMM (patch embedding, qkv, proj,
// fc1, fc2, head) and the two attention matmuls (QK^T and PV); elementwise work is not counted.
// This is the convention of the GMACs column in RECIPE.md (fvcore-style counting), and the work
// timm does. deit does less: its last block computes the class token alone past the qkv layer
// (model/vit.cpp), about 6% fewer MACs for 12 blocks. MFU (deit bench step) counts these anyway,
// the same count on both sides of a comparison.
int64_t forward_macs(const ViTConfig& config);

// Bytes the engine saves for backward per training image: exactly the tensors its ops put on the
// tape (engine/ops/*.cpp) for this model's forward, with activations of `activation_bytes` each
// (2 for bf16, 4 for the fp32 CPU path), and `fp32_bytes` (4) for what stays fp32 on the GPU too:
// the residual stream (a bf16 stream would round away LayerScale's 1e-4-sized updates) and the
// LayerNorm / attention statistics. Per block, in units of T*C: activations norm1 output 1, qkv 3,
// attention output 1 (shared with proj's input), proj output 1, norm2 output 1, fc1 output 4
// (GELU's input), GELU output 4 (fc2's input), fc2 output 1 = 16; the residual stream as norm1
// and norm2 read it, 2; plus per token 2 LayerNorm statistics per norm and one log-sum-exp per
// head, and the two drop-path scales. The last block keeps these for the class token alone past
// its qkv layer: norm1's output and input, its statistics and qkv for every token, the rest for
// one. Around the blocks: the unfolded patches (the patch GEMM's input), and the class token
// before (residual stream) and after the final norm (model/vit.h).
// Weights are not counted; the loss is not part of the model. A branch that drop-path runs on
// its kept samples alone (model/vit.h) keeps its activations for those alone: this counts every
// branch over the whole batch, the most a step can keep.
// With recompute_gelu (VisionTransformer::set_recompute_gelu) the GELU output is not kept: 12.
// With grad_checkpointing (set_grad_checkpointing) a block keeps only its two inputs, the residual
// stream and its first LayerNorm's output (plus its drop-path scales), and the first block's
// norm1 keeps its statistics outside the blocks.
struct ActivationOptions {
  bool recompute_gelu = false;
  bool grad_checkpointing = false;
};
int64_t activation_bytes_per_image(const ViTConfig& config, int64_t activation_bytes,
                                   int64_t fp32_bytes, ActivationOptions options = {});

// The bytes per image one block but the last saves without checkpointing. With checkpointing, it
// is what such a block's backward holds on top of the saved bytes while it recomputes the block's
// forward (the last block's holds less).
int64_t block_activation_bytes_per_image(const ViTConfig& config, int64_t activation_bytes,
                                         int64_t fp32_bytes, bool recompute_gelu);

}  // namespace deit::model
