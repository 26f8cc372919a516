// [gpu] checks of the cuBLASLt linear layer (kernels/cuda/linear.cu) against its CPU twin: fresh
// bf16-rounded random inputs (both sides see the same numbers), outputs poisoned with NaN before
// every call, every element compared. Shapes: the ViT-S GEMMs at batch 64 (qkv, proj, fc1, fc2),
// the head, the demo's 10-class head, an ImageNet-21k head (21841 classes: the bias gradient in
// column tiles), batch-1 and 7-row GEMMs, and K, N that are not multiples of 8 (rows not 16-byte
// aligned: cuBLASLt's non-tensor-core kernels, or a clear std::invalid_argument). The forward
// also with the bias added apart (no epilogue), and captured into a CUDA graph; the fallbacks
// where cuBLASLt has no bias epilogue or refuses an algorithm it offered.
#include <cuda_runtime.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/rng.h"
#include "kernels/cuda/cublaslt.h"
#include "kernels/linear.h"
#include "tests/cuda_test_util.h"
#include "tests/scoped_environment.h"

using namespace deit::kernels;
using deit::Rng;
using namespace deit::test;

namespace {

// DESIGN.md: bf16 outputs.
constexpr double kBf16Tol = 1e-2;
// fp32 outputs (dW, db) of bf16 inputs: both sides multiply the same bf16 numbers exactly and
// accumulate in fp32 (the CPU in float BLAS, the reference's column sums in double), so only
// summation order separates them: ~1e-6 expected for sums of up to 12608 terms.
constexpr double kF32Tol = 1e-4;

struct LinearShape {
  int64_t M, K, N;
  std::string str() const {
    std::ostringstream s;
    s << "M=" << M << " K=" << K << " N=" << N;
    return s.str();
  }
};

const std::vector<LinearShape>& linear_shapes() {
  constexpr int64_t kTokens = 64 * 197;  // ViT-S, batch 64 at 224 px
  static const std::vector<LinearShape> shapes = {
      {kTokens, 384, 1152},  // qkv
      {kTokens, 384, 384},   // proj
      {kTokens, 384, 1536},  // fc1
      {kTokens, 1536, 384},  // fc2
      {64, 384, 1000},       // head
      {64, 192, 10},         // the demo's head: 4-byte aligned rows of y
      {1, 384, 1152},        // batch 1, one token
      {7, 384, 384},         // 7 rows
      {7, 13, 5},            // K, N odd: 2-byte aligned rows
      {197, 100, 37},        // K % 8 == 4: 8-byte aligned rows of x; N odd
      {33, 385, 191},        // K odd, N odd
      {8, 384, 21841},       // an ImageNet-21k head: the bias gradient in column tiles
  };
  return shapes;
}

struct LinearData {
  Bf16Host x, w, b, dy;
};

LinearData random_linear(Rng& rng, const LinearShape& s) {
  return {random_bf16(rng, s.M * s.K, -1, 1), random_bf16(rng, s.N * s.K, -0.1, 0.1),
          random_bf16(rng, s.N, -0.5, 0.5), random_bf16(rng, s.M * s.N, -1, 1)};
}

// One layer's random operands on the device, its gradient outputs too.
struct LinearBuffers {
  Bf16Buffer x, w, b, y, dy, dx;
  F32Buffer dw, db;
  explicit LinearBuffers(const LinearData& d, const LinearShape& s)
      : x(d.x.bits),
        w(d.w.bits),
        b(d.b.bits),
        y(s.M * s.N),
        dy(d.dy.bits),
        dx(s.M * s.K),
        dw(s.N * s.K),
        db(s.N) {}
};

// Two steps of a linear layer with bias on `lt` (forward and backward, outputs poisoned before
// each), each against the CPU twin: the first call of a GEMM plans it, the second runs the plan
// kept. Returns the operands, for more calls.
LinearBuffers check_two_steps(CublasLt& lt, const Stream& stream, Rng& rng, const LinearShape& s) {
  const LinearData d = random_linear(rng, s);
  LinearBuffers dev(d, s);
  std::vector<float> y_ref(s.M * s.N), dx_ref(s.M * s.K), dw_ref(s.N * s.K), db_ref(s.N);
  linear_forward_cpu<float>(d.x.values.data(), d.w.values.data(), d.b.values.data(), y_ref.data(),
                            s.M, s.K, s.N);
  linear_backward_cpu<float>(d.dy.values.data(), d.x.values.data(), d.w.values.data(),
                             dx_ref.data(), dw_ref.data(), db_ref.data(), s.M, s.K, s.N);
  for (int call = 0; call < 2; ++call) {
    INFO("call " << call);
    dev.y.poison();
    dev.dx.poison();
    dev.dw.poison();
    linear_forward_cuda(dev.x.get(), dev.w.get(), dev.b.get(), dev.y.get(), s.M, s.K, s.N, lt,
                        stream);
    linear_backward_cuda(dev.dy.get(), dev.x.get(), dev.w.get(), dev.dx.get(), dev.dw.get(),
                         dev.db.get(), s.M, s.K, s.N, lt, stream);
    stream.sync();
    check_close("y", dev.y, y_ref, kBf16Tol);
    check_close("dx", dev.dx, dx_ref, kBf16Tol);
    check_close("dweight", dev.dw, dw_ref, kF32Tol);
  }
  return dev;
}

}  // namespace

