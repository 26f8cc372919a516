// The optimizers (engine/optimizer.h) and the weight EMA (engine/ema.h):
// - replayed against timm 0.6's Lamb, torch.optim.AdamW, clip_grad_norm_ and timm's ModelEma
//   (tests/data/optim/optimizer.json, written by scripts/optimizer_reference.py);
// - first-step closed forms in double precision for the trust ratio, its zero-norm cases and the
//   two kinds of clipping;
// - the same bits whatever the number of OpenMP threads, and after a save / load of the state;
// - clear errors for bad state, bad gradients and unknown names.
#include <catch2/catch.hpp>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/ema.h"
#include "engine/optimizer.h"
#include "engine/rng.h"
#include "tests/gradcheck.h"

namespace {

using deit::NamedTensors;
using deit::OptimizerOptions;
using deit::Parameter;
using deit::ParameterRegistry;
using deit::Shape;
using deit::Tensor;
using nlohmann::json;
using Vec = std::vector<double>;

json read_reference(const std::string& file) {
  std::ifstream in(std::string(DEIT_SOURCE_DIR) + "/tests/data/optim/" + file);
  REQUIRE(in.good());
  return json::parse(in);
}

Tensor f32_tensor(const json& values, const Shape& shape) {
  return Tensor::from_vector(values.get<std::vector<float>>(), shape);
}

Vec values(const Tensor& t) { return t.to_vector<double>(); }

double distance(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += (a[i] - b[i]) * (a[i] - b[i]);
  return std::sqrt(s);
}

const Tensor& entry(const NamedTensors& named, const std::string& name) {
  for (const auto& [n, t] : named)
    if (n == name) return t;
  FAIL("no entry " << name);
  throw std::logic_error("unreachable");
}

OptimizerOptions options_from(const json& o) {
  OptimizerOptions options;
  options.weight_decay = o["weight_decay"];
  options.beta1 = o["beta1"];
  options.beta2 = o["beta2"];
  options.eps = o["eps"];
  options.max_grad_norm = o["max_grad_norm"];
  options.clip_grad = o["clip_grad"];
  return options;
}

// Runs fn with OpenMP limited to n threads, restoring the previous limit afterwards.
template <typename Fn>
void with_threads(int n, Fn fn) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(n);
  fn();
  omp_set_num_threads(saved);
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

// A small model-like registry in f64 (the closed-form checks) or f32: a decayed weight, a bias and
// a pos_embed without decay, a zero weight with decay, and a zero weight that gets zero gradients.
struct Toy {
  ParameterRegistry params;
  std::vector<Tensor> grads;  // one per parameter, in registration order

  Toy(uint64_t seed, deit::DType dtype, int64_t big = 0) {
    deit::Rng rng(seed);
    const auto add = [&](const std::string& name, const Shape& shape, bool decay, double scale,
                         double grad_scale) {
      params.add(name, Tensor::randn(shape, rng, scale, dtype), decay);
      grads.push_back(Tensor::randn(shape, rng, grad_scale, dtype));
    };
    add("fc.weight", {5, 4}, true, 0.5, 1.0);
    add("fc.bias", {5}, false, 0.5, 1.0);
    add("pos_embed", {1, 3, 4}, false, 0.5, 1.0);
    add("zero.weight", {3, 2}, true, 0.0, 1.0);
    add("dead.weight", {2, 2}, true, 0.0, 0.0);
    if (big > 0) add("big.weight", {big}, true, 0.5, 1.0);
  }

  void set_grads(double scale = 1.0) {
    for (size_t i = 0; i < grads.size(); ++i) {
      Tensor g = grads[i].clone();
      if (g.dtype() == deit::DType::f64)
        for (int64_t k = 0; k < g.numel(); ++k) g.data<double>()[k] *= scale;
      else
        for (int64_t k = 0; k < g.numel(); ++k) g.data<float>()[k] *= static_cast<float>(scale);
      Tensor(params.all()[i].value).set_grad(g);
    }
  }

  double grad_norm() const {
    double s = 0;
    for (const Tensor& g : grads)
      for (double x : values(g)) s += x * x;
    return std::sqrt(s);
  }
};

}  // namespace

