#include "model/checkpoint.h"

#include <cmath>
#include <filesystem>
#include <functional>
#include <optional>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "model/json_exact.h"

namespace deit::model {

namespace {

const std::string kModelPrefix = "model.";
const char* const kStateKey = "deit";
const char* const kConfigKey = "deit_model";
// A weights file's ViTConfig has a key of its own: deit builds older than it took any file with
// "deit_model" for a checkpoint.
const char* const kWeightsConfigKey = "deit_weights_model";
const char* const kClassesKey = "deit_classes";

// The select of read_safetensors that takes no tensor: the header alone is read (and every
// tensor's entry in it checked), for what the metadata says.
bool no_tensor(const std::string&) { return false; }

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

nlohmann::json config_to_json(const ViTConfig& c) {
  return {{"name", c.name},
          {"patch", c.patch},
          {"dim", c.dim},
          {"depth", c.depth},
          {"heads", c.heads},
          {"num_classes", c.num_classes},
          {"input_size", c.input_size},
          {"in_channels", c.in_channels},
          {"mlp_ratio", c.mlp_ratio},
          {"layerscale_init", c.layerscale_init},
          {"layernorm_eps", c.layernorm_eps}};
}

ViTConfig config_from_json(const nlohmann::json& j) {
  ViTConfig c;
  c.name = read_exactly<std::string>(j, "name");
  c.patch = read_exactly<int64_t>(j, "patch");
  c.dim = read_exactly<int64_t>(j, "dim");
  c.depth = read_exactly<int64_t>(j, "depth");
  c.heads = read_exactly<int64_t>(j, "heads");
  c.num_classes = read_exactly<int64_t>(j, "num_classes");
  c.input_size = read_exactly<int64_t>(j, "input_size");
  c.in_channels = read_exactly<int64_t>(j, "in_channels");
  c.mlp_ratio = read_exactly<int64_t>(j, "mlp_ratio");
  c.layerscale_init = read_exactly<double>(j, "layerscale_init");
  c.layernorm_eps = read_exactly<double>(j, "layernorm_eps");
  c.validate();
  return c;
}

// What the tensors' shapes (or a config) say about a model, field by field, so that a mismatch
// can be described by the fields that differ. A field the tensors do not show is left out.
struct ShapeField {
  std::string label;
  int64_t value;
};

std::string describe(const ShapeField& f) {
  if (f.label == "classes") return std::to_string(f.value) + " classes";
  if (f.label == "grid")
    return std::to_string(f.value) + "x" + std::to_string(f.value) + " patches";
  return f.label + " " + std::to_string(f.value);
}

std::vector<ShapeField> shape_fields(const ViTConfig& c) {
  return {{"patch", c.patch}, {"dim", c.dim},         {"depth", c.depth},
          {"heads", c.heads}, {"mlp", c.hidden()},    {"classes", c.num_classes},
          {"grid", c.grid()}};
}

std::vector<ShapeField> shape_fields(const std::unordered_map<std::string, Tensor>& tensors) {
  auto dim_of = [&](const std::string& name, int rank, int d) -> std::optional<int64_t> {
    auto it = tensors.find(name);
    if (it == tensors.end() || it->second.dim() != rank) return std::nullopt;
    return it->second.size(d);
  };
  std::vector<ShapeField> fields;
  auto add = [&](const char* label, std::optional<int64_t> v) {
    if (v) fields.push_back({label, *v});
  };
  add("patch", dim_of("patch_embed.proj.weight", 4, 2));
  add("dim", dim_of("cls_token", 3, 2));
  int64_t depth = 0;
  while (tensors.count("blocks." + std::to_string(depth) + ".norm1.weight")) ++depth;
  if (depth > 0) fields.push_back({"depth", depth});
  add("mlp", dim_of("blocks.0.mlp.fc1.weight", 2, 0));
  add("classes", dim_of("head.weight", 2, 0));
  if (auto n = dim_of("pos_embed", 3, 1)) {
    const auto grid = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(*n))));
    if (grid * grid == *n) fields.push_back({"grid", grid});
  }
  return fields;
}

