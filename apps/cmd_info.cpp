// deit info: what a model costs before anyone trains it.
#include <cstdio>
#include <memory>

#include <nlohmann/json.hpp>

#include "apps/commands.h"
#include "apps/model_options.h"
#include "model/cost.h"

namespace deit::apps {

namespace {

struct InfoOptions {
  ModelOptions model;
  bool recompute_gelu = false;
  bool grad_checkpointing = false;
  bool json = false;
};

void run_info(const InfoOptions& opts) {
  const model::ViTConfig c = opts.model.apply_to(model::preset(opts.model.model));
  const int64_t params = model::parameter_count(c);
  const double gmacs = static_cast<double>(model::forward_macs(c)) / 1e9;
  const model::ActivationOptions kept{opts.recompute_gelu, opts.grad_checkpointing};
  const int64_t act_bf16 = model::activation_bytes_per_image(c, 2, 4, kept);
  const int64_t act_f32 = model::activation_bytes_per_image(c, 4, 4, kept);
  // With checkpointing, backward also holds the block it is recomputing.
  const int64_t recompute_bf16 =
      opts.grad_checkpointing
          ? model::block_activation_bytes_per_image(c, 2, 4, opts.recompute_gelu)
          : 0;
  constexpr double MiB = 1024.0 * 1024.0;
  if (opts.json) {
    nlohmann::ordered_json j;
    j["model"] = c.name;
    j["patch"] = c.patch;
    j["dim"] = c.dim;
    j["depth"] = c.depth;
    j["heads"] = c.heads;
    j["head_dim"] = c.head_dim();
    j["num_classes"] = c.num_classes;
    j["input_size"] = c.input_size;
    j["tokens"] = c.tokens();
    j["params"] = params;
    j["gmacs"] = gmacs;
    j["train_gflops_per_image"] = 6.0 * gmacs;
    j["activation_bytes_per_image_bf16"] = act_bf16;
    j["activation_bytes_per_image_f32"] = act_f32;
    j["recompute_bytes_per_image_bf16"] = recompute_bf16;
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  std::printf("model            %s\n", c.name.c_str());
  std::printf("shape            patch %lld, dim %lld, depth %lld, heads %lld (head dim %lld), "
              "%lld classes\n",
              (long long)c.patch, (long long)c.dim, (long long)c.depth, (long long)c.heads,
              (long long)c.head_dim(), (long long)c.num_classes);
  std::printf("input            %lld x %lld px -> %lld x %lld patches + class token = %lld tokens\n",
              (long long)c.input_size, (long long)c.input_size, (long long)c.grid(),
              (long long)c.grid(), (long long)c.tokens());
  std::printf("parameters       %lld (%.1fM)\n", (long long)params, params / 1e6);
  std::printf("forward          %.2f GMACs per image (training ~%.1f GFLOP per image)\n", gmacs,
              6.0 * gmacs);
  std::printf("activations      %.1f MiB per image saved for backward (CUDA: bf16, with an fp32 "
              "residual stream), %.1f MiB in fp32%s\n",
              act_bf16 / MiB, act_f32 / MiB,
              opts.grad_checkpointing ? ", blocks checkpointed"
              : opts.recompute_gelu   ? ", GELU recomputed"
                                      : "");
  if (opts.grad_checkpointing)
    std::printf("recompute        +%.1f MiB per image (bf16) while backward recomputes a block\n",
                recompute_bf16 / MiB);
}

}  // namespace

void add_info_command(CLI::App& app) {
  auto opts = std::make_shared<InfoOptions>();
  CLI::App* cmd = app.add_subcommand("info", "Parameters, GMACs and activation memory of a model");
  opts->model.add_to(*cmd, "224");
  cmd->add_flag("--recompute-gelu", opts->recompute_gelu,
                "Activation memory as deit train --recompute-gelu keeps it");
  cmd->add_flag("--grad-checkpointing", opts->grad_checkpointing,
                "Activation memory as deit train --grad-checkpointing keeps it");
  cmd->add_flag("--json", opts->json, "Print one JSON object (fields include params, gmacs)");
  cmd->callback([opts] { run_info(*opts); });
}

}  // namespace deit::apps