TEST_CASE("LAMB and AdamW follow timm 0.6 and torch step by step", "[optim]") {
  // Per step, the change we make to each parameter must match the change torch made: to 1e-5 of
  // its size, plus two float32 roundings of the parameter (before and after, 2^-24 relative
  // each), which against steps of ~1e-3 of the parameter are the larger part. torch also rounds
  // after every operation, we once per stored value; moments agree to a few ulps. Where torch
  // left a parameter in place, ours must not move at all.
  const json ref = read_reference("optimizer.json");
  for (const json& c : ref["cases"]) {
    const std::string case_name = c["name"];
    INFO("case " << case_name);
    ParameterRegistry params;
    std::map<std::string, Vec> torch_before;
    for (const json& p : c["params"]) {
      params.add(p["name"].get<std::string>(), f32_tensor(p["init"], p["shape"].get<Shape>()),
                 p["weight_decay"].get<bool>());
      torch_before[p["name"]] = p["init"].get<Vec>();
    }
    const auto opt = deit::make_optimizer(c["optimizer"].get<std::string>(), params,
                                          options_from(c["options"]));
    int64_t step_number = 0;
    for (const json& step : c["steps"]) {
      ++step_number;
      INFO("step " << step_number);
      params.zero_grad();
      std::map<std::string, Vec> before;
      for (const Parameter& p : params.all()) {
        before[p.name] = values(p.value);
        const json& g = step["grads"][p.name];
        if (!g.is_null()) Tensor(p.value).set_grad(f32_tensor(g, p.value.shape()));
      }
      opt->set_lr(step["lr"].get<double>());
      const double norm = opt->step();
      CHECK(norm == Approx(step["grad_norm"].get<double>()).epsilon(1e-12));
      CHECK(opt->last_grad_norm() == norm);
      const NamedTensors state = opt->state();
      for (const Parameter& p : params.all()) {
        INFO("parameter " << p.name);
        const json& after = step["after"][p.name];
        const Vec torch_after = after["param"].get<Vec>();
        Vec ours = values(p.value), torch_step = torch_after;
        for (size_t k = 0; k < ours.size(); ++k) {
          ours[k] -= before[p.name][k];
          torch_step[k] -= torch_before[p.name][k];
        }
        const Vec zero(ours.size(), 0.0);
        if (torch_step == zero)
          CHECK(ours == zero);
        else
          CHECK(distance(ours, torch_step) <=
                1e-5 * distance(torch_step, zero) + 0x1p-23 * distance(torch_after, zero));
        CHECK(deit::test::relative_error(values(entry(state, p.name + ".exp_avg")),
                                         after["exp_avg"].get<Vec>()) < 1e-6);
        CHECK(deit::test::relative_error(values(entry(state, p.name + ".exp_avg_sq")),
                                         after["exp_avg_sq"].get<Vec>()) < 1e-6);
        torch_before[p.name] = torch_after;
      }
    }
    CHECK(opt->step_count() == step_number);
  }
}