// The fields in which two descriptions of a model differ, as each describes them ("dim 96, depth
// 400" and "dim 192, depth 4"); empty strings when none do. A field only one shows is left out.
std::pair<std::string, std::string> differing_fields(const std::vector<ShapeField>& a,
                                                     const std::vector<ShapeField>& b) {
  std::string a_diff, b_diff;
  for (const ShapeField& of_a : a) {
    for (const ShapeField& of_b : b) {
      if (of_b.label != of_a.label || of_b.value == of_a.value) continue;
      a_diff += (a_diff.empty() ? "" : ", ") + describe(of_a);
      b_diff += (b_diff.empty() ? "" : ", ") + describe(of_b);
    }
  }
  return {a_diff, b_diff};
}

// A file whose model description says another model than its tensors hold was changed after deit
// wrote it (its deit_crc32 left out with it). Every later error would describe the model by the
// description: "missing tensors" for blocks that never were, a model built at a size the tensors
// do not have.
void check_description_fits_tensors(const ViTConfig& described, const NamedTensors& tensors,
                                    const std::string& describe_file) {
  const std::unordered_map<std::string, Tensor> by_name(tensors.begin(), tensors.end());
  const auto [said, held] = differing_fields(shape_fields(described), shape_fields(by_name));
  if (!said.empty())
    throw std::runtime_error(describe_file + " is damaged: its model description says " + said +
                             " but its tensors hold " + held +
                             "; the file was changed after deit wrote it");
}

// "a, b, c (and 4 more)"
std::string name_list(const std::vector<std::string>& names) {
  constexpr size_t kShown = 5;
  std::string out;
  for (size_t i = 0; i < names.size() && i < kShown; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > kShown) out += " (and " + std::to_string(names.size() - kShown) + " more)";
  return out;
}

// The class names in `metadata` (empty when absent); `describe_file` names the file in errors.
std::vector<std::string> class_names_in(const Metadata& metadata,
                                        const std::string& describe_file) {
  const auto it = metadata.find(kClassesKey);
  if (it == metadata.end()) return {};
  try {
    return nlohmann::json::parse(it->second).get<std::vector<std::string>>();
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(describe_file + ": its deit_classes metadata is not a list of class " +
                             "names: " + e.what());
  }
}

// The metadata entry `key` (kConfigKey or kWeightsConfigKey) holding the model's ViTConfig.
std::pair<const std::string, std::string> model_metadata(const char* key, const ViTConfig& config) {
  return {key, config_to_json(config).dump()};
}

// The ViTConfig of a checkpoint's "deit_model" or a weights file's "deit_weights_model" in
// `metadata` (nothing when neither is there); `describe_file` names the file in errors.
std::optional<ViTConfig> model_config_in(const Metadata& metadata,
                                         const std::string& describe_file) {
  for (const char* key : {kConfigKey, kWeightsConfigKey}) {
    const auto it = metadata.find(key);
    if (it == metadata.end()) continue;
    try {
      return config_from_json(nlohmann::json::parse(it->second));
    } catch (const std::exception& e) {
      throw std::runtime_error(describe_file + ": its " + key + " metadata is not a valid model " +
                               "description: " + e.what());
    }
  }
  return std::nullopt;
}

// `metadata` with the class names added, when there are any.
Metadata with_class_names(Metadata metadata, const std::vector<std::string>& class_names) {
  if (!class_names.empty()) metadata[kClassesKey] = nlohmann::json(class_names).dump();
  return metadata;
}

bool is_float(DType t) { return t == DType::f32 || t == DType::f64 || t == DType::bf16; }

// The reference code (facebookresearch/deit models_v2.py) calls LayerScale's gammas
// blocks.{i}.gamma_1 / gamma_2; timm calls them blocks.{i}.ls1.gamma / ls2.gamma.
std::string timm_name(const std::string& name) {
  for (const char* n : {"1", "2"}) {
    const std::string reference = std::string(".gamma_") + n;
    if (name.size() > reference.size() &&
        name.compare(name.size() - reference.size(), reference.size(), reference) == 0)
      return name.substr(0, name.size() - reference.size()) + ".ls" + n + ".gamma";
  }
  return name;
}

}  // namespace

void save_checkpoint(const std::string& path, const VisionTransformer& model,
                     const NamedTensors& extra, const nlohmann::json& state,
                     const std::vector<std::string>& class_names) {
  NamedTensors tensors;
  for (const Parameter& p : model.parameters().all())
    tensors.emplace_back(kModelPrefix + p.name, p.value);
  for (const auto& [name, t] : extra) {
    if (starts_with(name, kModelPrefix))
      throw std::invalid_argument("cannot write checkpoint '" + path + "': extra state tensor '" +
                                  name + "' uses the prefix reserved for the model");
    tensors.emplace_back(name, t);
  }
  const Metadata metadata = {{kStateKey, state.dump()}, model_metadata(kConfigKey, model.config())};
  write_safetensors(path, tensors, with_class_names(metadata, class_names));
}

