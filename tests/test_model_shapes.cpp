// The model's size contract (RECIPE.md section 1) and the engine at the shapes of every preset.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "model/cost.h"
#include "model/vit.h"
#include "tests/gradcheck.h"

using namespace deit;
using namespace deit::model;

TEST_CASE("parameter counts of the presets are exactly timm's", "[model]") {
  CHECK(parameter_count(preset("deit3_small")) == 22059496);
  CHECK(parameter_count(preset("deit3_base")) == 86585320);
  CHECK(parameter_count(preset("deit3_large")) == 304374760);
  CHECK(parameter_count(preset("deit3_huge")) == 632126440);
}

TEST_CASE("forward GMACs at 224 match RECIPE.md to its printed precision", "[model]") {
  const std::pair<const char*, double> published[] = {
      {"deit3_tiny", 1.3},  {"deit3_small", 4.6},  {"deit3_medium", 8.0}, {"deit3_base", 17.5},
      {"deit3_large", 61.6}, {"deit3_huge", 167.4}, {"deit3_huge52", 272}};
  for (const auto& [name, gmacs] : published) {
    INFO(name);
    // Within 1% or within the rounding of a one-decimal figure (tiny: 1.25 is printed 1.3).
    CHECK(forward_macs(preset(name)) / 1e9 == Approx(gmacs).epsilon(0.01).margin(0.05));
  }
}

TEST_CASE("ViT-H at 160 px sees an 11 x 11 patch grid", "[model]") {
  ViTConfig c = preset("deit3_huge");
  c.input_size = 160;
  CHECK(c.grid() == 11);
  CHECK(c.tokens() == 122);
}

TEST_CASE("configuration errors say what is wrong", "[model]") {
  CHECK_THROWS_WITH(preset("deit3_gigantic"), Catch::Contains("deit3_gigantic") &&
                                                  Catch::Contains("deit3_small"));
  // The reference code's and timm's names for a preset are answered with deit's.
  CHECK_THROWS_WITH(preset("deit_base_patch16_LS"),
                    Catch::Contains("'deit_base_patch16_LS': deit calls it deit3_base ("));
  CHECK_THROWS_WITH(preset("deit_huge_patch14_52_LS"), Catch::Contains("calls it deit3_huge52 ("));
  CHECK_THROWS_WITH(preset("deit3_large_patch16_384.fb_in22k_ft_in1k"),
                    Catch::Contains("calls it deit3_large with --input-size 384 ("));
  CHECK_THROWS_WITH(preset("deit3_huge_patch14_224"),
                    Catch::Contains("calls it deit3_huge with --input-size 224"));
  CHECK_THROWS_WITH(preset("deit3_small_patch16_384_in21ft1k"),  // timm 0.6's names
                    Catch::Contains("calls it deit3_small with --input-size 384"));
  // DeiT I (no LayerScale) and a patch size no preset has get no such answer.
  for (const char* other : {"deit_small_patch16_224", "deit3_small_patch14_224",
                            "deit_huge_patch16_LS", "deit3_base_patch16_52_224"})
    CHECK_THROWS_WITH(preset(other), !Catch::Contains("calls it"));
  ViTConfig c = preset("deit3_small");
  c.heads = 5;
  CHECK_THROWS_WITH(c.validate(), Catch::Contains("divisible"));
  c = preset("deit3_small");
  c.input_size = 8;
  CHECK_THROWS_WITH(c.validate(), Catch::Contains("smaller than one"));
  // Sizes whose parameter counts or FLOPs would overflow int64 are refused, naming the field;
  // so is what only a crafted checkpoint could hold.
  for (const auto& [field, value] : std::vector<std::pair<std::string, int64_t>>{
           {"depth", 100000000000}, {"dim", int64_t{1} << 40}, {"patch size", 4096}}) {
    INFO(field);
    c = preset("deit3_small");
    if (field == "depth") c.depth = value;
    if (field == "dim") c.dim = c.heads = value;
    if (field == "patch size") c.patch = c.input_size = value;
    CHECK_THROWS_WITH(c.validate(), Catch::Contains(field + " must be at most"));
  }
  // The model and the cost model check a configuration before they derive any size from it: a
  // patch of 0 divided by zero in the parameter table (a crash, not this error), and a depth of
  // 10^11 made a table of 1.6 * 10^12 entries first.
  c = preset("deit3_small");
  c.patch = 0;
  CHECK_THROWS_WITH(VisionTransformer(c), Catch::Contains("patch size must be at least 1"));
  CHECK_THROWS_WITH(parameter_count(c), Catch::Contains("patch size must be at least 1"));
  CHECK_THROWS_WITH(forward_macs(c), Catch::Contains("patch size must be at least 1"));
  CHECK_THROWS_WITH(activation_bytes_per_image(c, 2, 4),
                    Catch::Contains("patch size must be at least 1"));
  c = preset("deit3_huge52");
  c.input_size = 16384;
  CHECK_THROWS_WITH(c.validate(), Catch::Contains("1e15 multiply-adds"));
  c = preset("deit3_small");
  c.mlp_ratio = 0;
  CHECK_THROWS_WITH(c.validate(), Catch::Contains("mlp_ratio must be at least 1"));
  c = preset("deit3_small");
  c.layernorm_eps = std::nan("");
  CHECK_THROWS_WITH(c.validate(), Catch::Contains("layernorm_eps"));
  c.layernorm_eps = 0;
  CHECK_THROWS_WITH(c.validate(), Catch::Contains("layernorm_eps must be positive"));
  c = preset("deit3_small");
  c.layerscale_init = HUGE_VAL;
  CHECK_THROWS_WITH(c.validate(), Catch::Contains("layerscale_init must be finite"));
  c = preset("deit3_small");
  c.in_channels = 0;
  CHECK_THROWS_WITH(c.validate(), Catch::Contains("in_channels must be at least 1"));
  c = preset("deit3_small");
  c.heads = 0;  // before dim % heads divides by it
  CHECK_THROWS_WITH(c.validate(), Catch::Contains("heads must be at least 1"));
  for (const std::string& name : preset_names()) CHECK_NOTHROW(preset(name).validate());
  // The GPU's attention kernels take head dims 32, 64, 80 and 128: every preset fits, a custom
  // 384 / 4 = 96 does not, and says so before any memory is taken.
  for (const std::string& name : preset_names()) CHECK_NOTHROW(preset(name).validate_for_cuda());
  c = preset("deit3_small");
  c.heads = 4;
  CHECK_NOTHROW(c.validate());
  CHECK_THROWS_WITH(c.validate_for_cuda(), Catch::Contains("head dim 96"));
  // Nor do rows wider than the LayerNorm kernels hold (a 16384-wide model of 128 heads of 128).
  c = preset("deit3_small");
  c.dim = 16384;
  c.heads = 128;
  CHECK_NOTHROW(c.validate());
  CHECK_THROWS_WITH(c.validate_for_cuda(), Catch::Contains("dim 16384 is wider"));
}

