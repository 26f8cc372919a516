// Each `deit` subcommand lives in its own apps/cmd_<name>.cpp and registers itself here.
#pragma once
#include <CLI/CLI.hpp>

namespace deit::apps {

void add_info_command(CLI::App& app);
void add_pack_command(CLI::App& app);
void add_augment_command(CLI::App& app);
void add_train_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_demo_command(CLI::App& app);
void add_export_command(CLI::App& app);
void add_bench_command(CLI::App& app);
// `deit bench data` (apps/cmd_bench_data.cpp), registered under `deit bench` by add_bench_command.
void add_bench_data_subcommand(CLI::App& bench);

// Thrown by a command that a signal stopped once it has saved and said so: `deit` then ends as
// the signal would have ended it (main.cpp), so that a shell script running deit stops too.
struct EndBySignal {
  int signal;
};

}  // namespace deit::apps