namespace {

Checkpoint read_checkpoint_tensors(const std::string& path,
                                   const std::function<bool(const std::string& name)>& select) {
  SafetensorsContents contents = read_safetensors(path, select);
  auto fail = [&](const std::string& why) {
    throw std::runtime_error("checkpoint '" + path + "': " + why);
  };
  const auto config_it = contents.metadata.find(kConfigKey);
  const auto state_it = contents.metadata.find(kStateKey);
  if (config_it == contents.metadata.end() || state_it == contents.metadata.end())
    fail(contents.metadata.count(kWeightsConfigKey)
             ? "not a deit checkpoint but a weights file, as deit export writes: deit eval "
               "--weights reads it, and deit train --finetune starts from it"
             : "not a deit checkpoint (its metadata lacks the deit_model and deit entries a "
               "checkpoint holds); a weights file, such as deit export or timm writes, is read by "
               "deit eval --weights, and deit train starts from one with --finetune");

  Checkpoint ckpt;
  ckpt.path = path;
  ckpt.config = *model_config_in(contents.metadata, "checkpoint '" + path + "'");
  try {
    ckpt.state = nlohmann::json::parse(state_it->second);
  } catch (const nlohmann::json::exception& e) {
    fail(std::string("its deit metadata is not JSON: ") + e.what());
  }
  // Every reader looks keys up in it (and in its options), which throws, without the file's name,
  // on anything but an object. No state at all (a caller's {}, which is JSON null) has no keys.
  if (ckpt.state.is_null()) ckpt.state = nlohmann::json::object();
  if (!ckpt.state.is_object())
    fail(std::string("its deit metadata is a JSON ") + ckpt.state.type_name() + ", not an object");
  if (ckpt.state.contains("options") && !ckpt.state.at("options").is_object())
    fail(std::string("its deit metadata's options are a JSON ") +
         ckpt.state.at("options").type_name() + ", not an object");
  ckpt.class_names = class_names_in(contents.metadata, "checkpoint '" + path + "'");
  for (auto& [name, t] : contents.tensors) {
    if (starts_with(name, kModelPrefix))
      ckpt.model.emplace_back(name.substr(kModelPrefix.size()), std::move(t));
    else
      ckpt.extra.emplace_back(std::move(name), std::move(t));
  }
  if (!ckpt.model.empty())
    check_description_fits_tensors(ckpt.config, ckpt.model, "checkpoint '" + path + "'");
  return ckpt;
}

}  // namespace

Checkpoint read_checkpoint(const std::string& path, bool with_extra) {
  return read_checkpoint_tensors(
      path, [&](const std::string& name) { return with_extra || starts_with(name, kModelPrefix); });
}

Checkpoint read_checkpoint_model(const std::string& path, bool ema) {
  if (!ema) return read_checkpoint(path, false);
  const std::string prefix = kEmaPrefix;
  Checkpoint ckpt = read_checkpoint_tensors(
      path, [&](const std::string& name) { return starts_with(name, prefix); });
  for (auto& [name, t] : ckpt.extra) ckpt.model.emplace_back(name.substr(prefix.size()), t);
  ckpt.extra.clear();
  if (ckpt.model.empty())
    throw std::runtime_error("checkpoint '" + path + "' holds no moving average of its weights " +
                             "(its run had --no-model-ema)");
  check_description_fits_tensors(ckpt.config, ckpt.model, "checkpoint '" + path + "'");
  return ckpt;
}

std::string checkpoint_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    return (std::filesystem::path(path) / "checkpoint.safetensors").string();
  return path;
}

Checkpoint read_checkpoint_header(const std::string& path) {
  return read_checkpoint_tensors(path, no_tensor);
}

void load_checkpoint_model(VisionTransformer& model, const Checkpoint& checkpoint) {
  load_parameters(model, checkpoint.model, "checkpoint '" + checkpoint.path + "'",
                  &checkpoint.config);
}