TEST_CASE("each bound of a configuration takes its edge and refuses one past it", "[model]") {
  // Lower bounds: a model of no block or of no class is no model.
  ViTConfig c = preset("deit3_small");
  c.depth = 0;
  CHECK_THROWS_WITH(c.validate(), Catch::Contains("depth must be at least 1, got 0"));
  c = preset("deit3_small");
  c.num_classes = 0;
  CHECK_THROWS_WITH(c.validate(), Catch::Contains("num-classes must be at least 1, got 0"));
  // One patch as large as the image: the class token and one patch token.
  c = preset("deit3_small");
  c.input_size = c.patch;
  CHECK_NOTHROW(c.validate());
  CHECK(c.tokens() == 2);
  // Upper bounds, at the edge and one past it.
  c = preset("deit3_small");
  c.in_channels = 64;
  CHECK_NOTHROW(c.validate());
  c.in_channels = 65;
  CHECK_THROWS_WITH(c.validate(), Catch::Contains("in_channels must be at most 64, got 65"));
  c = preset("deit3_small");
  c.mlp_ratio = 64;
  CHECK_NOTHROW(c.validate());
  c.mlp_ratio = 65;
  CHECK_THROWS_WITH(c.validate(), Catch::Contains("mlp_ratio must be at most 64, got 65"));
  c = preset("deit3_small");
  c.heads = 1;
  c.dim = 65536;
  CHECK_NOTHROW(c.validate());
  c.dim = 65537;
  CHECK_THROWS_WITH(c.validate(), Catch::Contains("dim must be at most 65536, got 65537"));
  c = preset("deit3_small");
  c.layernorm_eps = HUGE_VAL;
  CHECK_THROWS_WITH(c.validate(), Catch::Contains("layernorm_eps must be positive and finite"));
  // The CUDA LayerNorm kernels take rows up to 8192 wide (64 heads of 128).
  c = preset("deit3_small");
  c.dim = 8192;
  c.heads = 64;
  CHECK_NOTHROW(c.validate_for_cuda());
}

