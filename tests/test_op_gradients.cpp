// Every engine op, through the autograd tape, against central finite differences in double
// precision: this checks the CPU kernels, the engine's wiring of them (which input gets which
// gradient, saved tensors, shapes), and the tape's routing, in one go.
#include <catch2/catch.hpp>

#include <functional>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "tests/gradcheck.h"

using namespace deit;

namespace {

using OpFn = std::function<Tensor(const std::vector<Tensor>&)>;

Tensor random_f64(const Shape& shape, Rng& rng, bool requires_grad = true) {
  Tensor t = Tensor::randn(shape, rng, 1.0, DType::f64);
  t.set_requires_grad(requires_grad);
  return t;
}

// Runs op once with grad, backpropagates a random upstream gradient g, then compares every
// input's .grad with d sum(op(inputs) * g) / d input by finite differences.
void check_op_gradients(const OpFn& op, const std::vector<Tensor>& inputs, Rng& rng) {
  Tensor out = op(inputs);
  Tensor g = Tensor::randn(out.shape(), rng, 1.0, DType::f64);
  const std::vector<double> g_values = g.to_vector<double>();
  backward(out, g);
  REQUIRE(tape_size() == 0);
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& x = inputs[i];
    if (!x.requires_grad()) continue;
    INFO("input " << i << ": " << x.describe());
    REQUIRE(x.grad().defined());
    REQUIRE(x.grad().shape() == x.shape());
    auto loss = [&] {
      NoGrad no_grad;
      return test::dot(op(inputs).to_vector<double>(), g_values);
    };
    const std::vector<double> numeric =
        test::numeric_gradient(x.data<double>(), static_cast<size_t>(x.numel()), loss);
    CHECK(test::relative_error(x.grad().to_vector<double>(), numeric) < test::kGradTolerance);
  }
}

// An fp32 MLP's fc1 input, weight and bias (x: (2, 7, 24) -> (2, 7, 6)), each requiring grad.
std::vector<Tensor> mlp_inputs(Rng& rng) {
  auto input = [&](const Shape& shape) {
    return Tensor::randn(shape, rng).set_requires_grad(true);
  };
  return {input({2, 7, 24}), input({6, 24}), input({6})};
}

// One run of an op on the tape: its output, then each input's gradient (cleared after) when the
// output's gradient is `seed`, and the bytes the tape kept for backward.
struct TapedRun {
  std::vector<std::vector<float>> results;
  size_t saved_bytes;
};
TapedRun run_taped(const OpFn& op, const std::vector<Tensor>& inputs, const Tensor& seed) {
  const Tensor y = op(inputs);
  TapedRun run{{y.to_vector<float>()}, tape_saved_bytes()};
  backward(y, seed);
  for (const Tensor& t : inputs) {
    run.results.push_back(t.grad().to_vector<float>());
    t.impl().grad.reset();
  }
  return run;
}

void check_same_bits(const TapedRun& fused, const TapedRun& apart) {
  REQUIRE(fused.results.size() == apart.results.size());
  for (size_t i = 0; i < fused.results.size(); ++i) {
    INFO("result " << i);
    CHECK(fused.results[i] == apart.results[i]);
  }
}

}  // namespace

TEST_CASE("linear op gradient (x, weight, bias) by finite differences", "[gradcheck][ops]") {
  Rng rng(11);
  check_op_gradients([](const auto& in) { return ops::linear(in[0], in[1], in[2]); },
                     {random_f64({2, 3, 5}, rng), random_f64({4, 5}, rng), random_f64({4}, rng)},
                     rng);
}

TEST_CASE("linear op gradient without bias by finite differences", "[gradcheck][ops]") {
  Rng rng(12);
  check_op_gradients([](const auto& in) { return ops::linear(in[0], in[1], Tensor()); },
                     {random_f64({3, 5}, rng), random_f64({2, 5}, rng)}, rng);
}

TEST_CASE("gelu op gradient by finite differences", "[gradcheck][ops]") {
  Rng rng(13);
  check_op_gradients([](const auto& in) { return ops::gelu(in[0]); },
                     {random_f64({3, 7}, rng)}, rng);
}

TEST_CASE("layernorm op gradient (x, weight, bias) by finite differences", "[gradcheck][ops]") {
  Rng rng(14);
  check_op_gradients([](const auto& in) { return ops::layernorm(in[0], in[1], in[2], 1e-6); },
                     {random_f64({2, 3, 6}, rng), random_f64({6}, rng), random_f64({6}, rng)}, rng);
}

