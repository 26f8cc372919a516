// The device code of the token plumbing (kernels/cuda/tokens.cu says what each kernel does and
// its launch shapes): the patch unfold and fold ops, the position embedding + class token forward
// op and backward kernel, and the class-token select ops, the ops launched by the elementwise
// launcher.
//
// Included by tokens.cu, and by the emulated test (tests/emulated/ops_emulated.cpp) after
// tests/emulated/cuda_emulator.h, which runs these kernels lane by lane on machines without a GPU.
// So the code here uses only common_device.cuh, CUDA's bf16 types and conversions, and the
// built-ins the emulator provides; anything more needs a stand-in there. Each includer is the only
// translation unit of its program with these kernels, hence the unnamed namespace.
#pragma once
#include <cstdint>

#include "kernels/cuda/common_device.cuh"

namespace deit::kernels {
namespace {

using gpu::bf16;
using gpu::kVec;

// The sizes of a patch unfold / fold, with the per-element arithmetic in 32 bits. The launchers
// check first that every size fits (patch_geometry in tokens.cu).
struct PatchGeometry {
  int Cin, H, W, P, gh, gw;
  int patches;    // gh * gw
  int patch_len;  // Cin * P * P

  PatchGeometry(int64_t Cin_, int64_t H_, int64_t W_, int64_t P_) {
    Cin = static_cast<int>(Cin_), H = static_cast<int>(H_), W = static_cast<int>(W_);
    P = static_cast<int>(P_);
    gh = H / P, gw = W / P;
    patches = gh * gw;
    patch_len = Cin * P * P;
  }
};

struct PatchUnfoldOp {
  const float* image;
  bf16* patches;
  PatchGeometry g;
  // A vector of 8 patch elements is 8 consecutive pixels of one image row, loaded as two 16-byte
  // words: P % 8 == 0 (every ViT's 16; ViT-H's 14 is not), W % 4 == 0 and image 16-byte aligned.
  bool pixel_vectors;

