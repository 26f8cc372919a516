#pragma once
#include "engine/tensor.h"

namespace deit::ops {

// The patch convolution's input side: image (B, Cin, H, W) -> patches (B, (H/P)*(W/P), Cin*P*P),
// each patch ordered (cin, ky, kx) like a flattened conv weight (dim, Cin, P, P). Pixels past the
// last whole patch are not read (as by a stride-P convolution); their gradient is 0.
Tensor patch_unfold(const Tensor& image, int64_t patch);

// Position embedding + class token: x (B, N, C), pos (1, N, C), cls (1, 1, C) -> (B, 1 + N, C)
// with the class token first and pos added to the patch tokens only.
Tensor pos_embed_cls(const Tensor& x, const Tensor& pos, const Tensor& cls);

// The class token: x (B, T, C) -> (B, C).
Tensor cls_select(const Tensor& x);

}  // namespace deit::ops