TEST_CASE("LAMB first step in closed form: trust ratio only with decay and 1 at zero norms",
          "[optim]") {
  // Step 1: m_hat = g and v_hat = g^2, so the Adam direction is g / (|g| + eps) elementwise.
  // Gradient norm ~4.5 > max_grad_norm 1, so g is the gradient divided by norm / 1.
  Toy toy(7, deit::DType::f64);
  OptimizerOptions o;
  o.lr = 4e-3;
  o.weight_decay = 0.05;
  o.eps = 1e-8;
  deit::Lamb lamb(toy.params, o);
  std::vector<Vec> before;
  for (const Parameter& p : toy.params.all()) before.push_back(values(p.value));
  toy.set_grads();
  const double norm = toy.grad_norm();
  REQUIRE(norm > 1.0);
  CHECK(lamb.step() == Approx(norm).epsilon(1e-14));

  for (size_t i = 0; i < toy.grads.size(); ++i) {
    const Parameter& p = toy.params.all()[i];
    INFO("parameter " << p.name);
    const Vec g = values(toy.grads[i]), w = before[i], after = values(p.value);
    Vec update(g.size());
    for (size_t k = 0; k < g.size(); ++k) {
      const double gk = g[k] / norm;
      update[k] = gk / (std::abs(gk) + o.eps) + (p.weight_decay ? o.weight_decay * w[k] : 0.0);
    }
    double trust = 1.0;
    if (p.weight_decay) {
      double wn = 0, un = 0;
      for (size_t k = 0; k < g.size(); ++k) wn += w[k] * w[k], un += update[k] * update[k];
      if (wn > 0 && un > 0) trust = std::sqrt(wn / un);
    }
    Vec expected(g.size());
    for (size_t k = 0; k < g.size(); ++k) expected[k] = w[k] - o.lr * trust * update[k];
    CHECK(distance(after, expected) <= 1e-13);
    if (p.name == "fc.weight") {
      // The trust ratio makes the step exactly lr * ||w|| long.
      CHECK(distance(after, w) == Approx(o.lr * distance(w, Vec(w.size(), 0.0))).epsilon(1e-12));
    }
    if (p.name == "fc.bias" || p.name == "pos_embed" || p.name == "zero.weight") {
      // No trust ratio (no decay), or ||w|| = 0: every element moves against its gradient by
      // lr * |g| / (|g| + eps), just under lr. A trust ratio would have scaled that by ~1/2.
      for (size_t k = 0; k < g.size(); ++k) {
        CHECK((after[k] - w[k]) * g[k] < 0);
        CHECK(std::abs(after[k] - w[k]) <= o.lr);
        CHECK(std::abs(after[k] - w[k]) >= 0.99 * o.lr);
      }
    }
    if (p.name == "dead.weight") {
      // ||w|| = ||update|| = 0: the ratio is 1, not NaN, and nothing moves.
      for (double x : after) CHECK(x == 0.0);
    }
  }
}

TEST_CASE("global-norm clipping: LAMB max_grad_norm and --clip-grad as clip_grad_norm_",
          "[optim]") {
  // After one step exp_avg = (1 - beta1) * g * scale: the moments show the scale applied.
  const auto first_moment_scale = [](deit::Optimizer& opt, Toy& toy) {
    const Vec m = values(entry(opt.state(), "fc.weight.exp_avg"));
    const Vec g = values(toy.grads[0]);
    return m[0] / (0.1 * g[0]);
  };
  // Gradients scaled so that the global norm is ~6.5 (clipped by both) or ~0.065 (by neither).
  for (double grad_scale : {1.0, 0.01}) {
    const double norm = Toy(11, deit::DType::f64).grad_norm() * grad_scale;
    INFO("global norm " << norm);
    {
      INFO("LAMB divides by norm / max_grad_norm only above max_grad_norm");
      Toy toy(11, deit::DType::f64);
      OptimizerOptions o;
      o.max_grad_norm = 1.0;
      deit::Lamb lamb(toy.params, o);
      toy.set_grads(grad_scale);
      CHECK(lamb.step() == Approx(norm).epsilon(1e-14));
      const double expected = norm > 1.0 ? 1.0 / norm : 1.0;
      CHECK(first_moment_scale(lamb, toy) == Approx(grad_scale * expected).epsilon(1e-12));
    }
    // --clip-grad scales by max / (norm + 1e-6) when that is below 1, for AdamW and LAMB alike
    // (LAMB's own clip off here, to see clip_grad alone).
    OptimizerOptions o;
    o.clip_grad = 0.5;
    o.max_grad_norm = 0;
    const double coef = std::min(1.0, 0.5 / (norm + 1e-6));
    REQUIRE((norm > 0.5) == (coef < 1.0));
    for (const char* name : {"adamw", "lamb"}) {
      INFO(name << " with --clip-grad 0.5");
      Toy toy(11, deit::DType::f64);
      const auto opt = deit::make_optimizer(name, toy.params, o);
      toy.set_grads(grad_scale);
      CHECK(opt->step() == Approx(norm).epsilon(1e-14));  // the norm before clipping
      CHECK(first_moment_scale(*opt, toy) == Approx(grad_scale * coef).epsilon(1e-12));
    }
  }
}

