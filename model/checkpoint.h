// Checkpoints and timm-compatible weights files; both are safetensors files (model/safetensors.h),
// written atomically.
//
// A checkpoint holds what a run needs to continue exactly where it stopped:
//   model.<timm name>   every parameter of the ViT, in the model's dtype
//   <caller's names>    extra state tensors (optimizer moments, EMA weights), as given
//   __metadata__ "deit_model"  the model's ViTConfig as JSON, so a checkpoint of another model is
//                              recognised and named, and a checkpoint alone can rebuild its model
//   __metadata__ "deit"        the caller's JSON (arguments, epoch, schedule position, RNG and
//                              sampler state)
//   __metadata__ "deit_classes"  the class names in label order, as a JSON array (see below)
//
// A weights file holds the parameters alone, as f32 under timm's names and shapes (RECIPE.md
// section 1): what `deit export` writes, what timm's deit3_* models load, and what
// `deit eval --weights` reads (timm's own safetensors weights included, and checkpoints too).
// deit's own also keep the model's ViTConfig, under "deit_weights_model" (timm ignores metadata),
// since the shapes alone do not show every field (a head count, say); not under a checkpoint's
// "deit_model", which tells a checkpoint from a weights file, to deit builds older than this too.
//
// Both kinds keep the names of the classes the model was trained on, in label order, when the
// writer knows them: label 3 means a class only through the dataset's folder order, so a model
// evaluated or resumed on a dataset with other classes would be scored against the wrong labels
// without a word. Files written before deit kept them, and timm's weights, have none.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/config.h"
#include "model/safetensors.h"
#include "model/vit.h"

namespace deit::model {

// Writes a checkpoint of `model` plus `extra` tensors (whose names must not start with "model.")
// and the caller's `state` JSON, and the names of the model's classes when given. A failed write
// leaves any previous file at `path` untouched.
void save_checkpoint(const std::string& path, const VisionTransformer& model,
                     const NamedTensors& extra, const nlohmann::json& state,
                     const std::vector<std::string>& class_names = {});

struct Checkpoint {
  std::string path;
  ViTConfig config;       // the model the checkpoint was saved from
  nlohmann::json state;   // the caller's JSON, as saved
  NamedTensors model;     // the parameters, host tensors under timm's names ("model." removed)
  NamedTensors extra;     // the caller's extra tensors, names as saved
  std::vector<std::string> class_names;  // in label order; empty when the file does not say
};

// Reads and validates a checkpoint; with_extra = false skips the extra tensors (evaluation and
// export need only the model). Throws std::runtime_error naming the file for anything that is not
// a deit checkpoint.
Checkpoint read_checkpoint(const std::string& path, bool with_extra = true);
// Where deit train saves its weights' exponential moving average (engine/ema.h) among the extra
// tensors: each parameter's average under this prefix and the parameter's name, in f32.
inline constexpr const char* kEmaPrefix = "ema.";

// The checkpoint for its model alone (as read_checkpoint(path, false)); with `ema`, `model` holds
// the moving average its run kept instead of the trained weights. Throws naming the file when it
// holds no average (its run had --no-model-ema).
Checkpoint read_checkpoint_model(const std::string& path, bool ema);

// The checkpoint's model description, state and class names without its tensors (which are still
// validated): what a resumed run's options and an evaluation's model are made from.
Checkpoint read_checkpoint_header(const std::string& path);

// The checkpoint `path` names: the file itself, or the checkpoint.safetensors of a run folder
// (what `deit train --output` writes into).
std::string checkpoint_file(const std::string& path);

// Whether `path` is a readable safetensors file (by its header; false for a missing file).
bool is_safetensors(const std::string& path);

// Whether `path` is a readable deit checkpoint (by its header; false for a missing file, a
// weights file or anything that is not safetensors).
bool is_checkpoint(const std::string& path);

// The model a checkpoint or a weights file of deit export says it holds (its "deit_model" or
// "deit_weights_model" metadata), read from the header alone; nothing for a file that does not say
// (timm's weights, exports written before deit kept it). Throws naming the file when it cannot be
// read or its description is not valid.
std::optional<ViTConfig> read_model_config(const std::string& path);

// Copies the checkpoint's parameters into `model` (any device and dtype) after checking that it
// was saved from the same model: see load_parameters.
void load_checkpoint_model(VisionTransformer& model, const Checkpoint& checkpoint);

// Copies `tensors` (timm names) into the model's parameters, converting dtype and device. The
// tensors must be exactly the model's parameters, with the model's shapes; `source` names them in
// errors (e.g. "checkpoint 'run/checkpoint.safetensors'"). When the shapes say the tensors are of
// another model, the error names both, e.g. "... is for deit3_base (dim 768) but the model is
// deit3_small (dim 384)"; otherwise it lists the missing, unexpected and mis-shaped tensors.
// `source_config`, when known, is compared too (the head count does not show in the shapes).
void load_parameters(VisionTransformer& model, const NamedTensors& tensors,
                     const std::string& source, const ViTConfig* source_config = nullptr);

// Writes the model's parameters as a timm-compatible weights file, with its ViTConfig and the
// names of its classes when given (metadata, which timm ignores).
void save_weights(const std::string& path, const VisionTransformer& model,
                  const std::vector<std::string>& class_names = {});

// The class names a checkpoint or weights file keeps, in label order; empty when it keeps none.
// Reads the file's header only.
std::vector<std::string> read_class_names(const std::string& path);

// The model tensors of a weights file or of a checkpoint (whose extra state is not read), under
// timm's names: the reference code's blocks.{i}.gamma_1 / gamma_2 become blocks.{i}.ls1.gamma /
// ls2.gamma. For callers that adapt the tensors before load_parameters (fine-tuning).
NamedTensors read_model_tensors(const std::string& path);

// load_parameters(model, read_model_tensors(path)): a weights file, or a checkpoint's model.
void load_weights(VisionTransformer& model, const std::string& path);

}  // namespace deit::model