TEST_CASE("cuda linear forward matches the CPU twin", "[gpu][kernels][linear]") {
  Stream stream;
  CublasLt lt, unfused;
  unfused.set_bias_epilogue(false);
  Rng rng(1201);
  for (const LinearShape& s : linear_shapes()) {
    INFO(s.str());
    const LinearData d = random_linear(rng, s);
    Bf16Buffer x(d.x.bits), w(d.w.bits), b(d.b.bits), y(s.M * s.N);

    std::vector<float> ref(s.M * s.N);
    linear_forward_cpu<float>(d.x.values.data(), d.w.values.data(), d.b.values.data(), ref.data(),
                              s.M, s.K, s.N);
    linear_forward_cuda(x.get(), w.get(), b.get(), y.get(), s.M, s.K, s.N, lt, stream);
    stream.sync();
    check_close("y with bias", y, ref, kBf16Tol);

    // The cached plan with a bias aligned to 16 bytes and no more (8 bf16 past an allocation).
    Bf16Buffer b16(d.b.bits, 8);
    y.poison();
    linear_forward_cuda(x.get(), w.get(), b16.get(), y.get(), s.M, s.K, s.N, lt, stream);
    stream.sync();
    check_close("y with a 16-byte aligned bias", y, ref, kBf16Tol);

    // The bias added by a kernel after the GEMM, as where no algorithm fuses it.
    y.poison();
    linear_forward_cuda(x.get(), w.get(), b.get(), y.get(), s.M, s.K, s.N, unfused, stream);
    stream.sync();
    check_close("y with the bias added apart", y, ref, kBf16Tol);

    linear_forward_cpu<float>(d.x.values.data(), d.w.values.data(), nullptr, ref.data(), s.M, s.K,
                              s.N);
    y.poison();
    linear_forward_cuda(x.get(), w.get(), nullptr, y.get(), s.M, s.K, s.N, lt, stream);
    stream.sync();
    check_close("y without bias", y, ref, kBf16Tol);
  }
}