  static PatchUnfoldOp make(const float* image, bf16* patches, const PatchGeometry& g) {
    return {image, patches, g, g.P % kVec == 0 && g.W % 4 == 0 && gpu::aligned16(image)};
  }
  // Element i of patches is (b, p, k); k = (ci * P + ky) * P + kx within patch p = py * gw + px.
  template <int N>
  __device__ void apply(int64_t i) const {
    const int64_t row = i / g.patch_len;
    int k = static_cast<int>(i - row * g.patch_len);
    int64_t b = row / g.patches;
    int p = static_cast<int>(row - b * g.patches);
    float v[N];
    if constexpr (N == kVec) {
      if (pixel_vectors) {  // one index computation, where the loop below makes 8
        gpu::load<kVec>(image + pixel(b, p, k), v);
        gpu::store<kVec>(patches + i, v);
        return;
      }
    }
#pragma unroll
    for (int j = 0; j < N; ++j) {
      if (k == g.patch_len) {
        k = 0;
        if (++p == g.patches) p = 0, ++b;
      }
      v[j] = image[pixel(b, p, k)];
      ++k;
    }
    gpu::store<N>(patches + i, v);
  }
  // The image element of patch element k of patch p of sample b.
  __device__ int64_t pixel(int64_t b, int p, int k) const {
    const int ci = k / (g.P * g.P), r = k - ci * g.P * g.P;
    const int ky = r / g.P, kx = r - ky * g.P;
    const int py = p / g.gw, px = p - py * g.gw;
    return ((b * g.Cin + ci) * g.H + py * g.P + ky) * g.W + px * g.P + kx;
  }
};

struct PatchFoldOp {
  const bf16* dpatches;
  float* dimage;
  PatchGeometry g;
  // Element i of dimage is (b, ci, y, x); pixels past the last whole patch get 0.
  template <int N>
  __device__ void apply(int64_t i) const {
    const int64_t row = i / g.W;
    int x = static_cast<int>(i - row * g.W);
    const int64_t plane = row / g.H;
    int y = static_cast<int>(row - plane * g.H);
    int64_t b = plane / g.Cin;
    int ci = static_cast<int>(plane - b * g.Cin);
    float v[N];
#pragma unroll
    for (int j = 0; j < N; ++j) {
      if (x == g.W) {
        x = 0;
        if (++y == g.H) {
          y = 0;
          if (++ci == g.Cin) ci = 0, ++b;
        }
      }
      const int py = y / g.P, px = x / g.P;
      v[j] = 0.f;
      if (py < g.gh && px < g.gw) {
        const int ky = y - py * g.P, kx = x - px * g.P;
        const int64_t patch = (b * g.gh + py) * g.gw + px;
        v[j] = __bfloat162float(dpatches[patch * g.patch_len + (ci * g.P + ky) * g.P + kx]);
      }
      ++x;
    }
    gpu::store<N>(dimage + i, v);
  }
};

// x is the patch-embedding GEMM's bf16 output; pos, cls (the fp32 master weights) and out are
// fp32: out starts the residual stream, which bf16 would round block updates out of.
struct PosEmbedClsForwardOp {
  const bf16* x;
  const float* pos;
  const float* cls;
  float* out;
  int64_t N, C;
  // Element i of out is (b, t, c); with V = kVec, C % kVec == 0 keeps the vector in one token.
  template <int V>
  __device__ void apply(int64_t i) const {
    const int64_t row = i / C;
    const int64_t c = i - row * C;
    const int64_t b = row / (N + 1);
    const int64_t t = row - b * (N + 1);
    float v[V];
    if (t == 0) {
      gpu::load<V>(cls + c, v);
    } else {
      float p[V];
      gpu::load<V>(x + (b * N + t - 1) * C + c, v);
      gpu::load<V>(pos + (t - 1) * C + c, p);
#pragma unroll
      for (int j = 0; j < V; ++j) v[j] += p[j];
    }
    gpu::store<V>(out + i, v);
  }
};

// Block of kPosVectors x kPosLanes threads: thread (x, y) takes the V columns j = (u0 + x) V of
// one sample's (1 + N) * C block of dout, for the samples y, y + kPosLanes, ... in order, copying
// them to dx and summing them; the block then adds its kPosLanes sums in a fixed tree (the same
// bits on every run and grid). Column j < C is the class token's, the rest are patch tokens; with
// V = kVec, C % kVec == 0 keeps a vector in one token. dout is the fp32 residual-stream gradient;
// dx goes to the patch-embedding GEMM in bf16. Blocks grid-stride over the column groups.
constexpr int kPosVectors = 16;
constexpr int kPosLanes = 16;

template <int V>
__global__ void __launch_bounds__(kPosVectors* kPosLanes)
    pos_embed_cls_backward_kernel(const float* dout, bf16* dx, float* dpos, float* dcls, int64_t B,
                                  int64_t N, int64_t C) {
  __shared__ float lanes[kPosLanes][kPosVectors * V];
  const int x = threadIdx.x, y = threadIdx.y;
  const int64_t cols = (N + 1) * C;
  const int64_t units = cols / V;
  for (int64_t u0 = static_cast<int64_t>(blockIdx.x) * kPosVectors; u0 < units;
       u0 += static_cast<int64_t>(gridDim.x) * kPosVectors) {
    const int64_t j = (u0 + x) * V;
    const bool is_cls = j < C;
    float acc[V] = {};
    if (u0 + x < units) {
#pragma unroll 4
      for (int64_t b = y; b < B; b += kPosLanes) {
        float v[V];
        gpu::load<V>(dout + b * cols + j, v);
#pragma unroll
        for (int e = 0; e < V; ++e) acc[e] += v[e];
        if (!is_cls && dx) gpu::store<V>(dx + b * N * C + (j - C), v);
      }
    }
    // No barrier before: after the last one of the previous group's tree only lanes[0] is read,
    // by the threads (y == 0) that write it here.
#pragma unroll
    for (int e = 0; e < V; ++e) lanes[y][x * V + e] = acc[e];
    __syncthreads();
#pragma unroll
    for (int half = kPosLanes / 2; half > 0; half /= 2) {
      if (y < half)
#pragma unroll
        for (int e = 0; e < V; ++e) lanes[y][x * V + e] += lanes[y + half][x * V + e];
      __syncthreads();
    }
    if (y == 0 && u0 + x < units) {
      if (is_cls) {
        if (dcls) gpu::store<V>(dcls + j, lanes[0] + x * V);
      } else if (dpos) {
        gpu::store<V>(dpos + (j - C), lanes[0] + x * V);
      }
    }
  }
}

// fp32 both ways: x is the residual stream, out the final LayerNorm's fp32 input.
struct ClsSelectForwardOp {
  const float* x;
  float* out;
  int64_t Tn, C;
  // Element i of out is (b, c) = x[b, 0, c].
  template <int N>
  __device__ void apply(int64_t i) const {
    const int64_t b = i / C;
    float v[N];
    gpu::load<N>(x + b * Tn * C + (i - b * C), v);
    gpu::store<N>(out + i, v);
  }
};

// fp32 both ways: dout is the final LayerNorm's dx, dx the residual-stream gradient.
struct ClsSelectBackwardOp {
  const float* dout;
  float* dx;
  int64_t Tn, C;
  // Element i of dx is (b, t, c): dout[b, c] for t == 0, else 0.
  template <int N>
  __device__ void apply(int64_t i) const {
    const int64_t row = i / C;
    const int64_t b = row / Tn;
    float v[N];
    if (row - b * Tn == 0) {
      gpu::load<N>(dout + b * C + (i - row * C), v);
    } else {
#pragma unroll
      for (int j = 0; j < N; ++j) v[j] = 0.f;
    }
    gpu::store<N>(dx + i, v);
  }
};

}  // namespace
}  // namespace deit::kernels
