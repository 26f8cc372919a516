// deit: the one binary. Each subcommand is registered from its own apps/cmd_<name>.cpp.
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "apps/cli_checks.h"
#include "apps/commands.h"
#include "apps/reference_flags.h"
#include "engine/allocator.h"
#include "engine/build_fingerprint.h"
#include "engine/openmp_environment.h"
#include "engine/rendezvous.h"

// GNU OpenMP reads its settings once, as the library loads, before main runs; so unless the user
// chose them, deit sets them and restarts itself. OMP_WAIT_POLICY: OpenMP threads that spin while
// they wait for work steal the cores from the data-loading threads (and from everything else on a
// shared machine): measured 20x slower training steps on a busy 2-core machine; the passive policy
// sleeps. OMP_NUM_THREADS: the process's share of the cores, where a launcher started several on
// one machine without binding them (engine/openmp_environment.h).
static void choose_openmp_settings(char** argv) {
  bool changed = false;
  if (!std::getenv("OMP_WAIT_POLICY")) {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    changed = true;
  }
  if (const std::optional<int> threads = deit::openmp_threads_for_this_process()) {
    setenv("OMP_NUM_THREADS", std::to_string(*threads).c_str(), 1);
    changed = true;
  }
  if (changed) execv("/proc/self/exe", argv);  // returns only on failure: run with the defaults
}

// CLI11 answers a misspelt command ("deit trian", "deit bench stpe"), or an option where a command
// should be ("deit --epochs 3"), with "A subcommand is required". Returns what to say instead, or
// "" when argv names its commands correctly.
static std::string unknown_command(const CLI::App& app, int argc, char** argv) {
  const CLI::App* current = &app;
  std::string path = "deit";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (current->get_require_subcommand_min() == 0) return "";  // options and values from here
    std::string names;
    const CLI::App* next = nullptr;
    for (const CLI::App* sub : current->get_subcommands([](const CLI::App*) { return true; })) {
      names += (names.empty() ? "" : ", ") + sub->get_name();
      if (sub->get_name() == arg) next = sub;
    }
    if (next) {
      current = next;
      path += " " + next->get_name();
      continue;
    }
    if (arg == "-h" || arg == "--help" || (current == &app && arg == "--version")) return "";
    return (arg[0] == '-' ? "option '" + arg + "' where a command should be"
                          : "unknown command '" + arg + "'") +
           "; the commands of " + path + " are " + names + " (" + path + " --help describes them)";
  }
  return "";
}

// "" when the command `words` name (deit's first arguments) may run here; else why not. Only
// train and bench step run across processes: another command a launcher started would run once in
// each process, every one doing and printing the same. deit info, which reads and prints, may run
// anywhere (a job's script may call it, and its processes inherit the launch's variables).
static std::string refusal_of_several_processes(const std::vector<std::string>& words) {
  const bool help = std::find(words.begin(), words.end(), "--help") != words.end() ||
                    std::find(words.begin(), words.end(), "-h") != words.end();
  if (words.empty() || words[0][0] == '-' || help) return "";
  const std::string command =
      words[0] == "bench" && words.size() > 1 ? "bench " + words[1] : words[0];
  if (command == "train" || command == "bench step" || command == "info") return "";
  deit::Rendezvous launch;
  try {
    launch = deit::detect_rendezvous();
  } catch (const std::invalid_argument&) {  // stray variables of no launch this command needs
    return "";
  }
  if (launch.world_size == 1) return "";
  return "deit " + command + " runs as one process, and this one was started as " +
         launch.describe() + ": start it without the launcher (deit train and deit bench step " +
         "are the commands that run across processes)";
}

// How an error begins: in a launch of several processes, with the rank, so that the error of one
// process can be told from the same error of every one.
static std::string error_prefix() {
  try {
    const deit::Rendezvous launch = deit::detect_rendezvous();
    if (launch.world_size > 1)
      return "deit: error (rank " + std::to_string(launch.rank) + " of " +
             std::to_string(launch.world_size) + "): ";
  } catch (const std::exception&) {  // a launch it cannot read: its own error says so
  }
  return "deit: error: ";
}

int main(int argc, char** argv) {
  choose_openmp_settings(argv);
  CLI::App app{"deit: train Vision Transformers with the DeiT III recipe (C++/CUDA)."};
  // The build, which every process of a job must share (train/rank_agreement.h: agree_on_build).
  app.set_version_flag("--version", std::string("deit 0.1.0 (build ") + deit::build_fingerprint() +
                                        ": " + deit::build_features() + ")");
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
  deit::apps::add_bench_command(app);
  deit::apps::check_every_value(app);
  if (const std::string unknown = unknown_command(app, argc, argv); !unknown.empty()) {
    std::fprintf(stderr, "deit: error: %s\n", unknown.c_str());
    return 1;
  }
  try {
    if (const std::string refusal =
            refusal_of_several_processes(std::vector<std::string>(argv + 1, argv + argc));
        !refusal.empty()) {
      std::fprintf(stderr, "%s%s\n", error_prefix().c_str(), refusal.c_str());
      return 1;
    }
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version come this way too, to print and exit 0. A command line that does not
    // parse is an error like any other: its message, exit code 1.
    if (e.get_exit_code() == 0) return app.exit(e);
    const std::vector<std::string> extras = app.remaining(true);
    if (dynamic_cast<const CLI::ExtrasError*>(&e)) {
      // CLI11 2.1 lists them last first ("/x --data-path"): in the order given.
      std::string listed;
      for (const std::string& arg : extras) listed += " " + arg;
      std::fprintf(stderr, "%sarguments this command does not take:%s (--help lists the options)\n",
                   error_prefix().c_str(), listed.c_str());
    } else {
      std::fprintf(stderr, "%s%s (--help lists the options)\n", error_prefix().c_str(), e.what());
    }
    // The reference code's options among them, whichever error CLI11 met first (a --data that
    // --data-path was meant to give is missing, say).
    for (const std::string& note : deit::apps::reference_option_notes(extras))
      std::fprintf(stderr, "deit: note: %s\n", note.c_str());
    return 1;
  } catch (const deit::apps::EndBySignal& end) {
    // What is left to print may go to a pipe whose reader the same signal ended (Ctrl-C on
    // `deit train | tee`): the process ends by the signal, not by SIGPIPE.
    std::signal(SIGPIPE, SIG_IGN);
    std::fflush(nullptr);
    std::signal(end.signal, SIG_DFL);
    std::raise(end.signal);
    return 128 + end.signal;  // the shell's code for it, where the signal does not end a process
  } catch (const deit::OutOfMemory& e) {
    std::fprintf(stderr,
                 "%s%s\n"
                 "A smaller --batch-size needs less; so do, when training, --grad-checkpointing "
                 "(a block keeps 2 of its 18 activations) and --recompute-gelu (14 of 18). "
                 "`deit info --model NAME` shows the activation memory per image.\n",
                 error_prefix().c_str(), e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    // A host allocation the caching allocator does not make (image buffers, host tables): the
    // sizes asked for (batch, image or model sizes) need more memory than the machine has.
    std::fprintf(stderr,
                 "%sout of host memory: the sizes asked for (batch, image or model size) need "
                 "more memory than this machine has\n",
                 error_prefix().c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s%s\n", error_prefix().c_str(), e.what());
    return 1;
  }
  return 0;
}