TEST_CASE("cuda linear backward matches the CPU twin", "[gpu][kernels][linear]") {
  Stream stream;
  CublasLt lt;
  Rng rng(1202);
  for (const LinearShape& s : linear_shapes()) {
    INFO(s.str());
    const LinearData d = random_linear(rng, s);
    Bf16Buffer dy(d.dy.bits), x(d.x.bits), w(d.w.bits), dx(s.M * s.K);
    F32Buffer dw(s.N * s.K), db(s.N);

    std::vector<float> dx_ref(s.M * s.K), dw_ref(s.N * s.K), db_ref(s.N);
    linear_backward_cpu<float>(d.dy.values.data(), d.x.values.data(), d.w.values.data(),
                               dx_ref.data(), dw_ref.data(), db_ref.data(), s.M, s.K, s.N);
    linear_backward_cuda(dy.get(), x.get(), w.get(), dx.get(), dw.get(), db.get(), s.M, s.K, s.N,
                         lt, stream);
    stream.sync();
    check_close("dx", dx, dx_ref, kBf16Tol);
    check_close("dweight", dw, dw_ref, kF32Tol);
    check_close("dbias", db, db_ref, kF32Tol);

    // Same inputs, same bits: the GEMM plan is cached and the bias sum has a fixed order.
    const std::vector<float> dw_first = dw.download(), db_first = db.download();
    dw.poison();
    db.poison();
    linear_backward_cuda(dy.get(), x.get(), w.get(), nullptr, dw.get(), db.get(), s.M, s.K, s.N,
                         lt, stream);
    stream.sync();
    check_same_bits("dweight rerun", dw.download(), dw_first);
    check_same_bits("dbias rerun", db.download(), db_first);

    // Each output alone: the others are left as they are.
    dx.poison();
    dw.poison();
    db.poison();
    linear_backward_cuda(dy.get(), x.get(), w.get(), dx.get(), nullptr, nullptr, s.M, s.K, s.N, lt,
                         stream);
    stream.sync();
    check_close("dx alone", dx, dx_ref, kBf16Tol);
    const std::vector<float> untouched = dw.download();
    CHECK(std::isnan(untouched.front()));
    // dbias alone reads dy only (`deit bench kernels` times it so, without x and the weight).
    linear_backward_cuda(dy.get(), nullptr, nullptr, nullptr, nullptr, db.get(), s.M, s.K, s.N, lt,
                         stream);
    stream.sync();
    check_close("dbias alone", db, db_ref, kF32Tol);
  }
}

TEST_CASE("cuda linear plans each GEMM shape once", "[gpu][kernels][linear]") {
  Stream stream;
  CublasLt lt;
  Rng rng(1203);
  const LinearShape s{197, 384, 1152};
  const LinearData d = random_linear(rng, s);
  Bf16Buffer x(d.x.bits), w(d.w.bits), b(d.b.bits), y(s.M * s.N), dy(d.dy.bits), dx(s.M * s.K);
  F32Buffer dw(s.N * s.K), db(s.N);
  auto step = [&] {
    linear_forward_cuda(x.get(), w.get(), b.get(), y.get(), s.M, s.K, s.N, lt, stream);
    linear_backward_cuda(dy.get(), x.get(), w.get(), dx.get(), dw.get(), db.get(), s.M, s.K, s.N,
                         lt, stream);
  };
  step();
  stream.sync();
  CHECK(lt.plan_count() == 3);  // forward with bias, dx, dW
  step();
  step();
  stream.sync();
  CHECK(lt.plan_count() == 3);
}