TEST_CASE("the limit of 1e15 multiply-adds per image counts the blocks' MACs by hand", "[model]") {
  // GEMMs: 2 tokens (the class token and one 1-pixel patch) 65536 wide, an MLP 64 times wider:
  // (4 + 2 x 64) x 2 x 65536^2 + 2 x 2^2 x 65536 = 1,133,871,890,432 MACs a block, so 881 blocks
  // (9.9894e14) are taken and 882 (1.00008e15) are not.
  ViTConfig c = preset("deit3_small");
  c.patch = c.input_size = 1;
  c.dim = 65536;
  c.heads = 1;
  c.mlp_ratio = 64;
  c.depth = 881;
  CHECK_NOTHROW(c.validate());
  c.depth = 882;
  CHECK_THROWS_WITH(c.validate(), Catch::Contains("1e15 multiply-adds"));
  // Attention: one channel over T = 4728^2 + 1 tokens makes 6 T + 2 T^2 = 9.99401e14 MACs; with
  // 4729^2 + 1 tokens, 1.000247e15.
  c = preset("deit3_small");
  c.patch = 1;
  c.dim = c.heads = c.mlp_ratio = c.depth = 1;
  c.input_size = 4728;
  CHECK_NOTHROW(c.validate());
  c.input_size = 4729;
  CHECK_THROWS_WITH(c.validate(), Catch::Contains("1e15 multiply-adds"));
}

TEST_CASE("parameter table: timm names, decay only on weight matrices", "[model]") {
  const ViTConfig c = preset("deit3_small");
  VisionTransformer vit(c);
  const auto& params = vit.parameters();
  CHECK(params.get("pos_embed").shape() == Shape{1, 196, 384});
  CHECK(params.get("patch_embed.proj.weight").shape() == Shape{384, 3, 16, 16});
  CHECK(params.get("blocks.11.attn.qkv.weight").shape() == Shape{1152, 384});
  CHECK(params.get("blocks.0.ls2.gamma").shape() == Shape{384});
  CHECK(params.get("head.weight").shape() == Shape{1000, 384});
  for (const auto& p : params.all()) {
    INFO(p.name);
    const bool matrix = p.value.dim() >= 2 && p.name != "pos_embed" && p.name != "cls_token";
    CHECK(p.weight_decay == matrix);
  }
  // In the order of timm's state_dict (a module's own parameters before its children's, each
  // Block's in its forward order), which is also the order the parameters are drawn in.
  std::vector<std::string> names;
  for (const auto& p : params.all()) names.push_back(p.name);
  REQUIRE(names.size() == 4 + 12 * 14 + 4);
  const std::vector<std::string> first = {"cls_token",
                                          "pos_embed",
                                          "patch_embed.proj.weight",
                                          "patch_embed.proj.bias",
                                          "blocks.0.norm1.weight",
                                          "blocks.0.norm1.bias",
                                          "blocks.0.attn.qkv.weight",
                                          "blocks.0.attn.qkv.bias",
                                          "blocks.0.attn.proj.weight",
                                          "blocks.0.attn.proj.bias",
                                          "blocks.0.ls1.gamma",
                                          "blocks.0.norm2.weight",
                                          "blocks.0.norm2.bias",
                                          "blocks.0.mlp.fc1.weight",
                                          "blocks.0.mlp.fc1.bias",
                                          "blocks.0.mlp.fc2.weight",
                                          "blocks.0.mlp.fc2.bias",
                                          "blocks.0.ls2.gamma",
                                          "blocks.1.norm1.weight"};
  CHECK(std::vector<std::string>(names.begin(), names.begin() + 19) == first);
  const std::vector<std::string> last = {"blocks.11.ls2.gamma", "norm.weight", "norm.bias",
                                         "head.weight", "head.bias"};
  CHECK(std::vector<std::string>(names.end() - 5, names.end()) == last);
}

