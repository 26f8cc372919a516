// deit train: the DeiT III recipe on a dataset, with every flag of the reference code.
#include <cstdio>
#include <filesystem>
#include <memory>

#include "apps/commands.h"
#include "apps/train_flags.h"
#include "engine/rendezvous.h"
#include "model/checkpoint.h"
#include "train/progress.h"
#include "train/shell_quoted.h"
#include "train/stop_request.h"
#include "train/trainer.h"

namespace deit::apps {

namespace {

void print_stop(const train::TrainSummary& s, const std::string& program) {
  const train::StoppedAt& at = s.stop;
  std::string received = train::signal_name(at.signal);
  if (s.world_size > 1) received += " on rank " + std::to_string(at.rank);
  if (at.batches_done > 0)
    std::printf("stopped by %s in epoch %lld, after %lld of its %lld batches\n", received.c_str(),
                (long long)at.epoch + 1, (long long)at.batches_done, (long long)at.batches);
  else
    std::printf("stopped by %s after epoch %lld\n", received.c_str(), (long long)at.epoch);
  std::printf("checkpoint %s holds the run there\n", s.checkpoint.c_str());
  std::error_code ec;
  if (std::filesystem::exists(s.log, ec)) std::printf("log        %s\n", s.log.c_str());
  std::printf("continue:  %s train --resume %s", shell_quoted(program).c_str(),
              shell_quoted(s.checkpoint).c_str());
  if (s.world_size > 1) std::printf("  (launched as this run was, %d processes)", s.world_size);
  std::printf("\n");
}

void print_summary(const train::TrainSummary& s) {
  std::printf("trained %lld epoch%s", (long long)s.epochs_run, s.epochs_run == 1 ? "" : "s");
  if (s.resumed_at_batch > 0)
    std::printf(" (%sresumed at its batch %lld of %lld)", s.epochs_run > 1 ? "the first " : "",
                (long long)s.resumed_at_batch + 1, (long long)s.resumed_epoch_batches);
  std::printf(" in %s (%.0f images/s)\n", train::format_duration(s.seconds).c_str(),
              s.train_images_per_second);
  std::printf("final     top-1 %.2f%%  top-5 %.2f%%  loss %.4f  (%lld val images)\n", s.last.acc1,
              s.last.acc5, s.last.loss, (long long)s.last.images);
  std::printf("best      top-1 %.2f%% after epoch %lld\n", s.best_acc1,
              (long long)s.best_epoch + 1);
  if (s.skipped_images > 0)
    std::printf("skipped   %lld unusable image file%s (see the warnings above)\n",
                (long long)s.skipped_images, s.skipped_images == 1 ? "" : "s");
  std::printf("checkpoint %s\nlog        %s\n", s.checkpoint.c_str(), s.log.c_str());
  if (s.stop.finished)
    std::printf("%s came during the last evaluation: the run had finished all its epochs\n",
                train::signal_name(s.stop.signal).c_str());
}

}  // namespace

void report_training(const train::TrainSummary& s, const std::string& program) {
  // A run that had finished when the signal came ends as finished runs do (a job script that
  // resumes after a stop signal would otherwise resume a run with nothing left to train).
  const bool cut_short = s.stop.signal != 0 && !s.stop.finished;
  if (s.rank == 0) {  // once per run
    if (cut_short)
      print_stop(s, program);
    else
      print_summary(s);
  }
  if (cut_short) throw EndBySignal{s.stop.signal};
}

void add_train_command(CLI::App& app) {
  auto flags = std::make_shared<TrainFlags>();
  CLI::App* cmd = app.add_subcommand("train", "Train (or resume, or fine-tune) a DeiT III ViT");
  flags->add_to(*cmd);
  cmd->footer(TrainFlags::recipes_help() +
              "\nCtrl-C, SIGTERM, SIGUSR1 or SIGHUP (the terminal closed) stops a run after the "
              "optimizer step it is in, with a checkpoint of that step; --resume continues from "
              "there (a second signal, SIGHUP aside, stops at once).\n"
              "\nSeveral processes (one per GPU, data-parallel): launch this command with mpirun "
              "-np N, torchrun --nproc-per-node N --no-python, or srun; each reads its rank from "
              "its launcher. A process waits DEIT_COMM_TIMEOUT seconds (" +
              std::to_string(Rendezvous{}.comm_timeout.count()) +
              ") for the others before it ends the job with an error (README, \"Multi-GPU / "
              "multi-node\").");
  // CLI11 names the top-level app after argv[0] as it parses.
  cmd->callback([flags, cmd] {
    const train::TrainOptions options = flags->resolve();
    if (!flags->dry_run)
      return report_training(train::train(options), cmd->get_parent()->get_name());
    train::check_before_data(options);
    // Under a launch of several processes, one says it: the settings are every rank's.
    if (launch_rank_or_zero() != 0) return;
    if (!options.resume.empty())
      train::warn_of_course_changes(options, model::read_checkpoint_header(options.resume)
                                                 .state.value("options", nlohmann::json::object()));
    nlohmann::json settings = options.to_json();
    if (!options.num_classes_given) settings["num_classes"] = nullptr;  // the dataset's, unread
    std::printf("%s\n", settings.dump(2).c_str());
  });
}

}  // namespace deit::apps