TEST_CASE("cuda linear plans for the alignment of each operand's pointer and row length together",
          "[gpu][kernels][linear]") {
  // cuBLASLt's algorithm is chosen for the alignments the plan promises for A, B and D, each that
  // of the pointer and of the leading dimension together, and a plan is reused only for the same
  // promises: the emulated cuBLASLt refuses an operand less aligned than its algorithm was chosen
  // for (a real GPU may fault or read wrong elements). K odd with N a multiple of 8: x's rows are
  // 2-byte aligned whatever N is. Then, on the same handle, x (and for dx, dy) one element past
  // its allocation: the same shape, but 2-byte aligned operands that need a plan of their own.
  Stream stream;
  CublasLt lt;
  Rng rng(1204);
  for (const LinearShape& s : {LinearShape{9, 13, 16}, LinearShape{9, 16, 24}}) {
    INFO(s.str());
    const LinearData d = random_linear(rng, s);
    Bf16Buffer x(d.x.bits), x_off(d.x.bits, 1), w(d.w.bits), y(s.M * s.N);
    Bf16Buffer dy(d.dy.bits), dy_off(d.dy.bits, 1), dx(s.M * s.K);
    std::vector<float> ref(s.M * s.N);
    linear_forward_cpu<float>(d.x.values.data(), d.w.values.data(), nullptr, ref.data(), s.M, s.K,
                              s.N);
    linear_forward_cuda(x.get(), w.get(), nullptr, y.get(), s.M, s.K, s.N, lt, stream);
    stream.sync();
    check_close("y", y, ref, kBf16Tol);
    y.poison();
    linear_forward_cuda(x_off.get(), w.get(), nullptr, y.get(), s.M, s.K, s.N, lt, stream);
    stream.sync();
    check_close("y of x one element off", y, ref, kBf16Tol);

    std::vector<float> dx_ref(s.M * s.K), dw_ref(s.N * s.K), db_ref(s.N);
    linear_backward_cpu<float>(d.dy.values.data(), d.x.values.data(), d.w.values.data(),
                               dx_ref.data(), dw_ref.data(), db_ref.data(), s.M, s.K, s.N);
    linear_backward_cuda(dy.get(), x.get(), w.get(), dx.get(), nullptr, nullptr, s.M, s.K, s.N, lt,
                         stream);
    stream.sync();
    check_close("dx", dx, dx_ref, kBf16Tol);
    dx.poison();
    linear_backward_cuda(dy_off.get(), x.get(), w.get(), dx.get(), nullptr, nullptr, s.M, s.K, s.N,
                         lt, stream);
    stream.sync();
    check_close("dx of dy one element off", dx, dx_ref, kBf16Tol);
  }
}

TEST_CASE("cuda linear with the GEMM autotuner matches the CPU twin and keeps the fastest",
          "[gpu][kernels][linear]") {
  Stream stream;
  CublasLt lt;
  lt.set_autotune(true);
  Rng rng(1206);
  const LinearShape s{197, 384, 1152};
  // The first call of each GEMM times its algorithms on its own output, then writes it for real;
  // the second runs the algorithm kept.
  const LinearBuffers buffers = check_two_steps(lt, stream, rng, s);
  CHECK(lt.plan_count() == 3);
  // The emulated heuristic offers first an algorithm one piece of work slower than its second
  // (tests/emulated/runtime/cublaslt.cpp); a GPU's choices depend on the GPU.
  if (on_emulated_device())
    CHECK(lt.plans_off_first_choice() == 3);
  else
    CHECK(lt.plans_off_first_choice() <= 3);

  // Off (the default), every plan runs the heuristic's first choice.
  CublasLt untuned;
  linear_forward_cuda(buffers.x.get(), buffers.w.get(), buffers.b.get(), buffers.y.get(), s.M, s.K,
                      s.N, untuned, stream);
  stream.sync();
  CHECK(untuned.plans_off_first_choice() == 0);
}

TEST_CASE("cuda linear falls back when cuBLASLt has no bias epilogue or refuses an algorithm",
          "[gpu][kernels][linear]") {
  // A GPU's cuBLASLt refuses as it will; the emulated one as DEIT_EMULATED_CUBLASLT_REFUSE says
  // (tests/emulated/runtime/cublaslt.cpp), so that there the fallbacks run: the bias added by a
  // kernel of linear.cu, the heuristic's next algorithm (also for the autotuner).
  const std::string refusal = GENERATE(as<std::string>{}, "bias", "first");
  const bool autotune = GENERATE(false, true);
  INFO("refused: " << refusal << (autotune ? ", autotuned" : ""));
  const ScopedEnvironment refuse("DEIT_EMULATED_CUBLASLT_REFUSE", refusal);
  Stream stream;
  CublasLt lt;
  lt.set_autotune(autotune);
  Rng rng(1206);
  check_two_steps(lt, stream, rng, {37, 64, 24});  // planned (and refused) by the first call
  if (!on_emulated_device()) return;
  if (refusal == "bias") {
    // The forward's plan with the epilogue, kept with no algorithm, then the one without.
    CHECK(lt.plan_count() == 4);
    CHECK(lt.plans_off_first_choice() == (autotune ? 3 : 0));
  } else {
    CHECK(lt.plan_count() == 3);
    CHECK(lt.plans_off_first_choice() == 3);
  }
}

