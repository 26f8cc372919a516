// Checkpoints and weights files (model/checkpoint.h): what they hold, that they restore the model
// bit for bit, that a checkpoint or weights file of another model is refused with both models
// named, that a failed save never costs the previous checkpoint, and that exports carry exactly
// timm's names and shapes.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/rng.h"
#include "model/checkpoint.h"
#include "model/json_exact.h"
#include "tests/test_data_helpers.h"
#include "tests/test_io_helpers.h"
#include "tests/test_model_helpers.h"

using namespace deit;
using namespace deit::model;
using Catch::Contains;
using deit::test::parameters_of;
using deit::test::TempDir;

namespace {

ViTConfig tiny(const std::string& name, int64_t dim = 32, int64_t heads = 4,
               int64_t num_classes = 10) {
  ViTConfig c;
  c.name = name;
  c.patch = 4;
  c.dim = dim;
  c.depth = 2;
  c.heads = heads;
  c.num_classes = num_classes;
  c.input_size = 16;
  return c;
}

VisionTransformer initialised(const ViTConfig& c, uint64_t seed) {
  VisionTransformer vit(c);
  Rng rng(seed);
  vit.initialize(rng);
  return vit;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

bool same_parameters(const VisionTransformer& a, const VisionTransformer& b) {
  for (const Parameter& p : a.parameters().all())
    if (!same_bytes(p.value, b.parameters().get(p.name))) return false;
  return a.parameters().size() == b.parameters().size();
}

// timm's state_dict of deit3_small_patch16_224: names and shapes, written out from RECIPE.md
// section 1 rather than from our parameter table, so the two are checked against each other.
std::map<std::string, Shape> timm_deit3_small() {
  const int64_t C = 384;
  std::map<std::string, Shape> keys = {
      {"cls_token", {1, 1, C}},          {"pos_embed", {1, 196, C}},
      {"patch_embed.proj.weight", {C, 3, 16, 16}}, {"patch_embed.proj.bias", {C}},
      {"norm.weight", {C}},              {"norm.bias", {C}},
      {"head.weight", {1000, C}},        {"head.bias", {1000}},
  };
  for (int i = 0; i < 12; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    keys[b + "norm1.weight"] = {C};
    keys[b + "norm1.bias"] = {C};
    keys[b + "attn.qkv.weight"] = {3 * C, C};
    keys[b + "attn.qkv.bias"] = {3 * C};
    keys[b + "attn.proj.weight"] = {C, C};
    keys[b + "attn.proj.bias"] = {C};
    keys[b + "ls1.gamma"] = {C};
    keys[b + "norm2.weight"] = {C};
    keys[b + "norm2.bias"] = {C};
    keys[b + "mlp.fc1.weight"] = {4 * C, C};
    keys[b + "mlp.fc1.bias"] = {4 * C};
    keys[b + "mlp.fc2.weight"] = {C, 4 * C};
    keys[b + "mlp.fc2.bias"] = {C};
    keys[b + "ls2.gamma"] = {C};
  }
  return keys;
}

}  // namespace

TEST_CASE("a checkpoint restores the model, the extra state and the caller's JSON", "[io]") {
  TempDir dir;
  const std::string path = dir.file("checkpoint.safetensors");
  const VisionTransformer vit = initialised(tiny("tiny_a"), 1);
  Rng rng(2);
  const NamedTensors extra = {
      {"optimizer.exp_avg.cls_token", Tensor::randn({1, 1, 32}, rng)},
      {"optimizer.exp_avg_sq.head.weight", Tensor::randn({10, 32}, rng)},
      {"sampler.permutation", Tensor::from_vector(std::vector<int32_t>{3, 1, 2, 0}, {4})},
  };
  const nlohmann::json state = {{"epoch", 7},
                                {"lr", 0.0012345678901234567},
                                {"rng", {UINT64_MAX, 0, 12345678901234567890ull, 1}},
                                {"args", {{"model", "tiny_a"}, {"bce_loss", true}}}};
  save_checkpoint(path, vit, extra, state);

  // The file is plain safetensors, the parameters under "model.".
  const auto raw = read_safetensors(path);
  CHECK(find_tensor(raw.tensors, "model.blocks.1.ls2.gamma") != nullptr);
  CHECK(nlohmann::json::parse(raw.metadata.at("deit")) == state);

  const Checkpoint ckpt = read_checkpoint(path);
  CHECK(ckpt.path == path);
  CHECK(ckpt.state == state);
  CHECK(ckpt.config.name == "tiny_a");
  CHECK(ckpt.config.dim == 32);
  CHECK(ckpt.config.heads == 4);
  CHECK(ckpt.config.num_classes == 10);
  CHECK(ckpt.config.input_size == 16);
  CHECK(ckpt.config.layerscale_init == vit.config().layerscale_init);
  REQUIRE(ckpt.extra.size() == extra.size());
  for (size_t i = 0; i < extra.size(); ++i) {
    INFO(extra[i].first);
    const Tensor* back = find_tensor(ckpt.extra, extra[i].first);
    REQUIRE(back != nullptr);
    CHECK(same_bytes(*back, extra[i].second));
  }

  VisionTransformer restored(ckpt.config);
  load_checkpoint_model(restored, ckpt);
  CHECK(same_parameters(restored, vit));

  const Checkpoint model_only = read_checkpoint(path, /*with_extra=*/false);
  CHECK(model_only.extra.empty());
  CHECK(model_only.model.size() == vit.parameters().size());
}

TEST_CASE("a checkpoint of another model is refused, naming both models and the file", "[io]") {
  TempDir dir;
  const std::string path = dir.file("other.safetensors");
  save_checkpoint(path, initialised(tiny("tiny_a"), 1), {}, nlohmann::json::object());
  const Checkpoint ckpt = read_checkpoint(path);

  VisionTransformer narrower = initialised(tiny("tiny_b", 16), 3);
  const VisionTransformer untouched = initialised(tiny("tiny_b", 16), 3);
  CHECK_THROWS_WITH(load_checkpoint_model(narrower, ckpt),
                    Contains("checkpoint '" + path + "' is for tiny_a (dim 32, mlp 128) but the "
                             "model is tiny_b (dim 16, mlp 64)"));
  CHECK(same_parameters(narrower, untouched));  // nothing was copied

  VisionTransformer fewer_classes(tiny("tiny_c", 32, 4, 5));
  CHECK_THROWS_WITH(load_checkpoint_model(fewer_classes, ckpt),
                    Contains("is for tiny_a (10 classes) but the model is tiny_c (5 classes)"));

  ViTConfig larger_images = tiny("tiny_d");
  larger_images.input_size = 32;
  VisionTransformer at_32(larger_images);
  CHECK_THROWS_WITH(load_checkpoint_model(at_32, ckpt),
                    Contains("is for tiny_a (4x4 patches) but the model is tiny_d (8x8 patches)"));

  // Same shapes, different head count: only the saved configuration can tell.
  VisionTransformer two_heads(tiny("tiny_e", 32, 2));
  CHECK_THROWS_WITH(load_checkpoint_model(two_heads, ckpt),
                    Contains("is for tiny_a (heads 4) but the model is tiny_e (heads 2)"));

  // The presets, as a user meets them (no file needed: the configuration decides).
  VisionTransformer small(preset("deit3_small"));
  const ViTConfig base = preset("deit3_base");
  CHECK_THROWS_WITH(load_parameters(small, {}, "checkpoint 'run/base.safetensors'", &base),
                    Contains("checkpoint 'run/base.safetensors' is for deit3_base (dim 768") &&
                        Contains("but the model is deit3_small (dim 384"));
}

TEST_CASE("missing, unexpected and mis-shaped tensors are listed", "[io]") {
  VisionTransformer vit = initialised(tiny("tiny_a"), 1);
  NamedTensors tensors;
  for (const auto& [name, t] : parameters_of(vit)) {
    if (name == "head.bias") continue;
    tensors.emplace_back(name, name == "norm.weight" ? Tensor::zeros({31}) : t.clone());
  }
  tensors.emplace_back("blocks.0.attn.relative_position_bias", Tensor::zeros({4}));
  CHECK_THROWS_WITH(
      load_parameters(vit, tensors, "weights file 'w.safetensors'"),
      Contains("weights file 'w.safetensors' does not fit the model tiny_a") &&
          Contains("missing tensors: head.bias") &&
          Contains("unexpected tensors: blocks.0.attn.relative_position_bias") &&
          Contains("norm.weight is f32 (31) in the file but (32) in the model"));

  // The right shape in a type that is not a weight's: the type named, not the equal shapes.
  NamedTensors integers = parameters_of(vit);
  for (auto& [name, t] : integers)
    if (name == "norm.weight") t = Tensor::from_vector(std::vector<int32_t>(32, 1), {32});
  CHECK_THROWS_WITH(load_parameters(vit, integers, "weights file 'w.safetensors'"),
                    Contains("norm.weight is i32 in the file, not a floating-point type"));

  // Two tensors under one name are refused, not loaded from whichever comes first.
  NamedTensors twice = parameters_of(vit);
  twice.emplace_back("head.bias", Tensor::zeros({10}));
  CHECK_THROWS_WITH(load_parameters(vit, twice, "weights file 'w.safetensors'"),
                    Contains("weights file 'w.safetensors' holds two tensors for head.bias"));
}

TEST_CASE("a failed checkpoint save keeps the previous checkpoint", "[io]") {
  TempDir dir;
  const std::string path = dir.file("checkpoint.safetensors");
  const VisionTransformer first = initialised(tiny("tiny_a"), 1);
  save_checkpoint(path, first, {}, {{"epoch", 1}});
  const std::vector<uint8_t> good = deit::test::read_bytes(path);

  const VisionTransformer second = initialised(tiny("tiny_a"), 2);
  {
    deit::test::FileSizeLimit limit(good.size() / 2);
    CHECK_THROWS_WITH(save_checkpoint(path, second, {}, {{"epoch", 2}}),
                      Contains("cannot write '" + path + "'"));
  }
  CHECK(deit::test::read_bytes(path) == good);
  CHECK(read_checkpoint(path).state["epoch"] == 1);
  CHECK(std::distance(std::filesystem::directory_iterator(dir.path()),
                      std::filesystem::directory_iterator()) == 1);

  const std::string unwritable = path + "/inside_a_file.safetensors";
  CHECK_THROWS_WITH(save_checkpoint(unwritable, second, {}, {}),
                    Contains("cannot write '" + unwritable + "'") && Contains("Not a directory"));
  CHECK_THROWS_WITH(save_checkpoint(dir.file("x.safetensors"), second,
                                    {{"model.cls_token", Tensor::zeros({1})}}, {}),
                    Contains("'model.cls_token' uses the prefix reserved for the model"));
}

TEST_CASE("read_checkpoint refuses files that are not deit checkpoints", "[io]") {
  TempDir dir;
  const VisionTransformer vit = initialised(tiny("tiny_a"), 1);
  const std::string weights = dir.file("weights.safetensors");
  save_weights(weights, vit);
  CHECK_THROWS_WITH(read_checkpoint(weights),
                    Contains("checkpoint '" + weights + "': not a deit checkpoint"));

  const std::string broken = dir.file("broken.safetensors");
  write_safetensors(broken, {}, {{"deit", "{}"}, {"deit_model", R"({"name": "x"})"}});
  CHECK_THROWS_WITH(read_checkpoint(broken),
                    Contains("checkpoint '" + broken + "'") &&
                        Contains("deit_model metadata is not a valid model description"));

  // Its state JSON, and the run's options in it, are looked into by key: anything but an object
  // is refused here, naming the file, not by an unnamed JSON type error in eval or --resume.
  const std::string listed = dir.file("listed.safetensors");
  save_checkpoint(listed, vit, {}, nlohmann::json::array({1}));
  CHECK_THROWS_WITH(read_checkpoint_header(listed),
                    Contains("checkpoint '" + listed + "': its deit metadata is a JSON array, " +
                             "not an object"));
  save_checkpoint(listed, vit, {}, {{"epoch", 0}, {"options", 5}});
  CHECK_THROWS_WITH(read_checkpoint(listed),
                    Contains("checkpoint '" + listed + "': its deit metadata's options are a " +
                             "JSON number, not an object"));
}

TEST_CASE("metadata values are read only where their type holds them exactly", "[io]") {
  using nlohmann::json;
  // Whole numbers within the type's range, written as integers or as 4.0.
  CHECK(holds_exactly<int64_t>(json(INT64_MAX)));
  CHECK(holds_exactly<int64_t>(json(INT64_MIN)));
  CHECK_FALSE(holds_exactly<int64_t>(json::parse("9223372036854775808")));
  CHECK(holds_exactly<uint64_t>(json::parse("18446744073709551615")));
  CHECK_FALSE(holds_exactly<uint64_t>(json(-1)));
  CHECK(holds_exactly<uint32_t>(json(int64_t{4294967295})));
  CHECK_FALSE(holds_exactly<uint32_t>(json(int64_t{4294967296})));
  CHECK_FALSE(holds_exactly<uint32_t>(json::parse("4294967296")));
  CHECK(holds_exactly<int>(json(int64_t{-2147483648})));
  CHECK_FALSE(holds_exactly<int>(json(int64_t{-2147483649})));
  CHECK(holds_exactly<int64_t>(json(4.0)));
  CHECK(holds_exactly<int64_t>(json(-9223372036854775808.0)));       // -2^63, INT64_MIN itself
  CHECK_FALSE(holds_exactly<int64_t>(json(9223372036854775808.0)));  // 2^63, one past the max
  CHECK(holds_exactly<uint32_t>(json(4294967295.0)));
  CHECK_FALSE(holds_exactly<uint32_t>(json(4294967296.0)));
  CHECK_FALSE(holds_exactly<uint64_t>(json(-1.0)));
  CHECK_FALSE(holds_exactly<int64_t>(json(4.5)));
  CHECK_FALSE(holds_exactly<int64_t>(json(1e300)));
  CHECK_FALSE(holds_exactly<int64_t>(json("4")));
  CHECK_FALSE(holds_exactly<int64_t>(json(true)));
  // Any number for a double; a float's range is smaller.
  CHECK(holds_exactly<double>(json(1e300)));
  CHECK(holds_exactly<double>(json(-3)));
  CHECK(holds_exactly<float>(json(-3.5)));
  CHECK_FALSE(holds_exactly<float>(json(1e300)));
  CHECK_FALSE(holds_exactly<double>(json("1")));
  CHECK(holds_exactly<bool>(json(false)));
  CHECK_FALSE(holds_exactly<bool>(json(0)));
  CHECK(holds_exactly<std::string>(json("")));
  CHECK_FALSE(holds_exactly<std::string>(json(nullptr)));

  const json object = {{"workers", 3.5}, {"seed", 7}, {"name", 1}, {"lr", "high"}, {"zero", 1}};
  CHECK(read_exactly<uint64_t>(object, "seed") == 7);
  CHECK_THROWS_WITH(read_exactly<int>(object, "workers"),
                    "'workers' is 3.5, not a whole number of its range");
  CHECK_THROWS_WITH(read_exactly<std::string>(object, "name"), "'name' is 1, not a string");
  CHECK_THROWS_WITH(read_exactly<double>(object, "lr"),
                    "'lr' is \"high\", not a number of its range");
  CHECK_THROWS_WITH(read_exactly<bool>(object, "zero"), "'zero' is 1, not true or false");
  CHECK_THROWS_AS(read_exactly<int>(object, "epochs"), json::out_of_range);

  // A model description with a number past its field's range: converting it was undefined
  // behaviour (a fuzzer's finding), and its patch came out as whatever the machine made of it.
  TempDir dir;
  const std::string file = dir.file("model.safetensors");
  write_safetensors(file, {},
                    {{"deit_model", R"({"name": "tiny", "patch": 1e300, "dim": 32, "depth": 1,
                                        "heads": 2, "num_classes": 10, "input_size": 32,
                                        "in_channels": 3, "mlp_ratio": 4,
                                        "layerscale_init": 1e-4, "layernorm_eps": 1e-6})"}});
  CHECK_THROWS_WITH(read_model_config(file),
                    Contains("deit_model metadata is not a valid model description: 'patch' is "
                             "1e+300, not a whole number of its range"));
}

TEST_CASE("weights files carry exactly timm's names and shapes for deit3_small", "[io]") {
  TempDir dir;
  const std::string path = dir.file("deit3_small.safetensors");
  VisionTransformer vit(preset("deit3_small"));
  Rng rng(5);
  vit.initialize(rng);
  save_weights(path, vit);

  const auto contents = read_safetensors(path);
  std::map<std::string, Shape> written;
  for (const auto& [name, t] : contents.tensors) {
    written[name] = t.shape();
    CHECK(t.dtype() == DType::f32);
  }
  CHECK(written == timm_deit3_small());
  // Metadata only beside the tensors (timm ignores it): the model's description, as a checkpoint
  // keeps it.
  REQUIRE(contents.metadata.size() == 2);
  CHECK(contents.metadata.at("format") == "pt");
  CHECK(nlohmann::json::parse(contents.metadata.at("deit_weights_model"))["heads"] == 6);
  // Not a checkpoint's "deit_model": deit builds before this took a file with it for one.
  CHECK(contents.metadata.count("deit_model") == 0);
}

TEST_CASE("a weights file names its model, and is still not taken for a checkpoint", "[io]") {
  TempDir dir;
  const ViTConfig config = tiny("tiny_a", 32, /*heads=*/2);
  const VisionTransformer vit = initialised(config, 1);
  const std::string weights = dir.file("weights.safetensors");
  save_weights(weights, vit, {"a", "b"});
  const std::optional<ViTConfig> saved = read_model_config(weights);
  REQUIRE(saved.has_value());
  CHECK(saved->name == "tiny_a");
  CHECK(saved->heads == 2);  // which the tensors' shapes do not show
  CHECK(saved->dim == 32);
  CHECK(saved->depth == 2);
  CHECK(saved->patch == 4);
  CHECK(saved->num_classes == 10);
  CHECK(saved->input_size == 16);
  CHECK(read_class_names(weights) == std::vector<std::string>{"a", "b"});
  // A weights file, all the same: read as one, and never refused as a checkpoint to write over.
  CHECK_FALSE(is_checkpoint(weights));
  CHECK(is_safetensors(weights));
  CHECK(read_model_tensors(weights).size() == vit.parameters().size());
  CHECK_THROWS_WITH(
      read_checkpoint(weights),
      Contains("not a deit checkpoint but a weights file, as deit export writes: deit eval "
               "--weights reads it"));
  // A checkpoint says its model the same way.
  const std::string checkpoint = dir.file("checkpoint.safetensors");
  save_checkpoint(checkpoint, vit, {}, {{"epoch", 0}});
  CHECK(is_checkpoint(checkpoint));
  REQUIRE(read_model_config(checkpoint).has_value());
  CHECK(read_model_config(checkpoint)->heads == 2);
  // timm's weights (and deit's older exports) do not say.
  const std::string bare = dir.file("bare.safetensors");
  write_safetensors(bare, parameters_of(vit), {{"format", "pt"}});
  CHECK_FALSE(read_model_config(bare).has_value());
  // A description that is not one is refused, naming the file.
  const std::string broken = dir.file("broken.safetensors");
  write_safetensors(broken, parameters_of(vit), {{"deit_weights_model", R"({"name": "x"})"}});
  CHECK_THROWS_WITH(read_model_config(broken),
                    Contains("'" + broken + "'") &&
                        Contains("deit_weights_model metadata is not a valid model description"));
}

namespace {

// `path` written again with its model description's `field` set to `value`, as a hand edit
// would: a whole file (its checksums made anew), not a damaged one.
void edit_model_description(const std::string& path, const char* key, const char* field,
                            int64_t value) {
  SafetensorsContents contents = read_safetensors(path);
  nlohmann::json description = nlohmann::json::parse(contents.metadata.at(key));
  description[field] = value;
  contents.metadata[key] = description.dump();
  write_safetensors(path, contents.tensors, contents.metadata);
}

}  // namespace

TEST_CASE("a file whose model description is not the model of its tensors is refused", "[io]") {
  TempDir dir;
  const VisionTransformer vit = initialised(tiny("tiny_a"), 1);
  // Without the check, later errors described the model by the edited description: "missing
  // tensors" for a third block, or a model built at a size the tensors do not have.
  const std::string checkpoint = dir.file("checkpoint.safetensors");
  save_checkpoint(checkpoint, vit, {}, {{"epoch", 0}});
  edit_model_description(checkpoint, "deit_model", "depth", 3);
  for (const bool ema : {false, true}) {
    if (ema) {
      save_checkpoint(checkpoint, vit,
                      {{std::string(kEmaPrefix) + "cls_token", vit.parameters().get("cls_token")}},
                      {{"epoch", 0}});
      edit_model_description(checkpoint, "deit_model", "dim", 48);
    }
    CHECK_THROWS_WITH(
        read_checkpoint_model(checkpoint, ema),
        Contains("checkpoint '" + checkpoint + "' is damaged: its model description " + "says " +
                 (ema ? "dim 48" : "depth 3") + " but its tensors hold " +
                 (ema ? "dim 32" : "depth 2") + "; the file was changed after deit " + "wrote it"));
  }
  const std::string weights = dir.file("weights.safetensors");
  save_weights(weights, vit);
  edit_model_description(weights, "deit_weights_model", "num_classes", 5);
  CHECK_THROWS_WITH(read_model_tensors(weights),
                    Contains("weights file '" + weights + "' is damaged: its model description " +
                             "says 5 classes but its tensors hold 10 classes"));
  // What the tensors do not show (the heads) cannot be checked, and is taken as described.
  edit_model_description(weights, "deit_weights_model", "num_classes", 10);
  edit_model_description(weights, "deit_weights_model", "heads", 2);
  CHECK(read_model_tensors(weights).size() == vit.parameters().size());
}

TEST_CASE("weights files load back, also under the reference code's gamma names", "[io]") {
  TempDir dir;
  const VisionTransformer vit = initialised(tiny("tiny_a"), 1);
  const std::string timm_names = dir.file("timm.safetensors");
  save_weights(timm_names, vit);
  VisionTransformer loaded(tiny("tiny_a"));
  load_weights(loaded, timm_names);
  CHECK(same_parameters(loaded, vit));

  NamedTensors renamed;
  for (auto [name, t] : read_safetensors(timm_names).tensors) {
    for (const auto& [timm, reference] : {std::pair{".ls1.gamma", ".gamma_1"},
                                          std::pair{".ls2.gamma", ".gamma_2"}}) {
      const size_t at = name.find(timm);
      if (at != std::string::npos) name = name.substr(0, at) + reference;
    }
    renamed.emplace_back(name, t);
  }
  REQUIRE(find_tensor(renamed, "blocks.1.gamma_2") != nullptr);
  const std::string reference_names = dir.file("reference.safetensors");
  write_safetensors(reference_names, renamed);
  VisionTransformer from_reference(tiny("tiny_a"));
  load_weights(from_reference, reference_names);
  CHECK(same_parameters(from_reference, vit));

  // Both names for one gamma: which one was meant is not for the loader to guess.
  NamedTensors both = read_safetensors(timm_names).tensors;
  both.emplace_back("blocks.1.gamma_2", Tensor::zeros({32}));
  const std::string both_names = dir.file("both.safetensors");
  write_safetensors(both_names, both);
  CHECK_THROWS_WITH(load_weights(from_reference, both_names),
                    Contains("weights file '" + both_names +
                             "' holds two tensors for "
                             "blocks.1.ls2.gamma"));
  CHECK(same_parameters(from_reference, vit));
}

TEST_CASE("load_weights also reads a checkpoint's model, and refuses other models", "[io]") {
  TempDir dir;
  const VisionTransformer vit = initialised(tiny("tiny_a"), 1);
  const std::string checkpoint = dir.file("checkpoint.safetensors");
  save_checkpoint(checkpoint, vit, {{"optimizer.exp_avg.head.bias", Tensor::zeros({10})}}, {});
  const NamedTensors from_checkpoint = read_model_tensors(checkpoint);
  CHECK(from_checkpoint.size() == vit.parameters().size());  // the optimizer state is left out
  VisionTransformer target(tiny("tiny_a"));
  load_weights(target, checkpoint);
  CHECK(same_parameters(target, vit));

  const std::string weights = dir.file("weights.safetensors");
  save_weights(weights, vit);
  VisionTransformer narrower(tiny("tiny_b", 16));
  CHECK_THROWS_WITH(load_weights(narrower, weights),
                    Contains("weights file '" + weights + "' is for a ViT (dim 32, mlp 128) but "
                             "the model is tiny_b (dim 16, mlp 64)"));
}

TEST_CASE("a list of tensors names five and counts the rest", "[io]") {
  VisionTransformer vit = initialised(tiny("tiny_a"), 1);
  const NamedTensors all = parameters_of(vit);
  // The last `n` parameters left out of the file.
  auto without_last = [&](size_t n) { return NamedTensors(all.begin(), all.end() - n); };
  std::vector<std::string> last_six;
  for (size_t i = all.size() - 6; i < all.size(); ++i) last_six.push_back(all[i].first);
  std::string five;
  for (size_t i = 1; i < 6; ++i) five += (i > 1 ? ", " : "") + last_six[i];
  CHECK_THROWS_WITH(load_parameters(vit, without_last(5), "weights file 'w.safetensors'"),
                    Catch::EndsWith("missing tensors: " + five));
  CHECK_THROWS_WITH(load_parameters(vit, without_last(6), "weights file 'w.safetensors'"),
                    Catch::EndsWith("missing tensors: " + last_six[0] + ", " +
                                    five.substr(0, five.rfind(", ")) + " (and 1 more)"));
}

TEST_CASE("a pos_embed that is not a square grid is listed by its shape, not read as a grid",
          "[io]") {
  // 3 x 3 + 1 positions (a class-token slot, as DeiT I keeps) for a model of a 4 x 4 grid: not a
  // 3 x 3 ViT's, which the fields that differ would say.
  VisionTransformer vit = initialised(tiny("tiny_a"), 1);
  NamedTensors tensors = parameters_of(vit);
  for (auto& [name, t] : tensors)
    if (name == "pos_embed") t = Tensor::zeros({1, 10, 32});
  CHECK_THROWS_WITH(load_parameters(vit, tensors, "weights file 'w.safetensors'"),
                    Contains("weights file 'w.safetensors' does not fit the model tiny_a: "
                             "pos_embed is f32 (1, 10, 32) in the file but (1, 16, 32) in the "
                             "model") &&
                        !Contains("patches"));
}
