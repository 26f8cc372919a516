// The whole model against PyTorch: a tiny DeiT III ViT with random (order-one) weights, a batch of
// images and soft targets, and PyTorch's float64 logits, BCE loss and parameter gradients, all
// written by scripts/torch_reference.py into tests/data/parity/tiny_vit.safetensors. Our fp32 CPU
// forward + bce_with_logits + backward must match every one to a relative error of 1e-4.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <string>

#include <nlohmann/json.hpp>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "model/checkpoint.h"

using namespace deit;
using namespace deit::model;

namespace {

const std::string kReference =
    std::string(DEIT_SOURCE_DIR) + "/tests/data/parity/tiny_vit.safetensors";

// ||ours - reference|| / ||reference||, as DESIGN.md measures tensors.
double relative_error(const Tensor& ours, const Tensor& reference) {
  const std::vector<double> a = ours.to_vector<double>(), b = reference.to_vector<double>();
  double diff = 0, norm = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff += (a[i] - b[i]) * (a[i] - b[i]);
    norm += b[i] * b[i];
  }
  return std::sqrt(diff / norm);
}

const Tensor& get(const SafetensorsContents& file, const std::string& name) {
  const Tensor* t = find_tensor(file.tensors, name);
  if (!t) throw std::runtime_error(kReference + " has no tensor '" + name + "'");
  return *t;
}

}  // namespace

TEST_CASE("the ViT matches PyTorch: logits, BCE loss and every gradient", "[parity]") {
  const SafetensorsContents ref = read_safetensors(kReference);
  const auto config_json = nlohmann::json::parse(ref.metadata.at("config"));
  ViTConfig c;
  c.name = "parity tiny";
  c.patch = config_json.at("patch");
  c.dim = config_json.at("dim");
  c.depth = config_json.at("depth");
  c.heads = config_json.at("heads");
  c.num_classes = config_json.at("num_classes");
  c.input_size = config_json.at("input_size");

  VisionTransformer vit(c);
  NamedTensors weights;
  const std::string prefix = "param.";
  for (const auto& [name, t] : ref.tensors)
    if (name.compare(0, prefix.size(), prefix) == 0)
      weights.emplace_back(name.substr(prefix.size()), t);
  load_parameters(vit, weights, "'" + kReference + "'");

  const Tensor logits = vit.forward(get(ref, "input.images"));
  const Tensor loss = ops::bce_with_logits(logits, get(ref, "input.targets"));
  backward(loss);

  CHECK(relative_error(logits, get(ref, "expected.logits")) <= 1e-4);
  CHECK(relative_error(loss, get(ref, "expected.loss")) <= 1e-4);
  size_t checked = 0;
  for (const Parameter& p : vit.parameters().all()) {
    INFO(p.name);
    const Tensor& expected = get(ref, "grad." + p.name);
    REQUIRE(p.value.grad().defined());
    REQUIRE(p.value.grad().shape() == expected.shape());
    const double err = relative_error(p.value.grad(), expected);
    INFO("relative error " << err);
    CHECK(err <= 1e-4);
    ++checked;
  }
  CHECK(checked == weights.size());
  // The reference's gammas are of order one, not the 1e-4 initialisation that would make every
  // block nearly the identity: the comparison above tests the blocks too.
  for (const std::string gamma : {"blocks.0.ls1.gamma", "blocks.1.ls2.gamma"}) {
    double largest = 0;
    for (double g : get(ref, "param." + gamma).to_vector<double>())
      largest = std::max(largest, std::abs(g));
    CHECK(largest > 0.1);
  }
}