TEST_CASE("attention op gradient over packed qkv by finite differences",
          "[gradcheck][ops][attention]") {
  Rng rng(15);
  // B=2, T=5, heads=2, head_dim=3: nothing is a multiple of anything.
  check_op_gradients([](const auto& in) { return ops::attention(in[0], 2); },
                     {random_f64({2, 5, 3 * 2 * 3}, rng)}, rng);
}

TEST_CASE("attention refuses heads of no features", "[ops][attention]") {
  // head_dim 0: the scale 0^-0.5 is infinite, and it multiplies dot products of no terms.
  for (const auto& op : {ops::attention, ops::class_attention})
    CHECK_THROWS_WITH(op(Tensor::zeros({1, 2, 0}), 1), Catch::Contains("head_dim"));
}

TEST_CASE("linear_attention op gradient (x, weight, bias) by finite differences",
          "[gradcheck][ops][attention]") {
  Rng rng(30);
  // B=2, T=5, K=4 features in, heads=2, head_dim=3.
  check_op_gradients(
      [](const auto& in) { return ops::linear_attention(in[0], in[1], in[2], 2); },
      {random_f64({2, 5, 4}, rng), random_f64({3 * 2 * 3, 4}, rng), random_f64({3 * 2 * 3}, rng)},
      rng);
}

TEST_CASE("linear_attention equals attention of linear and keeps what they keep",
          "[ops][attention]") {
  Rng rng(31);
  auto input = [&](const Shape& shape) {
    return Tensor::randn(shape, rng).set_requires_grad(true);
  };
  const std::vector<Tensor> in{input({2, 7, 8}), input({3 * 2 * 4, 8}), input({3 * 2 * 4})};
  const Tensor seed = Tensor::randn({2, 7, 2 * 4}, rng);
  const TapedRun apart = run_taped(
      [](const auto& x) { return ops::attention(ops::linear(x[0], x[1], x[2]), 2); }, in, seed);
  const TapedRun fused =
      run_taped([](const auto& x) { return ops::linear_attention(x[0], x[1], x[2], 2); }, in, seed);
  // The bias gradient is the same column sums of the same dqkv: every result bit for bit.
  check_same_bits(fused, apart);
  CHECK(fused.saved_bytes == apart.saved_bytes);
}

TEST_CASE("linear_class_attention op gradient (x, weight, bias) by finite differences",
          "[gradcheck][ops][attention]") {
  Rng rng(32);
  check_op_gradients(
      [](const auto& in) { return ops::linear_class_attention(in[0], in[1], in[2], 2); },
      {random_f64({2, 5, 4}, rng), random_f64({3 * 2 * 3, 4}, rng), random_f64({3 * 2 * 3}, rng)},
      rng);
}

TEST_CASE("class_attention is the class token of attention, gradients included",
          "[ops][attention]") {
  Rng rng(33);
  const std::vector<Tensor> in{Tensor::randn({2, 7, 3 * 2 * 4}, rng).set_requires_grad(true)};
  const Tensor seed = Tensor::randn({2, 1, 2 * 4}, rng);
  const TapedRun whole = run_taped(
      [](const auto& x) {
        const Tensor out = ops::attention(x[0], 2);
        return ops::reshape(ops::cls_select(out), {out.size(0), 1, out.size(2)});
      },
      in, seed);
  const TapedRun class_token =
      run_taped([](const auto& x) { return ops::class_attention(x[0], 2); }, in, seed);
  // float tensors, summed in another order (the whole attention's GEMMs, the twin's double sums)
  REQUIRE(class_token.results.size() == whole.results.size());
  for (size_t i = 0; i < whole.results.size(); ++i) {  // the output, then the gradient of qkv
    const std::vector<float>&ours = class_token.results[i], &theirs = whole.results[i];
    CHECK(test::relative_error({ours.begin(), ours.end()}, {theirs.begin(), theirs.end()}) < 1e-5);
  }
}

TEST_CASE("layerscale residual op gradient (x, branch, gamma) by finite differences",
          "[gradcheck][ops]") {
  Rng rng(16);
  Tensor keep = Tensor::from_vector<double>({0.0, 1.25, 1.25}, {3});  // sample 0 dropped
  check_op_gradients(
      [keep](const auto& in) { return ops::layerscale_residual(in[0], in[1], in[2], keep); },
      {random_f64({3, 4, 5}, rng), random_f64({3, 4, 5}, rng), random_f64({5}, rng)}, rng);
}