TEST_CASE("cuda linear is captured into a CUDA graph once it has run, and refused before",
          "[gpu][kernels][linear]") {
  Stream stream;
  CublasLt lt;
  Rng rng(1205);
  const LinearShape s{64, 192, 10};
  const LinearData d = random_linear(rng, s);
  Bf16Buffer x(d.x.bits), w(d.w.bits), b(d.b.bits), y(s.M * s.N);
  auto forward = [&] {
    linear_forward_cuda(x.get(), w.get(), b.get(), y.get(), s.M, s.K, s.N, lt, stream);
  };
  // Planning runs cuBLASLt's heuristic, which a capture cannot hold: refused, naming the GEMM.
  cudaGraph_t graph = nullptr;
  DEIT_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  CHECK_THROWS_WITH(forward(), Catch::Contains("m=10 n=64 k=192") &&
                                   Catch::Contains("for the first time during CUDA graph capture"));
  DEIT_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  DEIT_CUDA_CHECK(cudaGraphDestroy(graph));
  CHECK(lt.plan_count() == 0);

  forward();  // plans it
  stream.sync();
  DEIT_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  forward();
  DEIT_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec = nullptr;
  DEIT_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  y.poison();
  DEIT_CUDA_CHECK(cudaGraphLaunch(exec, stream));
  stream.sync();
  std::vector<float> ref(s.M * s.N);
  linear_forward_cpu<float>(d.x.values.data(), d.w.values.data(), d.b.values.data(), ref.data(),
                            s.M, s.K, s.N);
  check_close("y replayed", y, ref, kBf16Tol);
  DEIT_CUDA_CHECK(cudaGraphExecDestroy(exec));
  DEIT_CUDA_CHECK(cudaGraphDestroy(graph));
}

TEST_CASE("cuda linear handles empty batches and rejects bad arguments", "[gpu][kernels][linear]") {
  Stream stream;
  CublasLt lt;
  Rng rng(1204);
  const int64_t K = 16, N = 24;
  const Bf16Host wh = random_bf16(rng, N * K, -1, 1);
  Bf16Buffer x(8 * K), w(wh.bits), b(N + 8), y(8 * N), dy(8 * N), dx(8 * K);
  F32Buffer dw(N * K), db(N);

  // M == 0: the parameter gradients are sums over no rows, so zeros.
  linear_forward_cuda(x.get(), w.get(), b.get(), y.get(), 0, K, N, lt, stream);
  linear_backward_cuda(dy.get(), x.get(), w.get(), dx.get(), dw.get(), db.get(), 0, K, N, lt,
                       stream);
  stream.sync();
  check_close("dweight of no rows", dw, std::vector<float>(N * K, 0.f), 0.0);
  check_close("dbias of no rows", db, std::vector<float>(N, 0.f), 0.0);

  CHECK_THROWS_AS(linear_forward_cuda(x.get(), w.get(), b.get(), y.get(), 8, 0, N, lt, stream),
                  std::invalid_argument);
  CHECK_THROWS_AS(linear_forward_cuda(x.get(), w.get(), b.get(), y.get(), -1, K, N, lt, stream),
                  std::invalid_argument);
  // A bias that is not 16-byte aligned.
  CHECK_THROWS_AS(
      linear_forward_cuda(x.get(), w.get(), b.get() + 1, y.get(), 8, K, N, lt, stream),
      std::invalid_argument);
  // The bias gradient's partial sums live in the CublasLt workspace: one too small says so.
  CublasLt small(64);
  CHECK_THROWS_AS(linear_backward_cuda(dy.get(), x.get(), w.get(), nullptr, nullptr, db.get(), 8,
                                       K, N, small, stream),
                  std::invalid_argument);
  stream.sync();
}