TEST_CASE("LAMB clips the --clip-grad-clipped gradients, so both clips give max_grad_norm / norm",
          "[optim]") {
  // timm's training loop clips (clip_grad_norm_) before Lamb.step(), which then measures the
  // clipped gradients: with clip_grad 2 above max_grad_norm 1, the first scales the gradients by
  // 2 / (norm + 1e-6), the second by 1 / (their norm) on top, a factor 1 / norm in all. The
  // optimizer.json cases have clip_grad below max_grad_norm, where LAMB's clip never acts.
  Toy toy(11, deit::DType::f64);
  const double norm = toy.grad_norm();
  REQUIRE(norm > 2.0);
  OptimizerOptions o;
  o.clip_grad = 2.0;
  o.max_grad_norm = 1.0;
  deit::Lamb lamb(toy.params, o);
  toy.set_grads();
  CHECK(lamb.step() == Approx(norm).epsilon(1e-14));
  // After one step exp_avg = (1 - beta1) * g * scale.
  const Vec m = values(entry(lamb.state(), "fc.weight.exp_avg"));
  const Vec g = values(toy.grads[0]);
  for (size_t k = 0; k < g.size(); ++k) CHECK(m[k] == Approx(0.1 * g[k] / norm).epsilon(1e-12));
}

TEST_CASE("LAMB's trust ratio is not capped: large weights move by lr * ||w||", "[optim]") {
  // timm 0.6's Lamb (trust_clip off, as DeiT III runs it) takes ||w|| / ||update|| whatever its
  // size. Weights of ~100 against a first-step update of ~1 + wd * 100 per element make it ~20,
  // above the caps other LAMBs use (1 in timm's trust_clip, 10 in NVIDIA's): the step is still
  // exactly lr * ||w|| long.
  ParameterRegistry params;
  deit::Rng rng(41);
  params.add("big.weight", Tensor::randn({6, 5}, rng, 100.0, deit::DType::f64), true);
  const Tensor grad = Tensor::randn({6, 5}, rng, 1.0, deit::DType::f64);
  OptimizerOptions o;
  o.lr = 1e-3;
  o.weight_decay = 0.05;
  o.eps = 1e-8;
  o.max_grad_norm = 0;
  deit::Lamb lamb(params, o);
  const Vec w = values(params.all()[0].value), g = values(grad);
  Tensor(params.all()[0].value).set_grad(grad.clone());
  lamb.step();
  const Vec after = values(params.all()[0].value);
  Vec update(w.size());
  for (size_t k = 0; k < w.size(); ++k)
    update[k] = g[k] / (std::abs(g[k]) + o.eps) + o.weight_decay * w[k];
  const Vec zero(w.size(), 0.0);
  const double trust = distance(w, zero) / distance(update, zero);
  REQUIRE(trust > 10.0);
  CHECK(distance(after, w) == Approx(o.lr * distance(w, zero)).epsilon(1e-12));
  for (size_t k = 0; k < w.size(); ++k)
    CHECK(after[k] == Approx(w[k] - o.lr * trust * update[k]).epsilon(1e-12));
}

TEST_CASE("AdamW counts steps per parameter and LAMB per optimizer", "[optim]") {
  // A parameter without a gradient is skipped. torch's AdamW then has a smaller step count (and
  // bias correction) for it; timm's Lamb advances its group's count anyway.
  for (const char* name : {"adamw", "lamb"}) {
    INFO(name);
    Toy toy(13, deit::DType::f32);
    const auto opt = deit::make_optimizer(name, toy.params, OptimizerOptions{});
    toy.set_grads();
    Tensor(toy.params.all()[1].value).set_grad(Tensor());  // fc.bias: no gradient in step 1
    const Vec bias_before = values(toy.params.all()[1].value);
    opt->step();
    CHECK(values(toy.params.all()[1].value) == bias_before);
    toy.set_grads();
    opt->step();
    const NamedTensors state = opt->state();
    CHECK(entry(state, "step").item() == 2);
    CHECK(entry(state, "fc.weight.step").item() == 2);
    CHECK(entry(state, "fc.bias.step").item() == 1);
    CHECK(opt->step_count() == 2);
  }
}

