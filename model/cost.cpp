#include "model/cost.h"

#include "model/param_table.h"

namespace deit::model {

int64_t parameter_count(const ViTConfig& config) {
  int64_t n = 0;
  for (const auto& spec : vit_param_specs(config)) n += shape_numel(spec.shape);
  return n;
}

int64_t forward_macs(const ViTConfig& c) {
  const int64_t T = c.tokens(), C = c.dim, hidden = c.hidden();
  const int64_t patch_embed = c.num_patches() * (c.in_channels * c.patch * c.patch) * C;
  const int64_t per_block = T * C * 3 * C     // qkv
                            + 2 * T * T * C   // Q K^T and P V over all heads
                            + T * C * C       // proj
                            + 2 * T * C * hidden;  // fc1 + fc2
  return patch_embed + c.depth * per_block + C * c.num_classes;
}

int64_t block_activation_bytes_per_image(const ViTConfig& c, int64_t activation_bytes,
                                         int64_t fp32_bytes, bool recompute_gelu) {
  const int64_t T = c.tokens(), C = c.dim;
  const int64_t block_activations = recompute_gelu ? 12 : 16;  // in T x C units (cost.h)
  const int64_t residual_stream = 2;                            // norm1's and norm2's inputs
  return (block_activations * activation_bytes + residual_stream * fp32_bytes) * T * C +
         (2 * 2 + c.heads) * T * fp32_bytes + 2 * fp32_bytes;  // + the two drop-path scales
}

int64_t activation_bytes_per_image(const ViTConfig& c, int64_t activation_bytes,
                                   int64_t fp32_bytes, ActivationOptions options) {
  const int64_t T = c.tokens(), C = c.dim;
  // Checkpointed: each block keeps its residual-stream input, norm1 of it and its drop-path
  // scales; the first norm1's statistics stay outside the blocks.
  const int64_t blocks =
      options.grad_checkpointing
          ? c.depth * (T * C * (fp32_bytes + activation_bytes) + 2 * fp32_bytes) +
                2 * T * fp32_bytes
          : c.depth * block_activation_bytes_per_image(c, activation_bytes, fp32_bytes,
                                                       options.recompute_gelu);
  const int64_t patches = c.num_patches() * c.in_channels * c.patch * c.patch;  // patch GEMM input
  const int64_t final_norm = C * fp32_bytes + 2 * fp32_bytes;  // the class token, its statistics
  const int64_t head = C * activation_bytes;                   // the normed class token
  return patches * activation_bytes + blocks + final_norm + head;
}

}  // namespace deit::model
