#include "model/cost.h"

#include "model/param_table.h"

namespace deit::model {

int64_t parameter_count(const ViTConfig& config) {
  int64_t n = 0;
  for (const auto& spec : vit_param_specs(config)) n += shape_numel(spec.shape);
  return n;
}

int64_t forward_macs(const ViTConfig& c) {
  c.validate();  // its bounds keep every product below in int64
  const int64_t T = c.tokens(), C = c.dim, hidden = c.hidden();
  const int64_t patch_embed = c.num_patches() * (c.in_channels * c.patch * c.patch) * C;
  const int64_t per_block = T * C * 3 * C     // qkv
                            + 2 * T * T * C   // Q K^T and P V over all heads
                            + T * C * C       // proj
                            + 2 * T * C * hidden;  // fc1 + fc2
  return patch_embed + c.depth * per_block + C * c.num_classes;
}

namespace {

// The bytes a block saves per image when Tq of its T tokens go past its attention: T for every
// block but the last, 1 (the class token) for the last (model/vit.cpp). Every token goes through
// norm1 and qkv (in T x C units: norm1's output 1 and qkv 3, with norm1's fp32 input), the Tq
// through the rest: attention output 1 (proj's input), proj output 1, norm2 output 1, fc1 output
// 4, GELU output 4 (not kept with recompute_gelu), fc2 output 1, and norm2's fp32 input.
int64_t block_bytes(const ViTConfig& c, int64_t Tq, int64_t activation_bytes, int64_t fp32_bytes,
                    bool recompute_gelu) {
  const int64_t T = c.tokens(), C = c.dim;
  const int64_t all_tokens = 1 + 3, query_tokens = recompute_gelu ? 8 : 12;
  const int64_t activations = (all_tokens * T + query_tokens * Tq) * C * activation_bytes;
  const int64_t residual_stream = (T + Tq) * C * fp32_bytes;  // norm1's and norm2's inputs
  // Mean and rstd of norm1 over every token and of norm2 over the Tq, the attention's lse of
  // the Tq in every head, and the two drop-path scales.
  const int64_t statistics = (2 * T + (2 + c.heads) * Tq + 2) * fp32_bytes;
  return activations + residual_stream + statistics;
}

}  // namespace

int64_t block_activation_bytes_per_image(const ViTConfig& c, int64_t activation_bytes,
                                         int64_t fp32_bytes, bool recompute_gelu) {
  c.validate();
  return block_bytes(c, c.tokens(), activation_bytes, fp32_bytes, recompute_gelu);
}

int64_t activation_bytes_per_image(const ViTConfig& c, int64_t activation_bytes,
                                   int64_t fp32_bytes, ActivationOptions options) {
  c.validate();
  const int64_t T = c.tokens(), C = c.dim;
  // Checkpointed: each block keeps its residual-stream input, norm1 of it and its drop-path
  // scales; the first norm1's statistics stay outside the blocks.
  const int64_t blocks =
      options.grad_checkpointing
          ? c.depth * (T * C * (fp32_bytes + activation_bytes) + 2 * fp32_bytes) +
                2 * T * fp32_bytes
          : (c.depth - 1) * block_activation_bytes_per_image(c, activation_bytes, fp32_bytes,
                                                             options.recompute_gelu) +
                block_bytes(c, 1, activation_bytes, fp32_bytes, options.recompute_gelu);
  const int64_t patches = c.num_patches() * c.in_channels * c.patch * c.patch;  // patch GEMM input
  const int64_t final_norm = C * fp32_bytes + 2 * fp32_bytes;  // the class token, its statistics
  const int64_t head = C * activation_bytes;                   // the normed class token
  return patches * activation_bytes + blocks + final_norm + head;
}

}  // namespace deit::model