TEST_CASE("every preset's LayerNorms use timm's eps of 1e-6", "[model]") {
  // timm's deit3 models build every norm as partial(nn.LayerNorm, eps=1e-6), not torch's default
  // 1e-5. On order-one activations the two differ by ~4e-6 relative, far inside the parity test's
  // 1e-4, so only the setting itself shows which one a model runs with.
  CHECK(ViTConfig{}.layernorm_eps == 1e-6);
  for (const std::string& name : preset_names()) {
    INFO(name);
    CHECK(preset(name).layernorm_eps == 1e-6);
  }
}

TEST_CASE("initialisation follows the recipe", "[model]") {
  ViTConfig c = preset("deit3_tiny");
  c.depth = 2;
  VisionTransformer vit(c);
  Rng rng(3);
  vit.initialize(rng);
  const auto& p = vit.parameters();
  for (float v : p.get("blocks.1.ls1.gamma").to_vector<float>()) CHECK(v == 1e-4f);
  for (float v : p.get("blocks.0.norm2.weight").to_vector<float>()) CHECK(v == 1.0f);
  for (float v : p.get("blocks.0.mlp.fc1.bias").to_vector<float>()) CHECK(v == 0.0f);
  const std::vector<float> w = p.get("blocks.0.mlp.fc1.weight").to_vector<float>();
  double sum2 = 0;
  for (float v : w) sum2 += double(v) * v;
  CHECK(std::sqrt(sum2 / w.size()) == Approx(0.02).epsilon(0.02));
  // The class token and the position embedding are drawn as the weights are (not zeros).
  for (const char* name : {"cls_token", "pos_embed"}) {
    INFO(name);
    double square = 0;
    const std::vector<float> v = p.get(name).to_vector<float>();
    for (float e : v) square += double(e) * e;
    CHECK(std::sqrt(square / v.size()) == Approx(0.02).epsilon(0.25));
  }
  // The patch projection, a Conv2d the reference leaves at PyTorch's default init: weight and
  // bias uniform within 1/sqrt(fan_in), fan_in = 3 * 16 * 16.
  const double bound = 1.0 / std::sqrt(3.0 * 16 * 16);
  for (const char* name : {"patch_embed.proj.weight", "patch_embed.proj.bias"}) {
    INFO(name);
    const std::vector<float> u = p.get(name).to_vector<float>();
    double lo = 1, hi = -1, square = 0;
    for (float v : u) {
      lo = std::min<double>(lo, v);
      hi = std::max<double>(hi, v);
      square += double(v) * v;
    }
    CHECK(lo >= -bound);
    CHECK(hi <= bound);
    // A uniform draw's root mean square is bound / sqrt(3).
    CHECK(std::sqrt(square / u.size()) == Approx(bound / std::sqrt(3.0)).epsilon(0.1));
  }
  // A LayerScale init other than the recipe's is the one the gammas get.
  c.layerscale_init = 0.25;
  VisionTransformer custom(c);
  custom.initialize(rng);
  for (float v : custom.parameters().get("blocks.1.ls2.gamma").to_vector<float>())
    CHECK(v == 0.25f);
}

TEST_CASE("forward MACs and activation bytes of a small model, counted by hand", "[model]") {
  ViTConfig c;
  c.patch = 4;
  c.dim = 8;
  c.depth = 1;
  c.heads = 2;
  c.num_classes = 3;
  c.input_size = 8;                                 // 2 x 2 patches, T = 5 tokens; hidden 32
  const int64_t patch_embed = 4 * (3 * 4 * 4) * 8;  // 1536
  const int64_t block = 5 * 8 * 24 + 2 * 5 * 5 * 8 + 5 * 8 * 8 + 2 * 5 * 8 * 32;  // 4240
  const int64_t head = 8 * 3;
  CHECK(forward_macs(c) == patch_embed + block + head);
  // In units of the activation type (a) and of fp32 (f): the patches (4 x 48 a); the one block,
  // the last, with the class token alone past qkv ((4 x 5 + 12) x 8 a, its residual-stream inputs
  // (5 + 1) x 8 f, statistics (2 x 5 + 4 + 2) f); the final norm's (8 + 2) f and the head's 8 a.
  const int64_t a = 2, f = 4;  // bf16 activations, as on CUDA
  CHECK(activation_bytes_per_image(c, a, f) == (192 + 256 + 8) * a + (48 + 16 + 10) * f);
}

