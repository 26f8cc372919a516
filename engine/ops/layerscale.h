#pragma once
#include "engine/tensor.h"

namespace deit {
class Rng;
}

namespace deit::ops {

// x + keep_scale[b] * gamma * branch: the residual update of a block with LayerScale and
// stochastic depth. x, branch: (B, T, C), gamma: (C), keep_scale: (B), not differentiated.
Tensor layerscale_residual(const Tensor& x, const Tensor& branch, const Tensor& gamma,
                           const Tensor& keep_scale);

// Per-sample drop-path scales for a batch of B: each sample is kept with probability 1 - rate
// and then scaled by 1 / (1 - rate), else 0. rate 0 (or eval) gives all ones.
// Returns a (B) tensor of `dtype` on `device`, drawn on the host from `rng`.
Tensor drop_path_keep_scales(int64_t B, double rate, Rng& rng, DType dtype, Device device);

}  // namespace deit::ops
