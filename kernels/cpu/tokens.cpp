#include "kernels/tokens.h"

#include <algorithm>

#include "kernels/cpu/reduce.h"

namespace deit::kernels {
namespace {

// Calls visit(pixel, patch) once for every pixel that lies in a whole patch, with `pixel` its
// offset in image: (B, Cin, H, W) and `patch` its offset in patches: (B, gh*gw, Cin*P*P). Patches
// do not overlap (stride = size), so unfold and fold are the same pairing copied in opposite
// directions, and every pixel has at most one partner.
template <typename Visit>
void for_each_patch_pixel(int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t P, Visit visit) {
  const int64_t gh = H / P, gw = W / P;
  const int64_t patch_len = Cin * P * P;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t gy = 0; gy < gh; ++gy)
      for (int64_t gx = 0; gx < gw; ++gx) {
        const int64_t patch_base = (b * gh * gw + gy * gw + gx) * patch_len;
        for (int64_t c = 0; c < Cin; ++c)
          for (int64_t ky = 0; ky < P; ++ky)
            for (int64_t kx = 0; kx < P; ++kx) {
              const int64_t pixel = ((b * Cin + c) * H + gy * P + ky) * W + gx * P + kx;
              visit(pixel, patch_base + (c * P + ky) * P + kx);
            }
      }
}

}  // namespace

template <typename T>
void patch_unfold_cpu(const T* image, T* patches, int64_t B, int64_t Cin, int64_t H, int64_t W,
                      int64_t P) {
  for_each_patch_pixel(B, Cin, H, W, P,
                       [=](int64_t pixel, int64_t patch) { patches[patch] = image[pixel]; });
}

template <typename T>
void patch_fold_cpu(const T* dpatches, T* dimage, int64_t B, int64_t Cin, int64_t H, int64_t W,
                    int64_t P) {
  // The right and bottom margins that no patch reads get zero gradient.
  std::fill(dimage, dimage + B * Cin * H * W, T(0));
  for_each_patch_pixel(B, Cin, H, W, P,
                       [=](int64_t pixel, int64_t patch) { dimage[pixel] = dpatches[patch]; });
}

template <typename T>
void pos_embed_cls_forward_cpu(const T* x, const T* pos, const T* cls, T* out, int64_t B, int64_t N,
                               int64_t C) {
  // out: (B, 1 + N, C); row 0 of every sample is the class token, rows 1.. are x + pos.
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = 0; n <= N; ++n) {
      T* o = out + (b * (1 + N) + n) * C;
      for (int64_t c = 0; c < C; ++c)
        o[c] = n == 0 ? cls[c] : x[(b * N + n - 1) * C + c] + pos[(n - 1) * C + c];
    }
}

template <typename T>
void pos_embed_cls_backward_cpu(const T* dout, T* dx, T* dpos, T* dcls, int64_t B, int64_t N,
                                int64_t C) {
  // dout: (B, 1 + N, C). dx is dout's patch rows; dpos and dcls sum them over the batch.
  const auto patch_rows = [=](int64_t b) { return dout + (b * (1 + N) + 1) * C; };  // (N, C)
  if (dx) {
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < B; ++b) std::copy(patch_rows(b), patch_rows(b) + N * C, dx + b * N * C);
  }
  // dpos: (N, C) flattened to N*C columns, summed over the B samples.
  if (dpos) column_sums(B, N * C, dpos, [=](int64_t b, int64_t j) { return patch_rows(b)[j]; });
  if (dcls)
    column_sums(B, C, dcls, [=](int64_t b, int64_t c) { return dout[b * (1 + N) * C + c]; });
}

template <typename T>
void cls_select_forward_cpu(const T* x, T* out, int64_t B, int64_t Tn, int64_t C) {
  // x: (B, T, C) -> out: (B, C), token 0 of every sample.
  for (int64_t b = 0; b < B; ++b) std::copy(x + b * Tn * C, x + b * Tn * C + C, out + b * C);
}

template <typename T>
void cls_select_backward_cpu(const T* dout, T* dx, int64_t B, int64_t Tn, int64_t C) {
  // dx: (B, T, C); only token 0 was read, the other tokens get zero.
  std::fill(dx, dx + B * Tn * C, T(0));
  for (int64_t b = 0; b < B; ++b) std::copy(dout + b * C, dout + b * C + C, dx + b * Tn * C);
}

#define DEIT_INSTANTIATE(T)                                                                      \
  template void patch_unfold_cpu<T>(const T*, T*, int64_t, int64_t, int64_t, int64_t, int64_t);  \
  template void patch_fold_cpu<T>(const T*, T*, int64_t, int64_t, int64_t, int64_t, int64_t);    \
  template void pos_embed_cls_forward_cpu<T>(const T*, const T*, const T*, T*, int64_t, int64_t, \
                                             int64_t);                                           \
  template void pos_embed_cls_backward_cpu<T>(const T*, T*, T*, T*, int64_t, int64_t, int64_t);  \
  template void cls_select_forward_cpu<T>(const T*, T*, int64_t, int64_t, int64_t);              \
  template void cls_select_backward_cpu<T>(const T*, T*, int64_t, int64_t, int64_t);
DEIT_INSTANTIATE(float)
DEIT_INSTANTIATE(double)
#undef DEIT_INSTANTIATE

}  // namespace deit::kernels