TEST_CASE("every preset's heads are 64 wide, ViT-H's 80", "[model][presets]") {
  for (const std::string& name : preset_names()) {
    INFO(name);
    const ViTConfig c = preset(name);
    CHECK(c.head_dim() * c.heads == c.dim);
    CHECK(c.head_dim() == (name.rfind("deit3_huge", 0) == 0 ? 80 : 64));
  }
}

TEST_CASE("preset_of names the preset a configuration was made from", "[model][presets]") {
  for (const std::string& name : preset_names()) {
    INFO(name);
    ViTConfig c = preset(name);
    CHECK(preset_of(c) == name);
    c.name += " (custom)";  // changed sizes keep the preset's name in front
    CHECK(preset_of(c) == name);
  }
  CHECK(preset_of(ViTConfig{}) == "");
  ViTConfig c;
  c.name = "deit3_smaller";
  CHECK(preset_of(c) == "");
}

// Every preset at its real patch size, width and head count (every tensor shape the preset has),
// with two blocks instead of all of them and a two-by-two patch grid so it runs in seconds:
// the forward records exactly the activation memory cost.h promises per image (weights cancel out
// of the difference between batch 2 and batch 1), and backward gives every parameter a gradient of
// its own shape.
TEST_CASE("every preset runs forward and backward through the tape", "[model][presets]") {
  for (const std::string& name : preset_names()) {
    INFO(name);
    ViTConfig c = preset(name);
    c.input_size = 2 * c.patch;
    c.depth = 2;
    VisionTransformer vit(c);
    for (const auto& p : vit.parameters().all()) Tensor(p.value).fill_(0.01);
    Rng rng(1);
    // Without drop-path draws: the branches run on the whole batch, as cost.h counts.
    auto saved_bytes = [&](int64_t B) {
      Tensor logits = vit.forward(Tensor::randn({B, 3, c.input_size, c.input_size}, rng));
      REQUIRE(logits.shape() == Shape{B, c.num_classes});
      const size_t bytes = tape_saved_bytes();
      clear_tape();
      return static_cast<int64_t>(bytes);
    };
    CHECK(saved_bytes(2) - saved_bytes(1) == activation_bytes_per_image(c, 4, 4));
    vit.set_recompute_gelu(true);
    CHECK(saved_bytes(2) - saved_bytes(1) == activation_bytes_per_image(c, 4, 4, {true, false}));
    vit.set_recompute_gelu(false);
    vit.set_grad_checkpointing(true);
    CHECK(saved_bytes(2) - saved_bytes(1) == activation_bytes_per_image(c, 4, 4, {false, true}));
    vit.set_grad_checkpointing(false);

    Tensor logits = vit.forward(Tensor::randn({2, 3, c.input_size, c.input_size}, rng));
    backward(ops::bce_with_logits(logits, Tensor::zeros(logits.shape())));
    for (const auto& p : vit.parameters().all()) {
      INFO(p.name);
      REQUIRE(p.value.grad().defined());
      CHECK(p.value.grad().shape() == p.value.shape());
    }
  }
}

namespace {

// deit3_tiny's blocks, 3 of them, on 32 x 32 images of 5 classes, initialised from `seed`, with
// LayerScale at 0.5 so that every block changes the logits.
VisionTransformer small_model(uint64_t seed) {
  ViTConfig c = preset("deit3_tiny");
  c.input_size = 32;
  c.depth = 3;
  c.num_classes = 5;
  VisionTransformer vit(c);
  Rng init(seed);
  vit.initialize(init);
  for (const auto& p : vit.parameters().all())
    if (p.name.find("gamma") != std::string::npos) Tensor(p.value).fill_(0.5);
  return vit;
}

}  // namespace

// Checkpointed blocks run the same ops twice on the same inputs (the drop-path keep scales are
// drawn before the blocks and passed in), so nothing may change, bit for bit.
TEST_CASE("grad checkpointing changes neither the logits nor any gradient", "[model][recompute]") {
  VisionTransformer vit = small_model(7);
  Rng data(8);
  const Tensor images = Tensor::randn({3, 3, 32, 32}, data);
  const Tensor targets = Tensor::full({3, 5}, 0.25);
  std::vector<float> logits[2];
  std::vector<std::vector<float>> grads[2];
  for (int checkpointing = 0; checkpointing < 2; ++checkpointing) {
    vit.set_grad_checkpointing(checkpointing == 1);
    vit.parameters().zero_grad();
    Rng drop_path(9);
    const Tensor out = vit.forward(images, 0.3, &drop_path);
    backward(ops::bce_with_logits(out, targets));
    logits[checkpointing] = out.to_vector<float>();
    for (const auto& p : vit.parameters().all())
      grads[checkpointing].push_back(p.value.grad().to_vector<float>());
  }
  CHECK(logits[1] == logits[0]);
  const auto& params = vit.parameters().all();
  for (size_t i = 0; i < params.size(); ++i) {
    INFO(params[i].name);
    CHECK(grads[1][i] == grads[0][i]);
  }
}