TEST_CASE("optimizer steps give the same bits for any number of threads", "[optim]") {
  // big.weight spans several reduction blocks, so the norms are split among threads, and is large
  // enough for the updates to run in parallel too (the small tensors stay on one thread).
  const auto run = [](int threads) {
    Toy toy(17, deit::DType::f32, 40009);
    std::vector<Tensor> out;
    with_threads(threads, [&] {
      for (const char* name : {"lamb", "adamw"}) {
        const auto opt = deit::make_optimizer(name, toy.params, OptimizerOptions{});
        for (int s = 0; s < 2; ++s) {
          toy.set_grads(s + 1.0);
          out.push_back(Tensor::from_vector<double>({opt->step()}, {1}));
        }
        for (const auto& [n, t] : opt->state()) out.push_back(t.clone());
      }
      out.push_back(Tensor::from_vector<double>({deit::global_grad_norm(toy.params)}, {1}));
    });
    for (const Parameter& p : toy.params.all()) out.push_back(p.value.clone());
    return out;
  };
  const std::vector<Tensor> one = run(1), four = run(4);
  REQUIRE(one.size() == four.size());
  for (size_t i = 0; i < one.size(); ++i) CHECK(same_bits(one[i], four[i]));
}

TEST_CASE("optimizer state round trip continues bit-identically", "[optim]") {
  for (const char* name : {"lamb", "adamw"}) {
    INFO(name);
    OptimizerOptions o;
    o.lr = 3e-3;
    o.clip_grad = 2.0;
    // Reference: two steps in one go. fc.bias has no gradient in the first step, so the per-
    // parameter step counts differ and must survive the round trip too.
    Toy straight(19, deit::DType::f32);
    const auto a = deit::make_optimizer(name, straight.params, o);
    straight.set_grads(3.0);
    Tensor(straight.params.all()[1].value).set_grad(Tensor());
    a->step();
    straight.set_grads(0.5);
    a->step();

    // One step, save (parameters and state copied out), load into a fresh optimizer, one step.
    Toy first(19, deit::DType::f32);
    const auto b = deit::make_optimizer(name, first.params, o);
    first.set_grads(3.0);
    Tensor(first.params.all()[1].value).set_grad(Tensor());
    b->step();
    NamedTensors saved;
    for (const auto& [n, t] : b->state()) saved.emplace_back(n, t.clone());
    Toy resumed(19, deit::DType::f32);
    for (size_t i = 0; i < resumed.params.size(); ++i)
      Tensor(resumed.params.all()[i].value).copy_from(first.params.all()[i].value);
    const auto c = deit::make_optimizer(name, resumed.params, o);
    c->load_state(saved);
    CHECK(c->step_count() == 1);
    resumed.set_grads(0.5);
    c->step();

    for (size_t i = 0; i < straight.params.size(); ++i)
      CHECK(same_bits(straight.params.all()[i].value, resumed.params.all()[i].value));
    const NamedTensors sa = a->state(), sc = c->state();
    REQUIRE(sa.size() == sc.size());
    for (size_t i = 0; i < sa.size(); ++i) {
      INFO(sa[i].first);
      CHECK(sa[i].first == sc[i].first);
      CHECK(same_bits(sa[i].second, sc[i].second));
    }
  }
}

TEST_CASE("loading optimizer state names the bad entry and changes nothing", "[optim]") {
  Toy toy(23, deit::DType::f32);
  deit::Lamb lamb(toy.params, OptimizerOptions{});
  toy.set_grads();
  lamb.step();
  NamedTensors good;
  for (const auto& [n, t] : lamb.state()) good.emplace_back(n, t.clone());

  Toy other(29, deit::DType::f32);
  deit::Lamb fresh(other.params, OptimizerOptions{});
  const auto rejects = [&](NamedTensors state, const std::string& message) {
    CHECK_THROWS_WITH(fresh.load_state(state), Catch::Contains(message));
    CHECK(fresh.step_count() == 0);
    CHECK(values(entry(fresh.state(), "fc.weight.exp_avg")) == Vec(20, 0.0));
  };
  SECTION("missing") {
    NamedTensors state(good.begin(), good.end() - 1);  // drops dead.weight.step
    rejects(state, "missing entry 'dead.weight.step'");
  }
  SECTION("mis-shaped") {
    NamedTensors state = good;
    state[1].second = Tensor::zeros({4, 5});
    rejects(state, "entry 'fc.weight.exp_avg' is f32 (4, 5)");
  }
  SECTION("wrong dtype") {
    NamedTensors state = good;
    state[0].second = Tensor::zeros({1});
    rejects(state, "entry 'step' is f32 (1)");
  }
  SECTION("unexpected") {
    NamedTensors state = good;
    state.emplace_back("head.weight.exp_avg", Tensor::zeros({2}));
    rejects(state, "unexpected entry 'head.weight.exp_avg'");
  }
  SECTION("duplicate") {
    NamedTensors state = good;
    state.push_back(good[1]);
    rejects(state, "entry 'fc.weight.exp_avg' appears twice");
  }
  SECTION("negative step count") {
    // -1 + 1 = 0 steps at the next update: a bias correction 1 - beta^0 = 0 to divide by.
    for (const char* name : {"step", "fc.weight.step"}) {
      INFO(name);
      NamedTensors state;
      for (const auto& [n, t] : good)
        state.emplace_back(n, n == name ? Tensor::from_vector<int32_t>({-1}, {1}) : t);
      rejects(state, std::string("entry '") + name + "' counts -1 steps");
    }
  }
  SECTION("good state loads") {
    fresh.load_state(good);
    CHECK(fresh.step_count() == 1);
    CHECK(same_bits(entry(fresh.state(), "fc.weight.exp_avg_sq"),
                    entry(good, "fc.weight.exp_avg_sq")));
  }
}