// The fused residual update + LayerNorm has two outputs; each is differentiated alone and both
// together (the block's case: the residual stream goes on, the normed copy feeds a branch).
TEST_CASE("layerscale residual + layernorm op gradients by finite differences",
          "[gradcheck][ops]") {
  Rng rng(24);
  Tensor keep = Tensor::from_vector<double>({1.25, 0.0, 1.25}, {3});  // sample 1 dropped
  using Output = std::function<Tensor(const ops::ResidualAndNorm&)>;
  struct Case {
    const char* name;
    Output output;
    bool norm_differentiated;  // whether the LayerNorm's parameters get a gradient at all
  };
  const std::vector<Case> cases{
      {"both",
       [](const ops::ResidualAndNorm& r) { return ops::add(r.residual, ops::gelu(r.normed)); },
       true},
      {"normed only", [](const ops::ResidualAndNorm& r) { return r.normed; }, true},
      {"residual only", [](const ops::ResidualAndNorm& r) { return r.residual; }, false}};
  for (const Case& c : cases) {
    INFO(c.name);
    check_op_gradients(
        [keep, output = c.output](const auto& in) {
          return output(
              ops::layerscale_residual_layernorm(in[0], in[1], in[2], keep, in[3], in[4], 1e-6));
        },
        {random_f64({3, 4, 5}, rng), random_f64({3, 4, 5}, rng), random_f64({5}, rng),
         random_f64({5}, rng, c.norm_differentiated), random_f64({5}, rng, c.norm_differentiated)},
        rng);
  }
}

TEST_CASE("layerscale residual + layernorm equals the two ops apart, bit for bit on the CPU",
          "[ops]") {
  Rng rng(25);
  const Tensor keep = Tensor::from_vector<float>({1.25f, 0.0f}, {2});
  auto input = [&](const Shape& shape) {
    return Tensor::randn(shape, rng).set_requires_grad(true);
  };
  const std::vector<Tensor> in{input({2, 7, 12}), input({2, 7, 12}), input({12}), input({12}),
                               input({12})};
  const Tensor seed = Tensor::randn({2, 7, 12}, rng);
  std::vector<std::vector<float>> results[2];
  for (int fused = 0; fused < 2; ++fused) {
    Tensor residual, normed;
    if (fused) {
      ops::ResidualAndNorm r =
          ops::layerscale_residual_layernorm(in[0], in[1], in[2], keep, in[3], in[4], 1e-6);
      residual = r.residual;
      normed = r.normed;
    } else {
      residual = ops::layerscale_residual(in[0], in[1], in[2], keep);
      normed = ops::layernorm(residual, in[3], in[4], 1e-6);
    }
    results[fused] = {residual.to_vector<float>(), normed.to_vector<float>()};
    // Both outputs differentiated, with different gradients.
    backward(ops::add(residual, ops::gelu(normed)), seed);
    for (const Tensor& t : in) {
      results[fused].push_back(t.grad().to_vector<float>());
      t.impl().grad.reset();
    }
  }
  for (size_t i = 0; i < results[0].size(); ++i) {
    INFO("result " << i);
    CHECK(results[0][i] == results[1][i]);
  }
}

TEST_CASE("linear_layerscale_residual_layernorm op gradients by finite differences",
          "[gradcheck][ops]") {
  Rng rng(32);
  const Tensor keep = Tensor::from_vector<double>({1.25, 0.0, 1.25}, {3});  // sample 1 dropped
  // Both outputs differentiated (the sum of them), or the residual alone (the LayerNorm's weights
  // then get no gradient), where the linear layer sums its bias gradient itself.
  for (bool both : {true, false}) {
    INFO((both ? "residual and normed" : "residual alone"));
    check_op_gradients(
        [keep, both](const auto& in) {
          const ops::ResidualAndNorm r = ops::linear_layerscale_residual_layernorm(
              in[0], in[1], in[2], in[3], in[4], keep, in[5], in[6], 1e-6);
          return both ? ops::add(r.residual, r.normed) : r.residual;
        },
        {random_f64({3, 2, 5}, rng), random_f64({3, 2, 4}, rng), random_f64({5, 4}, rng),
         random_f64({5}, rng), random_f64({5}, rng), random_f64({5}, rng, both),
         random_f64({5}, rng, both)},
        rng);
  }
}