// A branch that drop-path drops for many samples runs on the kept ones alone (the LayerNorm before
// it writes their rows, the residual update after it reads them): the logits and every gradient
// must be those of the branch over the whole batch with the same keep scales, while the tape keeps
// less; with GELU recomputed, and with every block checkpointed (its forward run again in
// backward on the same selections). At rate 0.9 most branches keep no sample of the 6 and run on
// one dropped sample: their parameters' gradients must still be there, as zeros.
TEST_CASE("branches run on their kept samples alone change neither the logits nor any gradient",
          "[model]") {
  VisionTransformer vit = small_model(17);
  Rng data(18);
  const int64_t B = 6;
  const Tensor images = Tensor::randn({B, 3, 32, 32}, data);
  const Tensor targets = Tensor::full({B, 5}, 0.25);
  const std::tuple<double, bool, bool> variants[] = {
      {0.5, false, false}, {0.5, true, false}, {0.5, false, true}, {0.9, false, false}};
  for (const auto& [rate, recompute_gelu, checkpointing] : variants) {
    INFO("rate " << rate << ", recompute GELU " << recompute_gelu << ", blocks checkpointed "
                 << checkpointing);
    vit.set_recompute_gelu(recompute_gelu);
    vit.set_grad_checkpointing(checkpointing);
    std::vector<float> logits[2];
    std::vector<std::vector<float>> grads[2];
    size_t saved[2];
    for (int selected = 0; selected < 2; ++selected) {
      vit.parameters().zero_grad();
      Rng drop_path(19);  // the same draws both times
      const Tensor out =
          selected ? vit.forward(images, rate, &drop_path)
                   : vit.forward(images, vit.draw_keep_scales(B, rate, drop_path, DType::f32));
      saved[selected] = tape_saved_bytes();
      backward(ops::bce_with_logits(out, targets));
      logits[selected] = out.to_vector<float>();
      for (const auto& p : vit.parameters().all())
        grads[selected].push_back(p.value.grad().to_vector<float>());
    }
    CHECK(saved[1] < saved[0]);  // some branch did run on fewer samples
    // Relative to b's norm (a parameter of a branch dropped for every sample has none).
    const auto close = [](const std::vector<float>& a, const std::vector<float>& b) {
      double diff = 0, norm = 0;
      for (size_t i = 0; i < a.size(); ++i) {
        diff += (double{a[i]} - b[i]) * (double{a[i]} - b[i]);
        norm += double{b[i]} * b[i];
      }
      return a.size() == b.size() && std::sqrt(diff) <= 1e-5 * std::sqrt(norm);
    };
    CHECK(close(logits[1], logits[0]));
    const auto& params = vit.parameters().all();
    for (size_t i = 0; i < params.size(); ++i) {
      INFO(params[i].name);
      CHECK(close(grads[1][i], grads[0][i]));
    }
  }
}

