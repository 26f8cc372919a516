#include "kernels/attention.h"

#include <cmath>
#include <vector>

#include "kernels/cpu/gemm.h"
#include "kernels/cpu/reduce.h"

namespace deit::kernels {
namespace {

// One (batch, head) slice of the packed buffer qkv: (B, T, 3, H, D). Its Q, K and V are (T, D)
// matrices whose consecutive rows are 3*H*D elements apart, which gemm_cpu reads in place through
// the leading dimension. P is const T* for qkv and T* for dqkv, which has the same layout.
template <typename P>
struct PackedHead {
  P q, k, v;
  int64_t ld;
};

template <typename P>
PackedHead<P> packed_head(P qkv, int64_t b, int64_t h, int64_t Tn, int64_t H, int64_t D) {
  const int64_t C = H * D;
  P q = qkv + b * Tn * 3 * C + h * D;
  return {q, q + C, q + 2 * C, 3 * C};
}

// The scaled scores of one head: s = scale * Q K^T, (T, T).
template <typename T>
void scores(const PackedHead<const T*>& head, T* s, int64_t Tn, int64_t D, double scale) {
  gemm_cpu<T>(false, true, Tn, Tn, D, static_cast<T>(scale), head.q, head.ld, head.k, head.ld, T(0),
              s, Tn);
}

// Turns scores into attention probabilities in place, P = exp(S - lse) with each row's saved
// log-sum-exp. Forward and backward both go through here, so backward rebuilds exactly the
// probabilities forward used without the (T, T) matrix ever being stored.
template <typename T>
void probabilities_from_lse(T* s, const T* lse, int64_t Tn) {
  for (int64_t i = 0; i < Tn; ++i)
    for (int64_t j = 0; j < Tn; ++j)
      s[i * Tn + j] = static_cast<T>(std::exp(s[i * Tn + j] - static_cast<double>(lse[i])));
}

}  // namespace

// Both directions share the (batch, head) pairs out among OpenMP threads, each with its own (T, T)
// scratch. A pair's GEMMs are small ((T, T) by (T, D)), and OpenBLAS's OpenMP build (the one
// cmake/DeitDependencies.cmake picks) runs a call made inside a parallel region on the calling
// thread alone, so each thread runs its pairs whole, the softmax's exp included. On the 2-core
// development machine that took attention forward + backward from 963 to 418 ms per deit3_tiny
// step at 224 px (batch 16), against GEMMs threaded pair by pair with the softmax on one thread;
// each element is computed as before, so the results are the same bits.

template <typename T>
void attention_forward_cpu(const T* qkv, T* out, T* lse, int64_t B, int64_t Tn, int64_t H,
                           int64_t D, double scale) {
  const int64_t C = H * D;
#pragma omp parallel
  {
    std::vector<T> p(static_cast<size_t>(Tn * Tn));  // (T, T): scores, then probabilities
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h) {
        const auto head = packed_head(qkv, b, h, Tn, H, D);
        T* head_lse = lse + (b * H + h) * Tn;  // (T)
        scores(head, p.data(), Tn, D, scale);
        for (int64_t i = 0; i < Tn; ++i)
          head_lse[i] = static_cast<T>(logsumexp(p.data() + i * Tn, Tn));
        probabilities_from_lse(p.data(), head_lse, Tn);
        // out rows of head h: (T, D) with row stride C, = P (T, T) . V (T, D)
        gemm_cpu<T>(false, false, Tn, D, Tn, T(1), p.data(), Tn, head.v, head.ld, T(0),
                    out + b * Tn * C + h * D, C);
      }
  }
}

template <typename T>
void attention_backward_cpu(const T* qkv, const T* out, const T* lse, const T* dout, T* dqkv,
                            T* dbias, int64_t B, int64_t Tn, int64_t H, int64_t D, double scale) {
  const int64_t C = H * D;
#pragma omp parallel
  {
    std::vector<T> p(static_cast<size_t>(Tn * Tn)), ds(static_cast<size_t>(Tn * Tn));  // (T, T)
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h) {
        const auto head = packed_head(qkv, b, h, Tn, H, D);
        const auto dhead = packed_head(dqkv, b, h, Tn, H, D);
        const T* o = out + b * Tn * C + h * D;  // (T, D), row stride C
        const T* dout_h = dout + b * Tn * C + h * D;
        scores(head, p.data(), Tn, D, scale);
        probabilities_from_lse(p.data(), lse + (b * H + h) * Tn, Tn);
        // dV = P^T dO: (T, D)
        gemm_cpu<T>(true, false, Tn, D, Tn, T(1), p.data(), Tn, dout_h, C, T(0), dhead.v, dhead.ld);
        // dP = dO V^T: (T, T), kept in ds
        gemm_cpu<T>(false, true, Tn, Tn, D, T(1), dout_h, C, head.v, head.ld, T(0), ds.data(), Tn);
        // Softmax backward: dS_ij = P_ij (dP_ij - sum_k P_ik dP_ik), and the row sum equals
        // sum_d dO_id O_id because O = P V: a (T) vector instead of another (T, T) pass.
        for (int64_t i = 0; i < Tn; ++i) {
          double delta = 0;
          for (int64_t d = 0; d < D; ++d)
            delta += static_cast<double>(dout_h[i * C + d]) * o[i * C + d];
          for (int64_t j = 0; j < Tn; ++j)
            ds[i * Tn + j] = static_cast<T>(p[i * Tn + j] * (ds[i * Tn + j] - delta));
        }
        // S = scale Q K^T, so dQ = scale dS K and dK = scale dS^T Q: (T, D) each.
        gemm_cpu<T>(false, false, Tn, D, Tn, static_cast<T>(scale), ds.data(), Tn, head.k, head.ld,
                    T(0), dhead.q, dhead.ld);
        gemm_cpu<T>(true, false, Tn, D, Tn, static_cast<T>(scale), ds.data(), Tn, head.q, head.ld,
                    T(0), dhead.k, dhead.ld);
      }
  }
  // dbias (3 C) = the column sums of dqkv viewed as (B T, 3 C): the qkv linear layer's bias
  // gradient, as linear_backward_cpu takes it.
  if (dbias) linear_bias_grad(dqkv, dbias, B * Tn, 3 * C);
}

