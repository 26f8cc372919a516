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
                                         int64_t stat_bytes, bool recompute_gelu) {
  const int64_t T = c.tokens(), C = c.dim;
  const int64_t block_activations = recompute_gelu ? 14 : 18;  // in T x C units (cost.h)
  return block_activations * T * C * activation_bytes + (2 * 2 + c.heads) * T * stat_bytes +
         2 * stat_bytes;  // the two drop-path scales of this image
}

int64_t activation_bytes_per_image(const ViTConfig& c, int64_t activation_bytes,
                                   int64_t stat_bytes, ActivationOptions options) {
  const int64_t T = c.tokens(), C = c.dim;
  const int64_t blocks =
      options.grad_checkpointing
          ? c.depth * (2 * T * C * activation_bytes + 2 * stat_bytes) + 2 * T * stat_bytes
          : c.depth * block_activation_bytes_per_image(c, activation_bytes, stat_bytes,
                                                       options.recompute_gelu);
  const int64_t patches = c.num_patches() * c.in_channels * c.patch * c.patch;  // patch GEMM input
  const int64_t final_norm = C * activation_bytes + 2 * stat_bytes;  // class token only
  const int64_t head = C * activation_bytes;                         // the normed class token
  return patches * activation_bytes + blocks + final_norm + head;
}

}  // namespace deit::model