TEST_CASE("branch_samples says how many samples each branch of forward_drawn runs on", "[model]") {
  VisionTransformer vit = small_model(23);
  const int64_t B = 6, branches = 2 * vit.config().depth;
  Rng drop_path(24);
  const Tensor drawn = vit.draw_keep_scales(B, 0.5, drop_path, DType::f32);
  const std::vector<float> scales = drawn.to_vector<float>();
  const std::vector<int64_t> counts = vit.branch_samples(drawn);
  REQUIRE(static_cast<int64_t>(counts.size()) == branches);
  bool some_selected = false;
  for (int64_t i = 0; i < branches; ++i) {
    int64_t kept = 0;
    for (int64_t b = 0; b < B; ++b) kept += scales[i * B + b] != 0;
    INFO("branch " << i << ": " << kept << " kept, runs on " << counts[i]);
    // Its kept samples at least (rounded up, at most 90% of the batch), or the whole batch.
    CHECK((counts[i] == B || (counts[i] >= kept && counts[i] <= B * 9 / 10)));
    some_selected = some_selected || counts[i] < B;
  }
  CHECK(some_selected);
  vit.set_whole_batch_branches(true);
  CHECK(vit.branch_samples(drawn) == std::vector<int64_t>(branches, B));

  // A branch that keeps none runs on one sample (6 / 16, rounded up), not on the whole batch.
  vit.set_whole_batch_branches(false);
  const Tensor most_dropped = vit.draw_keep_scales(B, 0.95, drop_path, DType::f32);
  const std::vector<float> most_scales = most_dropped.to_vector<float>();
  const std::vector<int64_t> most_counts = vit.branch_samples(most_dropped);
  int64_t none_kept = 0;
  for (int64_t i = 0; i < branches; ++i) {
    if (std::any_of(most_scales.begin() + i * B, most_scales.begin() + (i + 1) * B,
                    [](float s) { return s != 0; }))
      continue;
    ++none_kept;
    CHECK(most_counts[i] == 1);
  }
  CHECK(none_kept > 0);
  // A batch of 40 selects in steps of 3 (40 / 16, rounded up): a branch that keeps none runs on 3.
  CHECK(vit.branch_samples(Tensor::zeros({branches, 40})) == std::vector<int64_t>(branches, 3));
}

// The model is timm's pre-norm Block, op by op: x + ls1 * attn(norm1(x)), then
// x + ls2 * mlp(norm2(x)), with every LayerNorm at the configured eps. Written here with the
// unfused ops and a large eps (0.5), against which the fused forward, the last block's class-token
// shortcut included, must agree.
TEST_CASE("the forward is the unfused blocks' with the configured LayerNorm eps", "[model]") {
  ViTConfig c = preset("deit3_tiny");
  c.input_size = 32;
  c.depth = 2;
  c.num_classes = 5;
  c.layernorm_eps = 0.5;
  VisionTransformer vit(c);
  Rng init(41);
  vit.initialize(init);
  const ParameterRegistry& params = vit.parameters();
  for (const auto& p : params.all())  // order-one values everywhere, so that each norm matters
    if (p.value.dim() == 1) Tensor(p.value).copy_from(Tensor::randn(p.value.shape(), init, 0.5));
  auto p = [&](const std::string& name) { return params.get(name); };
  Rng data(42);
  const Tensor images = Tensor::randn({2, 3, 32, 32}, data);
  NoGrad no_grad;
  const int64_t C = c.dim;
  Tensor x =
      ops::linear(ops::patch_unfold(images, c.patch),
                  ops::reshape(p("patch_embed.proj.weight"), {C, -1}), p("patch_embed.proj.bias"));
  x = ops::pos_embed_cls(x, p("pos_embed"), p("cls_token"));
  const Tensor keep = Tensor::full({2}, 1.0);
  for (int64_t i = 0; i < c.depth; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    Tensor h = ops::layernorm(x, p(b + "norm1.weight"), p(b + "norm1.bias"), c.layernorm_eps);
    h = ops::attention(ops::linear(h, p(b + "attn.qkv.weight"), p(b + "attn.qkv.bias")), c.heads);
    h = ops::linear(h, p(b + "attn.proj.weight"), p(b + "attn.proj.bias"));
    x = ops::layerscale_residual(x, h, p(b + "ls1.gamma"), keep);
    h = ops::layernorm(x, p(b + "norm2.weight"), p(b + "norm2.bias"), c.layernorm_eps);
    h = ops::linear_gelu(h, p(b + "mlp.fc1.weight"), p(b + "mlp.fc1.bias"));
    h = ops::linear(h, p(b + "mlp.fc2.weight"), p(b + "mlp.fc2.bias"));
    x = ops::layerscale_residual(x, h, p(b + "ls2.gamma"), keep);
  }
  const Tensor cls =
      ops::layernorm(ops::cls_select(x), p("norm.weight"), p("norm.bias"), c.layernorm_eps);
  const Tensor expected = ops::linear(cls, p("head.weight"), p("head.bias"));
  const std::vector<float> ours = vit.forward(images).to_vector<float>();
  const std::vector<float> theirs = expected.to_vector<float>();
  CHECK(test::relative_error({ours.begin(), ours.end()}, {theirs.begin(), theirs.end()}) < 1e-5);
}