TEST_CASE("linear_layerscale_residual_layernorm equals the ops apart and keeps what they keep",
          "[ops]") {
  Rng rng(33);
  const Tensor keep = Tensor::from_vector<float>({1.25f, 0.0f}, {2});
  auto input = [&](const Shape& shape) {
    return Tensor::randn(shape, rng).set_requires_grad(true);
  };
  const std::vector<Tensor> in{input({2, 7, 12}), input({2, 7, 6}), input({12, 6}), input({12}),
                               input({12}),       input({12}),      input({12})};
  const Tensor seed = Tensor::randn({2, 7, 12}, rng);
  // Both outputs differentiated, with different gradients.
  const auto both = [](const ops::ResidualAndNorm& r) {
    return ops::add(r.residual, ops::gelu(r.normed));
  };
  const TapedRun apart = run_taped(
      [&](const auto& x) {
        return both(ops::layerscale_residual_layernorm(x[0], ops::linear(x[1], x[2], x[3]), x[4],
                                                       keep, x[5], x[6], 1e-6));
      },
      in, seed);
  const TapedRun fused = run_taped(
      [&](const auto& x) {
        return both(ops::linear_layerscale_residual_layernorm(x[0], x[1], x[2], x[3], x[4], keep,
                                                              x[5], x[6], 1e-6));
      },
      in, seed);
  // The bias gradient is the same column sums of the same dbranch: every result bit for bit.
  check_same_bits(fused, apart);
  CHECK(fused.saved_bytes == apart.saved_bytes);
}

namespace {

// Two selections of a batch of 4 as kept_samples makes them: the branch's (samples 0, 2 and 3:
// sample 1 dropped, sample 3 dropped too but selected, as a rounded-up count selects some), and
// the next branch's (samples 1 and 2).
struct TwoSelections {
  Tensor keep;  // the branch's keep scales, (4)
  ops::BranchSamples samples;
};
TwoSelections two_selections(DType dtype) {
  const Tensor keep = Tensor::from_vector<double>({1.5, 0.0, 1.5, 0.0, 0.0, 1.5, 1.5, 0.0}, {2, 4});
  const std::vector<ops::SampleSelection> branch = ops::kept_samples(keep, 3, 4, Device::cpu());
  const std::vector<ops::SampleSelection> normed = ops::kept_samples(keep, 1, 4, Device::cpu());
  return {keep.slice(0, 1).view({4}).to(dtype), {branch[0], normed[1]}};
}

}  // namespace

TEST_CASE(
    "the residual update + layernorm ops on selected samples: gradients by finite "
    "differences",
    "[gradcheck][ops]") {
  Rng rng(35);
  const TwoSelections s = two_selections(DType::f64);
  REQUIRE(s.samples.branch.count() == 3);
  REQUIRE(s.samples.normed.count() == 2);
  // Both outputs differentiated, or the residual alone (the LayerNorm's weights then get none).
  for (bool both : {true, false}) {
    INFO((both ? "residual and normed" : "residual alone"));
    const auto output = [both](const ops::ResidualAndNorm& r, const ops::SampleSelection& n) {
      // normed holds 2 of the 4 samples: scattered back to add it to the residual.
      return both ? ops::add(r.residual, ops::scatter_samples(r.normed, n)) : r.residual;
    };
    check_op_gradients(
        [&](const auto& in) {
          return output(ops::layerscale_residual_layernorm(in[0], in[1], in[2], s.keep, in[3],
                                                           in[4], 1e-6, s.samples),
                        s.samples.normed);
        },
        {random_f64({4, 2, 5}, rng), random_f64({3, 2, 5}, rng), random_f64({5}, rng),
         random_f64({5}, rng, both), random_f64({5}, rng, both)},
        rng);
    check_op_gradients(
        [&](const auto& in) {
          return output(
              ops::linear_layerscale_residual_layernorm(in[0], in[1], in[2], in[3], in[4], s.keep,
                                                        in[5], in[6], 1e-6, s.samples),
              s.samples.normed);
        },
        {random_f64({4, 2, 5}, rng), random_f64({3, 2, 4}, rng), random_f64({5, 4}, rng),
         random_f64({5}, rng), random_f64({5}, rng), random_f64({5}, rng, both),
         random_f64({5}, rng, both)},
        rng);
  }
}