// The class token's row of the two functions above, in plain loops: per (batch, head), one score
// row s_j = scale q . k_j over the T keys, its log-sum-exp, and the probability-weighted sums. The
// scores are recomputed in backward from the saved lse, as above.

template <typename T>
void class_attention_forward_cpu(const T* qkv, T* out, T* lse, int64_t B, int64_t Tn, int64_t H,
                                 int64_t D, double scale) {
  const int64_t C = H * D;
#pragma omp parallel
  {
    std::vector<double> s(static_cast<size_t>(Tn));  // the class token's scores, then exp(s - lse)
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h) {
        const auto head = packed_head(qkv, b, h, Tn, H, D);  // head.q: the class token's query
        for (int64_t j = 0; j < Tn; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < D; ++d)
            dot += static_cast<double>(head.q[d]) * head.k[j * head.ld + d];
          s[j] = scale * dot;
        }
        const double row_lse = logsumexp(s.data(), Tn);
        lse[b * H + h] = static_cast<T>(row_lse);
        for (int64_t j = 0; j < Tn; ++j) s[j] = std::exp(s[j] - row_lse);
        T* o = out + b * C + h * D;  // (D)
        for (int64_t d = 0; d < D; ++d) {
          double sum = 0;
          for (int64_t j = 0; j < Tn; ++j) sum += s[j] * head.v[j * head.ld + d];
          o[d] = static_cast<T>(sum);
        }
      }
  }
}

template <typename T>
void class_attention_backward_cpu(const T* qkv, const T* out, const T* lse, const T* dout, T* dqkv,
                                  T* dbias, int64_t B, int64_t Tn, int64_t H, int64_t D,
                                  double scale) {
  const int64_t C = H * D;
#pragma omp parallel
  {
    std::vector<double> p(static_cast<size_t>(Tn)), ds(static_cast<size_t>(Tn));
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h) {
        const auto head = packed_head(qkv, b, h, Tn, H, D);
        const auto dhead = packed_head(dqkv, b, h, Tn, H, D);
        const T* o = out + b * C + h * D;        // (D)
        const T* dout_h = dout + b * C + h * D;  // (D)
        // delta = dO . O, the row sum of P * dP as in attention_backward_cpu.
        double delta = 0;
        for (int64_t d = 0; d < D; ++d) delta += static_cast<double>(dout_h[d]) * o[d];
        for (int64_t j = 0; j < Tn; ++j) {
          double dot = 0, dp = 0;
          for (int64_t d = 0; d < D; ++d) {
            dot += static_cast<double>(head.q[d]) * head.k[j * head.ld + d];
            dp += static_cast<double>(dout_h[d]) * head.v[j * head.ld + d];
          }
          p[j] = std::exp(scale * dot - static_cast<double>(lse[b * H + h]));
          ds[j] = p[j] * (dp - delta);
        }
        // dV_j = p_j dO and dK_j = scale dS_j q for every token j; dq = scale sum_j dS_j k_j for
        // the class token, and 0 for the others (their queries were never asked for).
        for (int64_t j = 0; j < Tn; ++j)
          for (int64_t d = 0; d < D; ++d) {
            dhead.v[j * dhead.ld + d] = static_cast<T>(p[j] * dout_h[d]);
            dhead.k[j * dhead.ld + d] = static_cast<T>(scale * ds[j] * head.q[d]);
            dhead.q[j * dhead.ld + d] = T(0);
          }
        for (int64_t d = 0; d < D; ++d) {
          double sum = 0;
          for (int64_t j = 0; j < Tn; ++j) sum += ds[j] * head.k[j * head.ld + d];
          dhead.q[d] = static_cast<T>(scale * sum);
        }
      }
  }
  if (dbias) linear_bias_grad(dqkv, dbias, B * Tn, 3 * C);  // as in attention_backward_cpu
}

#define DEIT_INSTANTIATE(T)                                                                        \
  template void attention_forward_cpu<T>(const T*, T*, T*, int64_t, int64_t, int64_t, int64_t,     \
                                         double);                                                  \
  template void attention_backward_cpu<T>(const T*, const T*, const T*, const T*, T*, T*, int64_t, \
                                          int64_t, int64_t, int64_t, double);                      \
  template void class_attention_forward_cpu<T>(const T*, T*, T*, int64_t, int64_t, int64_t,        \
                                               int64_t, double);                                   \
  template void class_attention_backward_cpu<T>(const T*, const T*, const T*, const T*, T*, T*,    \
                                                int64_t, int64_t, int64_t, int64_t, double);
DEIT_INSTANTIATE(float)
DEIT_INSTANTIATE(double)
#undef DEIT_INSTANTIATE

}  // namespace deit::kernels
