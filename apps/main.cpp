// deit: the one binary. Each subcommand is registered from its own apps/cmd_<name>.cpp.
#include <cstdio>
#include <exception>

#include "apps/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"deit: train Vision Transformers with the DeiT III recipe (C++/CUDA)."};
  app.set_version_flag("--version", "deit 0.1.0");
  app.require_subcommand(1);
  // As with argparse, a flag given twice takes its last value, so a script can append overrides.
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  deit::apps::add_demo_command(app);
  deit::apps::add_train_command(app);
  deit::apps::add_eval_command(app);
  deit::apps::add_info_command(app);
  deit::apps::add_pack_command(app);
  deit::apps::add_augment_command(app);
  deit::apps::add_export_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "deit: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
