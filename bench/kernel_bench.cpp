#include "bench/kernel_bench.h"

#if DEIT_HAVE_CUDA
#include <algorithm>
#include <cmath>
#include <exception>
#include <memory>
#include <vector>

#include "engine/rng.h"
#include "kernels/attention.h"
#include "kernels/check.h"
#include "kernels/cuda/cublaslt.h"
#include "kernels/elementwise.h"
#include "kernels/gelu.h"
#include "kernels/layernorm.h"
#include "kernels/layerscale.h"
#include "kernels/linear.h"
#include "kernels/losses.h"

#if DEIT_HAVE_CUDNN
#include "bench/cudnn_attention.h"
#endif

namespace deit::bench {

namespace {

using kernels::bf16_bits;

// The activations of a ViT-B/16 training step at 224 px with the recipe's batch of 256 per GPU:
// 197 tokens per image.
constexpr int64_t kBatch = 256;
constexpr int64_t kTokens = 197;
constexpr int64_t kRows = kBatch * kTokens;
constexpr int64_t kClasses = 1000;
constexpr double kDropPath = 0.1;  // some samples dropped, as in training

std::string sizes(std::initializer_list<std::pair<const char*, int64_t>> named) {
  std::string s;
  for (const auto& [name, value] : named)
    s += (s.empty() ? "" : " ") + std::string(name) + "=" + std::to_string(value);
  return s;
}

cudaStream_t make_nonblocking_stream() {
  cudaStream_t stream = nullptr;
  DEIT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  return stream;
}

class Runner {
 public:
  // The stream first (members are built in declaration order): the flusher zeroes its buffer on it.
  Runner(int device, const KernelBenchOptions& options, KernelReport& report,
         const ProgressFn& progress)
      : stream_(make_nonblocking_stream()),
        flusher_(device, stream_),
        random_(size_t{16} << 20, 20261126),
        options_(options),
        report_(report),
        progress_(progress) {}
  ~Runner() { cudaStreamDestroy(stream_); }
  Runner(const Runner&) = delete;
  Runner& operator=(const Runner&) = delete;

  cudaStream_t stream() const { return stream_; }