TEST_CASE("state_layout describes state() without an optimizer", "[optim]") {
  Toy toy(31, deit::DType::f64);
  const NamedTensors state = deit::AdamW(toy.params, OptimizerOptions{}).state();
  const std::vector<deit::TensorLayout> layout = deit::Optimizer::state_layout(toy.params);
  REQUIRE(layout.size() == state.size());
  for (size_t i = 0; i < state.size(); ++i) {
    INFO("entry " << i << ", " << state[i].first);
    CHECK(layout[i].name == state[i].first);
    CHECK(layout[i].shape == state[i].second.shape());
    CHECK(layout[i].dtype == state[i].second.dtype());
  }
}

TEST_CASE("optimizer step rejects non-finite and mismatched gradients untouched", "[optim]") {
  Toy toy(31, deit::DType::f32);
  deit::AdamW adamw(toy.params, OptimizerOptions{});
  std::vector<Vec> before;
  for (const Parameter& p : toy.params.all()) before.push_back(values(p.value));
  toy.set_grads();
  SECTION("NaN") {
    toy.grads[2].data<float>()[3] = std::numeric_limits<float>::quiet_NaN();
    toy.set_grads();
    CHECK_THROWS_AS(adamw.step(), deit::NonFiniteGradient);
    CHECK_THROWS_WITH(adamw.step(), Catch::Contains("'pos_embed'"));
  }
  SECTION("wrong shape") {
    Tensor(toy.params.all()[0].value).set_grad(Tensor::zeros({4, 5}));
    CHECK_THROWS_WITH(adamw.step(), Catch::Contains("gradient of 'fc.weight' is f32 (4, 5)"));
  }
  SECTION("a given global norm that is not finite (another rank's NaN)") {
    // Every gradient here is finite: only the norm says one elsewhere was not.
    for (double norm :
         {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
      CHECK_THROWS_AS(adamw.step(norm), deit::NonFiniteGradient);
      CHECK_THROWS_WITH(adamw.step(norm), Catch::Contains("global gradient norm"));
    }
  }
  CHECK(adamw.step_count() == 0);
  for (size_t i = 0; i < before.size(); ++i) CHECK(values(toy.params.all()[i].value) == before[i]);
}

TEST_CASE("make_optimizer knows lamb and adamw and wants CPU float master weights",
          "[optim]") {
  ParameterRegistry params;
  params.add("w", Tensor::zeros({2}), true);
  CHECK(std::string(deit::make_optimizer("lamb", params, {})->name()) == "lamb");
  CHECK(std::string(deit::make_optimizer("adamw", params, {})->name()) == "adamw");
  CHECK_THROWS_WITH(deit::make_optimizer("sgd", params, {}), Catch::Contains("lamb or adamw"));
  ParameterRegistry ints;
  ints.add("labels", Tensor::zeros({2}, deit::DType::i32), false);
  CHECK_THROWS_WITH(deit::AdamW(ints, {}), Catch::Contains("'labels'"));
}

TEST_CASE("weight EMA follows timm ModelEma", "[optim]") {
  const json ref = read_reference("optimizer.json");
  for (const json& c : ref["ema"]) {
    const std::string case_name = c["name"];
    INFO("case " << case_name);
    ParameterRegistry params;
    for (const json& p : c["params"])
      params.add(p["name"].get<std::string>(), f32_tensor(p["init"], p["shape"].get<Shape>()),
                 true);
    deit::WeightEma ema(params, c["decay"].get<double>());
    for (const json& step : c["steps"]) {
      for (const Parameter& p : params.all())
        Tensor(p.value).copy_from(f32_tensor(step["weights"][p.name], p.value.shape()));
      ema.update(params);
      for (const auto& [name, average] : ema.state()) {
        INFO(name);
        // torch rounds decay * ema and (1 - decay) * w to float32 before adding: a few ulps.
        CHECK(deit::test::relative_error(values(average), step["ema"][name].get<Vec>()) < 1e-6);
      }
    }
  }
}

TEST_CASE("weight EMA takes any decay from 0 to 1, 1 keeping the start weights", "[optim]") {
  // Decay 1 is timm's frozen average (the weights it was built from, ever after): allowed, as
  // 0 is (the weights of the last step). Outside [0, 1], or NaN, is no average at all.
  Toy toy(11, deit::DType::f32);
  const Vec start = values(toy.params.all()[0].value);
  deit::WeightEma frozen(toy.params, 1.0);
  Tensor(toy.params.all()[0].value).fill_(3.0);
  frozen.update(toy.params);
  CHECK(values(frozen.state()[0].second) == start);
  for (double bad : {-0.25, 1.5, std::nan("")}) {
    INFO("decay " << bad);
    CHECK_THROWS_WITH(deit::WeightEma(toy.params, bad), Catch::Contains("decay must be in [0, 1]"));
  }
}

TEST_CASE("weight EMA of decay 0 holds the weights of the last update", "[optim]") {
  Toy toy(13, deit::DType::f32);
  deit::WeightEma last(toy.params, 0.0);
  for (size_t i = 0; i < toy.params.size(); ++i) Tensor(toy.params.all()[i].value).fill_(0.75);
  last.update(toy.params);
  for (size_t i = 0; i < toy.params.size(); ++i) {
    INFO(toy.params.all()[i].name);
    CHECK(same_bits(last.state()[i].second, toy.params.all()[i].value));
  }
}

TEST_CASE("weight EMA starts as a copy and round-trips its state and checks its registry",
          "[optim]") {
  Toy toy(37, deit::DType::f32);
  deit::WeightEma ema(toy.params, 0.5);
  for (size_t i = 0; i < toy.params.size(); ++i)
    CHECK(same_bits(ema.state()[i].second, toy.params.all()[i].value));
  const Vec w0 = values(toy.params.all()[0].value);
  Tensor(toy.params.all()[0].value).fill_(1.0);
  ema.update(toy.params);
  const Vec avg = values(ema.state()[0].second);
  for (size_t k = 0; k < w0.size(); ++k)
    CHECK(avg[k] == Approx(0.5 * w0[k] + 0.5).epsilon(1e-6));

  Toy same(37, deit::DType::f32);
  deit::WeightEma restored(same.params, 0.5);
  NamedTensors saved;
  for (const auto& [n, t] : ema.state()) saved.emplace_back(n, t.clone());
  restored.load_state(saved);
  CHECK(same_bits(restored.state()[0].second, ema.state()[0].second));
  saved.pop_back();
  CHECK_THROWS_WITH(restored.load_state(saved), Catch::Contains("missing entry 'dead.weight'"));

  ParameterRegistry other;
  other.add("fc.weight", Tensor::zeros({5, 4}), true);
  CHECK_THROWS_WITH(ema.update(other), Catch::Contains("built over 5 parameters"));
  // As many parameters, the first named or shaped otherwise: another model's, not averaged into
  // this one's (nor read past its end).
  const std::vector<std::pair<std::string, Shape>> firsts{{"fc.renamed", {5, 4}},
                                                          {"fc.weight", {4, 5}}};
  for (const auto& [name, shape] : firsts) {
    INFO(name);
    ParameterRegistry swapped;
    swapped.add(name, Tensor::zeros(shape), true);
    for (size_t i = 1; i < toy.params.size(); ++i)
      swapped.add(toy.params.all()[i].name, toy.params.all()[i].value.clone(), true);
    CHECK_THROWS_WITH(ema.update(swapped), Catch::Contains("the EMA holds 'fc.weight'"));
  }
}
