// deit export: a training checkpoint -> a weights file with timm's names and shapes, which
// timm.create_model('deit3_small_patch16_224').load_state_dict(safetensors.torch.load_file(F))
// accepts, and `deit eval --weights` reads (the model's description and class names ride along
// as metadata, which timm ignores).
#include <cstdio>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>

#include "apps/cli_checks.h"
#include "apps/commands.h"
#include "data/made_folder.h"
#include "model/checkpoint.h"
#include "train/run_state.h"

namespace deit::apps {

namespace {

struct ExportOptions {
  std::string checkpoint;
  std::string out;
  bool ema = false;
};

void run_export(const ExportOptions& opts) {
  // Writing over a checkpoint (this one, or another run's) would replace a run's optimizer state
  // with bare weights, and over any other file (a run's log, a dataset's shard) lose it: only a
  // weights file may be replaced.
  std::error_code ec;
  if (std::filesystem::is_directory(opts.out, ec))
    throw std::invalid_argument("--out '" + opts.out + "' is a folder; give a file name (e.g. '" +
                                (std::filesystem::path(opts.out) / "model.safetensors").string() +
                                "')");
  if (!ends_with_ignoring_case(opts.out, ".safetensors"))
    throw std::invalid_argument("--out '" + opts.out + "' does not end in .safetensors (export " +
                                "writes a safetensors weights file)");
  if (model::is_checkpoint(opts.out))
    throw std::invalid_argument("--out '" + opts.out + "' is a training checkpoint; choose " +
                                "another file name (export writes weights only)");
  if (std::filesystem::exists(opts.out, ec) && !model::is_safetensors(opts.out))
    throw std::invalid_argument("--out '" + opts.out + "' exists and is not a safetensors file; " +
                                "choose another file name");
  const model::Checkpoint ckpt =
      model::read_checkpoint_model(model::checkpoint_file(opts.checkpoint), opts.ema);
  if (opts.ema) train::warn_if_moving_average_is_young(ckpt.path, ckpt.state);
  model::VisionTransformer vit(ckpt.config);
  model::load_checkpoint_model(vit, ckpt);
  const data::MadeFolder made(std::filesystem::path(opts.out).parent_path().string());
  model::save_weights(opts.out, vit, ckpt.class_names);
  std::printf("wrote %s: %s%s, %zu tensors, %lld parameters, timm names\n", opts.out.c_str(),
              ckpt.config.name.c_str(), opts.ema ? " (moving average)" : "",
              vit.parameters().size(), static_cast<long long>(vit.parameters().element_count()));
}

}  // namespace

void add_export_command(CLI::App& app) {
  auto opts = std::make_shared<ExportOptions>();
  CLI::App* cmd = app.add_subcommand(
      "export", "Write a checkpoint's model weights as safetensors with timm's names");
  cmd->add_option("--checkpoint", opts->checkpoint,
                  "Checkpoint written by deit train (or its run folder)")
      ->required();
  cmd->add_option("--out", opts->out,
                  "Weights file to write (.safetensors; its folder is made if missing)")
      ->required();
  cmd->add_flag("--ema", opts->ema,
                "Write the moving average of the weights the run kept (--model-ema) instead");
  cmd->callback([opts] { run_export(*opts); });
}

}  // namespace deit::apps