TEST_CASE(
    "the residual update + layernorm ops on selected samples equal a scatter before and a "
    "gather after, bit for bit on the CPU",
    "[ops]") {
  Rng rng(36);
  const TwoSelections s = two_selections(DType::f32);
  auto input = [&](const Shape& shape) {
    return Tensor::randn(shape, rng).set_requires_grad(true);
  };
  // x, the branch's input h (3 selected samples), proj, gamma, the LayerNorm's weight and bias.
  const std::vector<Tensor> in{input({4, 7, 12}), input({3, 7, 6}), input({12, 6}), input({12}),
                               input({12}),       input({12}),      input({12})};
  const Tensor seed = Tensor::randn({4, 7, 12}, rng);
  const auto both = [&](const ops::ResidualAndNorm& r) {
    return ops::add(r.residual, ops::scatter_samples(ops::gelu(r.normed), s.samples.normed));
  };
  const TapedRun apart = run_taped(
      [&](const auto& x) {
        const Tensor branch = ops::scatter_samples(ops::linear(x[1], x[2], x[3]), s.samples.branch);
        ops::ResidualAndNorm r =
            ops::layerscale_residual_layernorm(x[0], branch, x[4], s.keep, x[5], x[6], 1e-6);
        r.normed = ops::gather_samples(r.normed, s.samples.normed);
        return both(r);
      },
      in, seed);
  const TapedRun selected = run_taped(
      [&](const auto& x) {
        return both(ops::layerscale_residual_layernorm(x[0], ops::linear(x[1], x[2], x[3]), x[4],
                                                       s.keep, x[5], x[6], 1e-6, s.samples));
      },
      in, seed);
  const TapedRun fused = run_taped(
      [&](const auto& x) {
        return both(ops::linear_layerscale_residual_layernorm(x[0], x[1], x[2], x[3], x[4], s.keep,
                                                              x[5], x[6], 1e-6, s.samples));
      },
      in, seed);
  check_same_bits(selected, apart);
  check_same_bits(fused, apart);
  // The update keeps the branch for backward: the selection's 3 samples' rows, not all 4.
  CHECK(apart.saved_bytes - selected.saved_bytes == 7 * 12 * sizeof(float));
}

// With the residual stream alone differentiated, the update's backward still reads the branch's
// gradient through the selection's slots: here samples 1 and 3 of 4, not the first two.
TEST_CASE(
    "the residual update on selected samples, the residual alone differentiated: gradients by "
    "finite differences",
    "[gradcheck][ops]") {
  Rng rng(38);
  const Tensor keep = Tensor::from_vector<double>({0.0, 2.0, 0.0, 2.0}, {1, 4});
  const ops::SampleSelection kept = ops::kept_samples(keep, 1, 4, Device::cpu())[0];
  REQUIRE(kept.index.to_vector<int32_t>() == std::vector<int32_t>{1, 3});
  const Tensor keep_row = keep.view({4});
  check_op_gradients(
      [&](const auto& in) {
        return ops::layerscale_residual_layernorm(in[0], in[1], in[2], keep_row, in[3], in[4], 1e-6,
                                                  {kept, {}})
            .residual;
      },
      {random_f64({4, 2, 5}, rng), random_f64({2, 2, 5}, rng), random_f64({5}, rng),
       random_f64({5}, rng, false), random_f64({5}, rng, false)},
      rng);
}

TEST_CASE("gelu_linear op gradient (x, weight, bias) by finite differences", "[gradcheck][ops]") {
  Rng rng(26);
  check_op_gradients([](const auto& in) { return ops::gelu_linear(in[0], in[1], in[2]); },
                     {random_f64({2, 3, 5}, rng), random_f64({4, 5}, rng), random_f64({4}, rng)},
                     rng);
}

TEST_CASE("gelu_linear equals linear of gelu, bit for bit, keeping less for backward", "[ops]") {
  Rng rng(27);
  const std::vector<Tensor> in = mlp_inputs(rng);
  const Tensor seed = Tensor::randn({2, 7, 6}, rng);
  const TapedRun apart =
      run_taped([](const auto& x) { return ops::linear(ops::gelu(x[0]), x[1], x[2]); }, in, seed);
  const TapedRun fused =
      run_taped([](const auto& x) { return ops::gelu_linear(x[0], x[1], x[2]); }, in, seed);
  check_same_bits(fused, apart);
  // Apart: x (GELU's input) and gelu(x) (linear's), plus the weights; fused: x and the weights.
  CHECK(apart.saved_bytes - fused.saved_bytes == 2 * 7 * 24 * sizeof(float));
}

TEST_CASE("linear_gelu op gradient (x, weight, bias) by finite differences", "[gradcheck][ops]") {
  Rng rng(28);
  check_op_gradients([](const auto& in) { return ops::linear_gelu(in[0], in[1], in[2]); },
                     {random_f64({2, 3, 5}, rng), random_f64({4, 5}, rng), random_f64({4}, rng)},
                     rng);
}

TEST_CASE("linear_gelu equals gelu of linear and keeps what they keep", "[ops]") {
  Rng rng(29);
  const std::vector<Tensor> in = mlp_inputs(rng);
  const Tensor seed = Tensor::randn({2, 7, 6}, rng);
  const TapedRun apart =
      run_taped([](const auto& x) { return ops::gelu(ops::linear(x[0], x[1], x[2])); }, in, seed);
  const TapedRun fused =
      run_taped([](const auto& x) { return ops::linear_gelu(x[0], x[1], x[2]); }, in, seed);
  // The bias gradient is the same column sums of the same GELU dx: every result bit for bit.
  check_same_bits(fused, apart);
  CHECK(fused.saved_bytes == apart.saved_bytes);
}