void load_parameters(VisionTransformer& model, const NamedTensors& tensors,
                     const std::string& source, const ViTConfig* source_config) {
  // Two tensors under one name (a file with both the reference code's blocks.0.gamma_1 and
  // timm's blocks.0.ls1.gamma, which read_model_tensors renames to one) would load whichever
  // came first without a word.
  std::unordered_map<std::string, Tensor> by_name;
  for (const auto& [name, t] : tensors)
    if (!by_name.emplace(name, t).second)
      throw std::runtime_error(source + " holds two tensors for " + name);
  const ViTConfig& target = model.config();

  // Another model altogether: say which, by the fields that differ.
  const auto [their_diff, our_diff] = differing_fields(
      source_config ? shape_fields(*source_config) : shape_fields(by_name), shape_fields(target));
  if (!their_diff.empty())
    throw std::runtime_error(source + " is for " + (source_config ? source_config->name : "a ViT") +
                             " (" + their_diff + ") but the model is " + target.name + " (" +
                             our_diff + ")");

  // The same model: every tensor must be there, with its shape, and nothing else.
  std::vector<std::string> missing, wrong, unexpected;
  std::unordered_set<std::string> expected;
  for (const Parameter& p : model.parameters().all()) {
    expected.insert(p.name);
    auto it = by_name.find(p.name);
    if (it == by_name.end())
      missing.push_back(p.name);
    else if (it->second.shape() != p.value.shape())
      wrong.push_back(p.name + " is " + dtype_name(it->second.dtype()) + " " +
                      shape_str(it->second.shape()) + " in the file but " +
                      shape_str(p.value.shape()) + " in the model");
    else if (!is_float(it->second.dtype()))
      wrong.push_back(p.name + " is " + dtype_name(it->second.dtype()) +
                      " in the file, not a floating-point type");
  }
  for (const auto& [name, t] : tensors)
    if (!expected.count(name)) unexpected.push_back(name);
  if (!missing.empty() || !wrong.empty() || !unexpected.empty()) {
    std::string why;
    auto add = [&](const std::string& what, const std::vector<std::string>& names) {
      if (!names.empty()) why += (why.empty() ? "" : "; ") + what + name_list(names);
    };
    add("missing tensors: ", missing);
    add("unexpected tensors: ", unexpected);
    add("", wrong);
    throw std::runtime_error(source + " does not fit the model " + target.name + ": " + why);
  }

  for (const Parameter& p : model.parameters().all()) {
    const Tensor& src = by_name.at(p.name);
    Tensor(p.value).copy_from(src.to(p.value.dtype()).to(p.value.device()));
  }
}

void save_weights(const std::string& path, const VisionTransformer& model,
                  const std::vector<std::string>& class_names) {
  NamedTensors tensors;
  for (const Parameter& p : model.parameters().all())
    tensors.emplace_back(p.name, p.value.to(DType::f32));
  // "format": "pt" is what PyTorch-side writers put there; Hugging Face loaders look for it.
  write_safetensors(
      path, tensors,
      with_class_names({{"format", "pt"}, model_metadata(kWeightsConfigKey, model.config())},
                       class_names));
}

std::vector<std::string> read_class_names(const std::string& path) {
  const auto header = read_safetensors(path, no_tensor);
  return class_names_in(header.metadata, "'" + path + "'");
}

std::optional<ViTConfig> read_model_config(const std::string& path) {
  const auto header = read_safetensors(path, no_tensor);
  return model_config_in(header.metadata, "'" + path + "'");
}

namespace {

// The file's header alone (no tensor is selected), or nothing where it is not safetensors.
std::optional<SafetensorsContents> read_header(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return std::nullopt;
  try {
    return read_safetensors(path, no_tensor);
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

}  // namespace

bool is_safetensors(const std::string& path) { return read_header(path).has_value(); }

bool is_checkpoint(const std::string& path) {
  const std::optional<SafetensorsContents> header = read_header(path);
  return header && header->metadata.count(kConfigKey);  // a weights file has no deit_model
}

NamedTensors read_model_tensors(const std::string& path) {
  // A checkpoint's optimizer state need not be read.
  if (is_checkpoint(path)) return read_checkpoint(path, /*with_extra=*/false).model;
  SafetensorsContents contents = read_safetensors(path);
  NamedTensors tensors;
  for (auto& [name, t] : contents.tensors) tensors.emplace_back(timm_name(name), std::move(t));
  const std::string describe_file = "weights file '" + path + "'";
  if (const auto described = model_config_in(contents.metadata, describe_file))
    check_description_fits_tensors(*described, tensors, describe_file);
  return tensors;
}

void load_weights(VisionTransformer& model, const std::string& path) {
  load_parameters(model, read_model_tensors(path), "weights file '" + path + "'");
}

}  // namespace deit::model