  // A bf16 buffer of n random values.
  std::unique_ptr<DeviceMemory> random_bf16(int64_t n) {
    auto m = std::make_unique<DeviceMemory>(static_cast<size_t>(n) * sizeof(bf16_bits));
    random_.fill(m->as<void>(), static_cast<size_t>(n), stream_);
    return m;
  }
  // An fp32 buffer of n random values in [-1, 1] (the residual stream's kernels read fp32): 2n
  // values of the bf16 source, each pair one float whose high half is a source value and whose
  // low half random mantissa bits.
  std::unique_ptr<DeviceMemory> random_f32(int64_t n) {
    auto m = std::make_unique<DeviceMemory>(static_cast<size_t>(n) * sizeof(float));
    random_.fill(m->as<void>(), static_cast<size_t>(2 * n), stream_);
    return m;
  }
  static std::unique_ptr<DeviceMemory> floats(int64_t n) {
    return std::make_unique<DeviceMemory>(static_cast<size_t>(n) * sizeof(float));
  }
  static std::unique_ptr<DeviceMemory> bf16s(int64_t n) {
    return std::make_unique<DeviceMemory>(static_cast<size_t>(n) * sizeof(bf16_bits));
  }
  void upload(DeviceMemory& dst, const std::vector<float>& host) {
    DEIT_CUDA_CHECK(cudaMemcpyAsync(dst.as<void>(), host.data(), host.size() * sizeof(float),
                                    cudaMemcpyHostToDevice, stream_));
    DEIT_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  // Times `work` and records the row; returns a copy of it.
  KernelMeasurement measure(const std::string& kernel, const std::string& impl,
                            const std::string& shape, double bytes, double flops,
                            const std::function<void()>& work, const std::string& note = "") {
    progress_(kernel + " (" + impl + ") " + shape);
    KernelMeasurement m;
    m.kernel = kernel;
    m.impl = impl;
    m.shape = shape;
    m.bytes = bytes;
    m.flops = flops;
    m.note = note;
    m.timing = time_on_stream(stream_, options_.timing, flusher_, work);
    report_.kernels.push_back(m);
    return m;
  }

  void add(const KernelMeasurement& derived) { report_.kernels.push_back(derived); }

  void unavailable(const std::string& kernel, const std::string& impl, const std::string& shape,
                   const std::string& why) {
    progress_(kernel + " (" + impl + ") " + shape + ": unavailable: " + why);
    KernelMeasurement m;
    m.kernel = kernel;
    m.impl = impl;
    m.shape = shape;
    m.available = false;
    m.note = why;
    report_.kernels.push_back(m);
  }

 private:
  cudaStream_t stream_ = nullptr;
  L2Flusher flusher_;
  RandomBf16Source random_;
  const KernelBenchOptions& options_;
  KernelReport& report_;
  const ProgressFn& progress_;
};

void measure_ceilings(Runner& run, KernelReport& report) {
  const size_t copy_bytes = size_t{1} << 30;
  DeviceMemory src(copy_bytes), dst(copy_bytes);
  DEIT_CUDA_CHECK(cudaMemsetAsync(src.as<void>(), 1, copy_bytes, run.stream()));
  const KernelMeasurement copy =
      run.measure("copy", "cuda", "1 GiB device to device", 2.0 * copy_bytes, 0, [&] {
        DEIT_CUDA_CHECK(cudaMemcpyAsync(dst.as<void>(), src.as<void>(), copy_bytes,
                                        cudaMemcpyDeviceToDevice, run.stream()));
      });
  report.copy_gbps = achieved_gbps(copy);

  constexpr int64_t n = 8192;
  auto a = run.random_bf16(n * n), b = run.random_bf16(n * n);
  auto d = Runner::bf16s(n * n);
  kernels::CublasLt lt;
  kernels::GemmSpec spec;
  spec.m = spec.n = spec.k = n;
  spec.lda = spec.ldb = spec.ldd = n;
  const KernelMeasurement gemm =
      run.measure("gemm", "cublaslt", sizes({{"M", n}, {"N", n}, {"K", n}}), 0, 2.0 * n * n * n,
                  [&] { lt.matmul(spec, a->as<void>(), b->as<void>(), d->as<void>(), nullptr,
                                  run.stream()); });
  report.gemm_tflops = achieved_tflops(gemm);
}

// x and dx are fp32 (the residual stream), y and dy bf16, as the model runs it.
void measure_layernorm(Runner& run, int64_t C) {
  const int64_t rows = kRows, n = rows * C;
  auto x = run.random_f32(n), dy = run.random_bf16(n), w = run.random_bf16(C),
       b = run.random_bf16(C);
  auto y = Runner::bf16s(n), dx = Runner::floats(n);
  auto mean = Runner::floats(rows), rstd = Runner::floats(rows), dw = Runner::floats(C),
       db = Runner::floats(C);
  auto ws = Runner::floats(kernels::layernorm_backward_cuda_workspace_floats(rows, C));
  const std::string shape = sizes({{"rows", rows}, {"C", C}});
  const double bf16_act = 2.0 * n, f32_act = 4.0 * n, stats = 8.0 * rows;
  const KernelMeasurement fwd = run.measure(
      "layernorm forward", "deit", shape, f32_act + bf16_act + 4.0 * C + stats, 0, [&] {
        kernels::layernorm_forward_cuda(x->as<float>(), w->as<bf16_bits>(),
                                        b->as<bf16_bits>(), y->as<bf16_bits>(), mean->as<float>(),
                                        rstd->as<float>(), rows, C, 1e-6, run.stream());
      });
  const KernelMeasurement bwd =
      run.measure("layernorm backward", "deit", shape,
                  bf16_act + 2 * f32_act + 2.0 * C + stats + 8.0 * C, 0, [&] {
                    kernels::layernorm_backward_cuda(
                        dy->as<bf16_bits>(), x->as<float>(), w->as<bf16_bits>(),
                        mean->as<float>(), rstd->as<float>(), dx->as<float>(),
                        dw->as<float>(), db->as<float>(), rows, C, ws->as<float>(), run.stream());
                  });
  // What a training step pays per LayerNorm: the pair, judged together (issue 7's target:
  // at least 80% of the copy bandwidth).
  KernelMeasurement pair = bwd;
  pair.kernel = "layernorm forward+backward";
  pair.bytes = fwd.bytes + bwd.bytes;
  pair.timing.median_ms = fwd.timing.median_ms + bwd.timing.median_ms;
  pair.timing.min_ms = fwd.timing.min_ms + bwd.timing.min_ms;
  pair.timing.max_ms = fwd.timing.max_ms + bwd.timing.max_ms;
  pair.note = "sum of the forward and backward rows";
  run.add(pair);
}

// Per-sample drop-path keep scales for a batch: 0 for a dropped sample, 1 / (1 - rate) else.
std::vector<float> keep_scales(int64_t B, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> keep(B);
  const float kept = static_cast<float>(1 / (1 - kDropPath));
  for (float& k : keep) k = rng.bernoulli(kDropPath) ? 0.0f : kept;
  return keep;
}

// x, out, dout and dx are fp32 (the residual stream), branch, dbranch, y and dy bf16.
void measure_layerscale(Runner& run, int64_t C) {
  const int64_t B = kBatch, Tn = kTokens, n = B * Tn * C;
  auto x = run.random_f32(n), branch = run.random_bf16(n), dout = run.random_f32(n),
       gamma = run.random_bf16(C);
  auto out = Runner::floats(n), dbranch = Runner::bf16s(n);
  auto keep = Runner::floats(B), dgamma = Runner::floats(C);
  auto ws = Runner::floats(kernels::layerscale_residual_backward_cuda_workspace_floats(B, Tn, C));
  run.upload(*keep, keep_scales(B, 7));
  const std::string shape = sizes({{"B", B}, {"T", Tn}, {"C", C}});
  const double bf16_act = 2.0 * n, f32_act = 4.0 * n, params = 2.0 * C + 4.0 * B;
  run.measure("layerscale+drop-path forward", "deit", shape, 2 * f32_act + bf16_act + params, 0,
              [&] {
                kernels::layerscale_residual_forward_cuda(
                    x->as<float>(), branch->as<bf16_bits>(), gamma->as<bf16_bits>(),
                    keep->as<float>(), out->as<float>(), B, Tn, C, run.stream());
              });
  run.measure("layerscale+drop-path backward", "deit", shape,
              f32_act + 2 * bf16_act + params + 4.0 * C, 0, [&] {
                kernels::layerscale_residual_backward_cuda(
                    dout->as<float>(), branch->as<bf16_bits>(), gamma->as<bf16_bits>(),
                    keep->as<float>(), dbranch->as<bf16_bits>(), dgamma->as<float>(), B, Tn, C,
                    ws->as<float>(), run.stream());
              });

  // Fused with the LayerNorm after it, as the model runs all but two of its residual updates.
  auto ln_w = run.random_bf16(C), ln_b = run.random_bf16(C), dy = run.random_bf16(n);
  auto y = Runner::bf16s(n), dx = Runner::floats(n);
  auto mean = Runner::floats(B * Tn), rstd = Runner::floats(B * Tn);
  auto dln_w = Runner::floats(C), dln_b = Runner::floats(C), dbias = Runner::floats(C);
  auto fused_ws = Runner::floats(
      kernels::layerscale_residual_layernorm_backward_cuda_workspace_floats(B, Tn, C));
  const double stats = 8.0 * B * Tn;
  run.measure("layerscale+layernorm forward", "deit", shape,
              2 * f32_act + 2 * bf16_act + params + 4.0 * C + stats, 0, [&] {
                kernels::layerscale_residual_layernorm_forward_cuda(
                    x->as<float>(), branch->as<bf16_bits>(), gamma->as<bf16_bits>(),
                    keep->as<float>(), ln_w->as<bf16_bits>(), ln_b->as<bf16_bits>(),
                    out->as<float>(), y->as<bf16_bits>(), mean->as<float>(), rstd->as<float>(),
                    B, Tn, C, 1e-6, run.stream());
              });
  // Reads dy, out, dout and branch; writes dx and dbranch (and, given dbias_out, the column
  // sums of dbranch).
  const auto fused_backward = [&](float* dbias_out) {
    kernels::layerscale_residual_layernorm_backward_cuda(
        dout->as<float>(), dy->as<bf16_bits>(), out->as<float>(), branch->as<bf16_bits>(),
        gamma->as<bf16_bits>(), keep->as<float>(), ln_w->as<bf16_bits>(), mean->as<float>(),
        rstd->as<float>(), dx->as<float>(), dbranch->as<bf16_bits>(), dgamma->as<float>(),
        dln_w->as<float>(), dln_b->as<float>(), dbias_out, B, Tn, C, fused_ws->as<float>(),
        run.stream());
  };
  run.measure("layerscale+layernorm backward", "deit", shape,
              3 * f32_act + 3 * bf16_act + params + 2.0 * C + stats + 3 * 4.0 * C, 0,
              [&] { fused_backward(nullptr); });
  // With the branch's linear layer's bias gradient taken on the way
  // (ops::linear_layerscale_residual_layernorm): against the row above plus "linear bias
  // gradient" at this width, what it saves.
  run.measure("layerscale+layernorm backward+bias gradient", "deit", shape,
              3 * f32_act + 3 * bf16_act + params + 2.0 * C + stats + 4 * 4.0 * C, 0,
              [&] { fused_backward(dbias->as<float>()); });
}

// fc1's output: the MLP's hidden width is 4 C. x uniform in [-3, 3), not [-1, 1): fc1's outputs
// reach past |x| = 2, and a GELU whose speed depends on x (erff branches on |x|) must show it.
void measure_gelu(Runner& run, int64_t C) {
  const int64_t n = kRows * 4 * C;
  auto x = run.random_bf16(n), dy = run.random_bf16(n);
  auto spread = Runner::floats(1);
  kernels::fill_cuda(spread->as<float>(), 3.f, 1, run.stream());
  kernels::scale_by_device_scalar_cuda(x->as<bf16_bits>(), spread->as<float>(), x->as<bf16_bits>(),
                                       n, run.stream());
  auto y = Runner::bf16s(n), dx = Runner::bf16s(n);
  const std::string shape = sizes({{"rows", kRows}, {"hidden", 4 * C}});
  run.measure("gelu forward", "deit", shape, 2 * 2.0 * n, 0, [&] {
    kernels::gelu_forward_cuda(x->as<bf16_bits>(), y->as<bf16_bits>(), n, run.stream());
  });
  run.measure("gelu backward", "deit", shape, 3 * 2.0 * n, 0, [&] {
    kernels::gelu_backward_cuda(dy->as<bf16_bits>(), x->as<bf16_bits>(), dx->as<bf16_bits>(), n,
                                run.stream());
  });
  // With fc1's bias gradient taken on the way (ops::linear_gelu): against the row above plus
  // "linear bias gradient", what the fusion saves.
  const int64_t hidden = 4 * C;
  auto db = Runner::floats(hidden);
  auto ws = Runner::floats(kernels::gelu_backward_bias_grad_cuda_workspace_floats(kRows, hidden));
  run.measure("gelu backward+bias gradient", "deit", shape, 3 * 2.0 * n + 4.0 * hidden, 0, [&] {
    kernels::gelu_backward_bias_grad_cuda(dy->as<bf16_bits>(), x->as<bf16_bits>(),
                                          dx->as<bf16_bits>(), db->as<float>(), kRows, hidden,
                                          ws->as<float>(), run.stream());
  });
}

// The linear layer's bias gradient (dy summed over its rows) at fc1, whose dy is the widest (4 C):
// a pass of its own over dy in the step, as cuBLASLt's bias-gradient epilogue measured slower
// (kernels/cuda/linear.cu), so its bandwidth is what the step pays for it.
void measure_bias_gradient(Runner& run, int64_t C) {
  const int64_t N = 4 * C, n = kRows * N;
  auto dy = run.random_bf16(n);
  auto db = Runner::floats(N);
  kernels::CublasLt lt;  // its workspace holds the per-chunk partial sums
  run.measure("linear bias gradient", "deit", sizes({{"rows", kRows}, {"N", N}}), 2.0 * n + 4.0 * N,
              0, [&] {
                kernels::linear_backward_cuda(dy->as<bf16_bits>(), nullptr, nullptr, nullptr,
                                              nullptr, db->as<float>(), kRows, C, N, lt,
                                              run.stream());
              });
}

// At a training step's batch the loss moves 2 MB: a few microseconds, mostly launch latency and
// the reduction's tail, which says little about the kernel's bandwidth. A 64x larger batch
// (131 MB) shows that.
void measure_bce(Runner& run, int64_t B) {
  const int64_t K = kClasses, n = B * K;
  auto logits = run.random_bf16(n);
  auto targets = Runner::floats(n), loss = Runner::floats(1), dlogits = Runner::bf16s(n);
  auto ws = Runner::floats(kernels::loss_cuda_workspace_floats(B, K));
  // Binarised mixed targets, as the recipe's BCE sees them: two classes on per sample.
  std::vector<float> host(n, 0.0f);
  Rng rng(11);
  for (int64_t b = 0; b < B; ++b)
    for (int i = 0; i < 2; ++i) host[b * K + rng.below(K)] = 1.0f;
  run.upload(*targets, host);
  run.measure("bce loss+gradient", "deit", sizes({{"B", B}, {"classes", K}}),
              (2.0 + 4.0 + 2.0) * n + 4.0, 0, [&] {
                kernels::bce_with_logits_cuda(logits->as<bf16_bits>(), targets->as<float>(),
                                              loss->as<float>(), dlogits->as<bf16_bits>(), B, K,
                                              ws->as<float>(), run.stream());
              });
}

// The linear layers of a block of width C over a batch's tokens (deit3_base's at C = 768):
// forward (with the bias epilogue), dx and dweight, each with cuBLASLt's first choice and with
// the fastest of its offers (CublasLt::set_autotune, which times them in the warm-up runs), by
// their FLOPs against the 8192^3 GEMM of the same run.
void measure_linear_gemms(Runner& run, int64_t C) {
  struct Layer {
    const char* name;
    int64_t K, N;  // in, out features
  };
  kernels::CublasLt first_choice, tuned;
  tuned.set_autotune(true);
  for (const Layer& l : {Layer{"qkv", C, 3 * C}, Layer{"proj", C, C}, Layer{"fc1", C, 4 * C},
                         Layer{"fc2", 4 * C, C}}) {
    auto x = run.random_bf16(kRows * l.K), w = run.random_bf16(l.N * l.K);
    auto b = run.random_bf16(l.N), dy = run.random_bf16(kRows * l.N);
    auto y = Runner::bf16s(kRows * l.N), dx = Runner::bf16s(kRows * l.K);
    auto dw = Runner::floats(l.N * l.K);
    const std::string shape =
        std::string(l.name) + " " + sizes({{"M", kRows}, {"K", l.K}, {"N", l.N}});
    const double flops = 2.0 * kRows * l.K * l.N;
    for (kernels::CublasLt* lt : {&first_choice, &tuned}) {
      const char* impl = lt == &tuned ? "cublaslt-autotuned" : "cublaslt";
      run.measure("linear forward", impl, shape, 0, flops, [&] {
        kernels::linear_forward_cuda(x->as<bf16_bits>(), w->as<bf16_bits>(), b->as<bf16_bits>(),
                                     y->as<bf16_bits>(), kRows, l.K, l.N, *lt, run.stream());
      });
      run.measure("linear dx", impl, shape, 0, flops, [&] {
        kernels::linear_backward_cuda(dy->as<bf16_bits>(), x->as<bf16_bits>(), w->as<bf16_bits>(),
                                      dx->as<bf16_bits>(), nullptr, nullptr, kRows, l.K, l.N, *lt,
                                      run.stream());
      });
      run.measure("linear dweight", impl, shape, 0, flops, [&] {
        kernels::linear_backward_cuda(dy->as<bf16_bits>(), x->as<bf16_bits>(), w->as<bf16_bits>(),
                                      nullptr, dw->as<float>(), nullptr, kRows, l.K, l.N, *lt,
                                      run.stream());
      });
    }
  }
}

// One (T, D) attention job, ours and the rival's alike. Heads of ViT-B (head dim 64) and ViT-H
// (head dim 80); the batch keeps ~50k tokens, a training step's worth at every sequence length.
struct AttentionShape {
  AttentionShape(int64_t tokens_per_image, int64_t head_dim)
      : Tn(tokens_per_image),
        D(head_dim),
        H(head_dim == 64 ? 12 : 16),
        B(std::max<int64_t>(1, kRows / tokens_per_image)),
        C(H * D),
        tokens(B * Tn),
        scale(1.0 / std::sqrt(static_cast<double>(D))),
        forward_flops(4.0 * B * H * Tn * Tn * D),
        name(sizes({{"B", B}, {"T", Tn}, {"H", H}, {"D", D}})) {}
  int64_t Tn, D, H, B, C, tokens;
  double scale;
  double forward_flops;
  std::string name;
};

// The ViT sequence lengths at both head dims, and T = 192 at head dim 64: 197 less the 5 rows that
// make its fourth 64-row tile, whose block's 4 warps split the work of that one live group of 16
// rows (attention.cu). Every tile of T = 192 is full: the pair's FLOP rates say what the nearly
// empty tile still costs.
const std::vector<AttentionShape>& attention_shapes() {
  static const std::vector<AttentionShape> shapes = [] {
    std::vector<AttentionShape> all;
    for (int64_t D : {64, 80})
      for (int64_t Tn : {65, 145, 197, 257, 577}) {
        if (D == 64 && Tn == 197) all.emplace_back(192, D);
        all.emplace_back(Tn, D);
      }
    return all;
  }();
  return shapes;
}

// Our attention forward and backward at one shape.
void measure_attention(Runner& run, const AttentionShape& s) {
  auto qkv = run.random_bf16(s.tokens * 3 * s.C), dout = run.random_bf16(s.tokens * s.C);
  auto out = Runner::bf16s(s.tokens * s.C), dqkv = Runner::bf16s(s.tokens * 3 * s.C);
  auto lse = Runner::floats(s.B * s.H * s.Tn);
  auto ws = Runner::floats(kernels::attention_backward_cuda_workspace_floats(s.B, s.Tn, s.H, s.D));
  run.measure("attention forward", "deit", s.name, 0, s.forward_flops, [&] {
    kernels::attention_forward_cuda(qkv->as<bf16_bits>(), out->as<bf16_bits>(), lse->as<float>(),
                                    s.B, s.Tn, s.H, s.D, s.scale, run.stream());
  });
  run.measure("attention backward", "deit", s.name, 0, 2.5 * s.forward_flops, [&] {
    kernels::attention_backward_cuda(qkv->as<bf16_bits>(), out->as<bf16_bits>(), lse->as<float>(),
                                     dout->as<bf16_bits>(), dqkv->as<bf16_bits>(), nullptr, s.B,
                                     s.Tn, s.H, s.D, s.scale, ws->as<float>(), run.stream());
  });
  // With the qkv layer's bias gradient taken on the way (ops::linear_attention), at deit3_base's
  // shape: against the row above plus the bias gradient's own pass over dqkv, what it saves.
  if (s.Tn != 197 || s.D != 64) return;
  auto dbias = Runner::floats(3 * s.C);
  run.measure(
      "attention backward+qkv bias gradient", "deit", s.name, 0, 2.5 * s.forward_flops, [&] {
        kernels::attention_backward_cuda(qkv->as<bf16_bits>(), out->as<bf16_bits>(),
                                         lse->as<float>(), dout->as<bf16_bits>(),
                                         dqkv->as<bf16_bits>(), dbias->as<float>(), s.B, s.Tn, s.H,
                                         s.D, s.scale, ws->as<float>(), run.stream());
      });
  // dS in slices of the batch small enough for an H200's 50 MB L2 to hold one between the dK/dV
  // pass that writes it and the dQ pass that reads it back: in one slice (the default budget,
  // kAttentionScoresBudgetBytes) this shape's 252 MB of dS makes a round trip through DRAM. What
  // that trip costs, against 8 slices' 16 launches and their partly filled last waves.
  constexpr int64_t kL2SliceBudget = int64_t{32} << 20;
  run.measure(
      "attention backward, dS in 32 MiB slices", "deit", s.name, 0, 2.5 * s.forward_flops, [&] {
        kernels::attention_backward_cuda(qkv->as<bf16_bits>(), out->as<bf16_bits>(),
                                         lse->as<float>(), dout->as<bf16_bits>(),
                                         dqkv->as<bf16_bits>(), nullptr, s.B, s.Tn, s.H, s.D,
                                         s.scale, ws->as<float>(), run.stream(), kL2SliceBudget);
      });

  // The last block's attention, the class token's query alone (ops::linear_class_attention):
  // memory-bound, judged by the bytes it must move. Forward: K and V read. Backward: K and V read
  // again, dqkv written whole.
  const double kv_bytes = 2.0 * s.tokens * 2 * s.C, dqkv_bytes = 2.0 * s.tokens * 3 * s.C;
  auto class_out = Runner::bf16s(s.B * s.C), class_dout = run.random_bf16(s.B * s.C);
  auto class_lse = Runner::floats(s.B * s.H);
  auto class_ws =
      Runner::floats(kernels::class_attention_backward_cuda_workspace_floats(s.B, s.H, s.D));
  run.measure("class-token attention forward", "deit", s.name, kv_bytes, 0, [&] {
    kernels::class_attention_forward_cuda(qkv->as<bf16_bits>(), class_out->as<bf16_bits>(),
                                          class_lse->as<float>(), s.B, s.Tn, s.H, s.D, s.scale,
                                          run.stream());
  });
  run.measure("class-token attention backward+qkv bias gradient", "deit", s.name,
              kv_bytes + dqkv_bytes, 0, [&] {
                kernels::class_attention_backward_cuda(
                    qkv->as<bf16_bits>(), class_out->as<bf16_bits>(), class_lse->as<float>(),
                    class_dout->as<bf16_bits>(), dqkv->as<bf16_bits>(), dbias->as<float>(), s.B,
                    s.Tn, s.H, s.D, s.scale, class_ws->as<float>(), run.stream());
              });
}

// cuDNN's attention forward at one shape, on the same inputs as ours (random_bf16 fills from the
// start of one random source every time).
void measure_cudnn_attention(Runner& run, const AttentionShape& s) {
#if DEIT_HAVE_CUDNN
  // The rival's failure, at its set-up or at its execution, makes a row that says why rather than
  // ending the benchmark. (A CUDA fault it raises fails the rival rows after it too, and the
  // report's error: see run_kernel_benchmarks.)
  try {
    auto qkv = run.random_bf16(s.tokens * 3 * s.C);
    auto out = Runner::bf16s(s.tokens * s.C);
    auto lse = Runner::floats(s.B * s.H * s.Tn);
    CudnnAttentionForward cudnn(s.B, s.Tn, s.H, s.D, s.scale);
    run.measure(
        "attention forward", "cudnn", s.name, 0, s.forward_flops,
        [&] {
          cudnn.run(qkv->as<bf16_bits>(), out->as<bf16_bits>(), lse->as<float>(), run.stream());
        },
        cudnn.engine());
  } catch (const std::exception& e) {
    run.unavailable("attention forward", "cudnn", s.name, e.what());
  }
#else
  run.unavailable("attention forward", "cudnn", s.name, "this deit was built without cuDNN");
#endif
}

}  // namespace

KernelReport run_kernel_benchmarks(int device, const KernelBenchOptions& options,
                                   const ProgressFn& progress) {
  DEIT_CUDA_CHECK(cudaSetDevice(device));
  KernelReport report;
  report.device = device_name(device);
  report.timing = options.timing;
#if DEIT_HAVE_CUDNN
  report.cudnn = cudnn_runtime_version();
#else
  report.cudnn = "not built (cuDNN was not found when deit was configured)";
#endif
  Runner run(device, options, report, progress);
  try {
    measure_ceilings(run, report);
    const std::vector<int64_t> widths = options.all_widths
                                            ? std::vector<int64_t>{384, 768, 1024, 1280}
                                            : std::vector<int64_t>{768};
    for (int64_t C : widths) {
      measure_layernorm(run, C);
      measure_layerscale(run, C);
      measure_gelu(run, C);
      measure_bias_gradient(run, C);
    }
    for (int64_t B : {kBatch, 64 * kBatch}) measure_bce(run, B);
    for (const AttentionShape& s : attention_shapes()) measure_attention(run, s);
    for (int64_t C : widths) measure_linear_gemms(run, C);
    // The library rivals last, after every row of ours: a fault a cuDNN kernel raises
    // asynchronously is sticky, every CUDA call after it fails, so run earlier it would turn all
    // of our later measurements into errors; here it can cost only the rival's own rows.
    for (const AttentionShape& s : attention_shapes()) measure_cudnn_attention(run, s);
    DEIT_CUDA_CHECK(cudaStreamSynchronize(run.stream()));
  } catch (const std::exception& e) {
    report.error = e.what();
  }
  return report;
}

double achieved_gbps(const KernelMeasurement& m) {
  return m.available && m.bytes > 0 && m.timing.median_ms > 0
             ? m.bytes / (m.timing.median_ms * 1e-3) / 1e9
             : 0;
}

double achieved_tflops(const KernelMeasurement& m) {
  return m.available && m.flops > 0 && m.timing.median_ms > 0
             ? m.flops / (m.timing.median_ms * 1e-3) / 1e12
             : 0;
}

double fraction_of_ceiling(const KernelMeasurement& m, const KernelReport& report) {
  if (m.bytes > 0 && report.copy_gbps > 0) return achieved_gbps(m) / report.copy_gbps;
  if (m.flops > 0 && report.gemm_tflops > 0) return achieved_tflops(m) / report.gemm_tflops;
  return 0;
}

nlohmann::ordered_json to_json(const KernelReport& report) {
  nlohmann::ordered_json j;
  j["device"] = report.device;
  j["cudnn"] = report.cudnn;
  j["warmup"] = report.timing.warmup;
  j["repeats"] = report.timing.repeats;
  j["l2_flushed"] = true;
  j["copy_gbps"] = report.copy_gbps;
  j["gemm_tflops"] = report.gemm_tflops;
  nlohmann::ordered_json rows = nlohmann::ordered_json::array();
  for (const KernelMeasurement& m : report.kernels) {
    nlohmann::ordered_json r;
    r["kernel"] = m.kernel;
    r["impl"] = m.impl;
    r["shape"] = m.shape;
    r["available"] = m.available;
    if (m.available) {
      r["median_ms"] = m.timing.median_ms;
      r["min_ms"] = m.timing.min_ms;
      r["max_ms"] = m.timing.max_ms;
      if (m.bytes > 0) {
        r["bytes"] = m.bytes;
        r["gbps"] = achieved_gbps(m);
      }
      if (m.flops > 0) {
        r["flops"] = m.flops;
        r["tflops"] = achieved_tflops(m);
      }
      r["fraction_of_ceiling"] = fraction_of_ceiling(m, report);
    }
    if (!m.note.empty()) r["note"] = m.note;
    rows.push_back(r);
  }
  j["kernels"] = rows;
  if (!report.error.empty()) j["error"] = report.error;
  return j;
}

}  // namespace deit::bench
#endif