TEST_CASE("bce_with_logits op gradient on soft targets by finite differences", "[gradcheck][ops]") {
  Rng rng(17);
  Tensor targets = Tensor::from_vector<double>({1, 0, 0.3, 0.7, 0, 1, 0.5, 0.5}, {2, 4});
  check_op_gradients([targets](const auto& in) { return ops::bce_with_logits(in[0], targets); },
                     {random_f64({2, 4}, rng)}, rng);
}

TEST_CASE("softmax_cross_entropy op gradient on soft targets by finite differences",
          "[gradcheck][ops]") {
  Rng rng(18);
  Tensor targets = Tensor::from_vector<double>({0.9, 0.05, 0.05, 0, 0.2, 0.8}, {2, 3});
  check_op_gradients(
      [targets](const auto& in) { return ops::softmax_cross_entropy(in[0], targets); },
      {random_f64({2, 3}, rng)}, rng);
}

TEST_CASE("patch_unfold op gradient by finite differences (size not a multiple of the patch)",
          "[gradcheck][ops]") {
  Rng rng(19);
  check_op_gradients([](const auto& in) { return ops::patch_unfold(in[0], 2); },
                     {random_f64({2, 3, 5, 4}, rng)}, rng);
}

TEST_CASE("pos_embed_cls op gradient (x, pos, cls) by finite differences", "[gradcheck][ops]") {
  Rng rng(20);
  check_op_gradients([](const auto& in) { return ops::pos_embed_cls(in[0], in[1], in[2]); },
                     {random_f64({2, 3, 4}, rng), random_f64({1, 3, 4}, rng),
                      random_f64({1, 1, 4}, rng)},
                     rng);
}

TEST_CASE("cls_select op gradient by finite differences", "[gradcheck][ops]") {
  Rng rng(21);
  check_op_gradients([](const auto& in) { return ops::cls_select(in[0]); },
                     {random_f64({2, 3, 4}, rng)}, rng);
}

TEST_CASE("reshape and add op gradients by finite differences", "[gradcheck][ops]") {
  Rng rng(22);
  check_op_gradients(
      [](const auto& in) { return ops::add(ops::reshape(in[0], {3, 4}), in[1]); },
      {random_f64({2, 6}, rng), random_f64({3, 4}, rng)}, rng);
}

// A pre-norm transformer block with the residual stream read twice (by the norm and by the
// residual update) and a parameter shared by two ops: the tape must add the gradients up.
TEST_CASE("a whole ViT block through the tape matches finite differences", "[gradcheck][ops]") {
  Rng rng(23);
  const int64_t B = 2, Tn = 3, C = 4, heads = 2;
  Tensor keep = Tensor::from_vector<double>({1.0, 2.0}, {B});
  auto block = [&](const std::vector<Tensor>& in) {
    const Tensor &x = in[0], &ln_w = in[1], &ln_b = in[2], &qkv_w = in[3], &qkv_b = in[4];
    const Tensor &proj_w = in[5], &gamma = in[6];
    Tensor h = ops::layernorm(x, ln_w, ln_b, 1e-6);
    h = ops::attention(ops::linear(h, qkv_w, qkv_b), heads);
    h = ops::gelu(ops::linear(h, proj_w, Tensor()));
    Tensor y = ops::layerscale_residual(x, h, gamma, keep);
    return ops::layernorm(y, ln_w, ln_b, 1e-6);  // the same norm parameters used twice
  };
  check_op_gradients(block,
                     {random_f64({B, Tn, C}, rng), random_f64({C}, rng), random_f64({C}, rng),
                      random_f64({3 * C, C}, rng), random_f64({3 * C}, rng),
                      random_f64({C, C}, rng), random_f64({C}, rng)},
                     rng);
}

TEST_CASE("gather_samples and scatter_samples op gradients by finite differences",
          "[gradcheck][ops]") {
  Rng rng(34);
  // Samples 0 and 2 of 4, as drop-path keeps them (engine/ops/samples.h).
  const Tensor keep = Tensor::from_vector<double>({1.5, 0.0, 2.0, 0.0}, {1, 4});
  const ops::SampleSelection kept = ops::kept_samples(keep, 1, 4, Device::cpu())[0];
  REQUIRE(kept.count() == 2);
  check_op_gradients([kept](const auto& in) { return ops::gather_samples(in[0], kept); },
                     {random_f64({4, 3, 2}, rng)}, rng);
  check_op_gradients([kept](const auto& in) { return ops::scatter_samples(in[0], kept); },
                     {random_f64({2, 3, 2}, rng)}, rng);
}

TEST_CASE("kept_samples selects the kept samples of the rows it may, in whole steps", "[ops]") {
  const Tensor keep = Tensor::from_vector<double>(
      {0, 2, 0, 2,   // two of four kept: selected
       2, 2, 2, 2,   // all kept: more than max_count, the whole batch
       0, 0, 0, 0,   // none kept: the first dropped one (its output is zeroed by the scale)
       2, 0, 2, 2},  // three kept: selected
      {4, 4});
  const std::vector<ops::SampleSelection> s = ops::kept_samples(keep, 1, 3, Device::cpu());
  REQUIRE(s.size() == 4);
  CHECK(s[0].index.to_vector<int32_t>() == std::vector<int32_t>{1, 3});
  CHECK(s[0].slot.to_vector<int32_t>() == std::vector<int32_t>{-1, 0, -1, 1});
  CHECK(s[1].empty());
  CHECK(s[2].index.to_vector<int32_t>() == std::vector<int32_t>{0});
  CHECK(s[2].slot.to_vector<int32_t>() == std::vector<int32_t>{0, -1, -1, -1});
  CHECK(s[3].index.to_vector<int32_t>() == std::vector<int32_t>{0, 2, 3});
  CHECK(s[3].slot.to_vector<int32_t>() == std::vector<int32_t>{0, -1, 1, 2});
  // Nothing to select: no upload, every row the whole batch.
  for (const ops::SampleSelection& row : ops::kept_samples(keep, 1, 0, Device::cpu()))
    CHECK(row.empty());
  // In steps of 2 samples: row 0 keeps its two; row 3's three become four, the whole batch, past
  // max_count 3; and in steps of 3, row 0's two become three with the first dropped sample.
  const std::vector<ops::SampleSelection> pairs = ops::kept_samples(keep, 2, 3, Device::cpu());
  CHECK(pairs[0].index.to_vector<int32_t>() == std::vector<int32_t>{1, 3});
  CHECK(pairs[2].index.to_vector<int32_t>() == std::vector<int32_t>{0, 1});
  CHECK(pairs[3].empty());
  const std::vector<ops::SampleSelection> threes = ops::kept_samples(keep, 3, 3, Device::cpu());
  CHECK(threes[0].index.to_vector<int32_t>() == std::vector<int32_t>{0, 1, 3});
  CHECK(threes[0].slot.to_vector<int32_t>() == std::vector<int32_t>{0, 1, -1, 2});
  CHECK(threes[3].index.to_vector<int32_t>() == std::vector<int32_t>{0, 2, 3});
  // Rounded up past the batch, a count is the batch's: 3 kept of 3, in steps of 2.
  CHECK(ops::kept_sample_counts(Tensor::full({1, 3}, 2.0), 2, 3) == std::vector<int64_t>{3});
}

TEST_CASE("gather_samples and scatter_samples of an empty selection are the whole batch", "[ops]") {
  // SampleSelection's empty() stands for the whole batch (kept_samples' rows past max_count).
  const Tensor x = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {3, 2});
  const ops::SampleSelection whole;
  REQUIRE(whole.empty());
  CHECK(ops::gather_samples(x, whole).to_vector<float>() == x.to_vector<float>());
  CHECK(ops::scatter_samples(x, whole).to_vector<float>() == x.to_vector<float>());
}

TEST_CASE("scatter_samples of a selection of no samples gives the whole batch's zeros", "[ops]") {
  // kept_samples never makes one (a branch that keeps nothing runs on its first dropped samples),
  // but a selection may be made by hand: every sample's row is still a row of zeros.
  const ops::SampleSelection none{Tensor::empty({0}, DType::i32),
                                  Tensor::full({3}, -1.0, DType::i32)};
  const Tensor out = ops::scatter_samples(Tensor::empty({0, 2, 4}), none);
  CHECK(out.shape() == Shape{3, 2, 4});
  CHECK(out.to_vector<float>() == std::vector<float>(24, 0.f));
}

TEST_CASE("sample selections are refused for a tensor of another batch or sample count", "[ops]") {
  // Samples 0 and 2 of a batch of 4.
  const Tensor keep = Tensor::from_vector<double>({1.5, 0.0, 2.0, 0.0}, {1, 4});
  const ops::SampleSelection kept = ops::kept_samples(keep, 1, 4, Device::cpu())[0];
  REQUIRE(kept.count() == 2);
  CHECK_THROWS_WITH(ops::gather_samples(Tensor::zeros({3, 2}), kept),
                    Catch::Contains("gather_samples") && Catch::Contains("2 of 4"));
  CHECK_THROWS_WITH(ops::scatter_samples(Tensor::zeros({3, 2}), kept),
                    Catch::Contains("scatter_samples") && Catch::Contains("2 of 4"));
  // The residual update of x (5, T, C) with a branch of 2 samples selected from a batch of 4.
  const Tensor x = Tensor::zeros({5, 1, 3}), c = Tensor::zeros({3});
  CHECK_THROWS_WITH(ops::layerscale_residual_layernorm(x, Tensor::zeros({2, 1, 3}), c,
                                                       Tensor::zeros({5}), c, c, 1e-6, {kept, {}}),
                    Catch::Contains("selection of 2 of 4"));
  CHECK_THROWS_WITH(ops::kept_samples(keep, 0, 4, Device::cpu()), Catch::Contains("granularity"));
}

// An op with one of its inputs alone requiring a gradient (a frozen weight, a fixed input): that
// input's gradient is still right, whichever it is. The fused ops decide from which inputs want a
// gradient what their backward computes (a bias gradient from whichever pass is next to it), and
// whether they are recorded at all.
TEST_CASE("fused op gradients by finite differences, one input at a time requiring grad",
          "[gradcheck][ops]") {
  Rng rng(37);
  const Tensor keep = Tensor::from_vector<double>({1.25, 0.0, 1.25}, {3});  // sample 1 dropped
  struct Case {
    const char* name;
    OpFn op;
    std::vector<Shape> shapes;
  };
  const auto both = [](const ops::ResidualAndNorm& r) { return ops::add(r.residual, r.normed); };
  const std::vector<Case> cases{
      {"linear_gelu",
       [](const auto& in) { return ops::linear_gelu(in[0], in[1], in[2]); },
       {{3, 2, 4}, {5, 4}, {5}}},
      {"gelu_linear",
       [](const auto& in) { return ops::gelu_linear(in[0], in[1], in[2]); },
       {{3, 2, 4}, {5, 4}, {5}}},
      {"linear_attention",
       [](const auto& in) { return ops::linear_attention(in[0], in[1], in[2], 2); },
       {{3, 2, 4}, {3 * 2 * 2, 4}, {3 * 2 * 2}}},
      {"layernorm",
       [](const auto& in) { return ops::layernorm(in[0], in[1], in[2], 1e-6); },
       {{3, 2, 5}, {5}, {5}}},
      {"layerscale_residual",
       [keep](const auto& in) { return ops::layerscale_residual(in[0], in[1], in[2], keep); },
       {{3, 2, 5}, {3, 2, 5}, {5}}},
      {"layerscale_residual_layernorm",
       [keep, both](const auto& in) {
         return both(
             ops::layerscale_residual_layernorm(in[0], in[1], in[2], keep, in[3], in[4], 1e-6));
       },
       {{3, 2, 5}, {3, 2, 5}, {5}, {5}, {5}}},
      {"linear_layerscale_residual_layernorm",
       [keep, both](const auto& in) {
         return both(ops::linear_layerscale_residual_layernorm(in[0], in[1], in[2], in[3], in[4],
                                                               keep, in[5], in[6], 1e-6));
       },
       {{3, 2, 5}, {3, 2, 4}, {5, 4}, {5}, {5}, {5}, {5}}},
      {"linear_layerscale_residual_layernorm, the residual alone",
       [keep](const auto& in) {
         return ops::linear_layerscale_residual_layernorm(in[0], in[1], in[2], in[3], in[4], keep,
                                                          in[5], in[6], 1e-6)
             .residual;
       },
       {{3, 2, 5}, {3, 2, 4}, {5, 4}, {5}, {5}, {5}, {5}}},
      {"pos_embed_cls",
       [](const auto& in) { return ops::pos_embed_cls(in[0], in[1], in[2]); },
       {{3, 2, 4}, {1, 2, 4}, {1, 1, 4}}}};
  for (const Case& c : cases) {
    for (size_t wanted = 0; wanted < c.shapes.size(); ++wanted) {
      INFO(c.name << ", input " << wanted << " alone requiring grad");
      std::vector<Tensor> inputs;
      for (size_t i = 0; i < c.shapes.size(); ++i)
        inputs.push_back(random_f64(c.shapes[i], rng, i == wanted));
      // The residual alone gives the LayerNorm's parameters no gradient.
      if (std::string(c.name).find("alone") != std::string::npos && wanted >= 5) continue;
      check_op_gradients(c.op, inputs, rng);
    }
  }
}
