#include "train/trainer.h"

#include <cstdio>
#include <memory>

#include "data/made_folder.h"
#include "engine/rendezvous.h"
#include "model/checkpoint.h"
#include "train/output_folder.h"
#include "train/run.h"

namespace deit::train {

using detail::Epoch;
using detail::refuse_unresumable;
using detail::Run;
using detail::run_device;
using detail::saved_run_of;

TrainSummary train(TrainOptions options) {
  const Rendezvous rendezvous = detect_rendezvous();
  const std::unique_ptr<Communicator> comm =
      make_communicator(run_device(options.device, rendezvous.local_rank), rendezvous);
  return train(std::move(options), *comm);
}

void warn_of_course_changes(const TrainOptions& o, const nlohmann::json& saved_options) {
  const std::vector<TrainOptions::Difference> changed = o.course_differences(saved_options);
  if (changed.empty()) return;
  std::string list;
  for (const TrainOptions::Difference& c : changed)
    list += (list.empty() ? "" : ", ") + c.key + " " + c.saved.dump() + " -> " + c.now.dump();
  std::fprintf(stderr,
               "warning: resuming '%s' with settings that differ from its run's: %s. The run goes "
               "on with the new ones, so it will not end where the uninterrupted run would have.\n",
               o.resume.c_str(), list.c_str());
}

void check_before_data(const TrainOptions& o) {
  o.validate();
  refuse_output_in_splits(o);
  data::refuse_file_in_the_way(o.output_dir);
  refuse_other_run(o.output_dir, resumes_its_checkpoint(o));
  if (!o.resume.empty())
    refuse_unresumable(o, saved_run_of(o.resume, model::read_checkpoint_header(o.resume).state));
}

// The outline of a run; each stage is a method of Run. Every rank calls the stages in this order,
// as the collectives inside them need (the weights' broadcast, the gradients' reduction, the
// checkpoints' gathering of the optimizer state, the evaluation's sums).
TrainSummary train(TrainOptions o, Communicator& comm) {
  Run run(std::move(o), comm);  // its device, its rank
  run.agree_on_build();         // the first collective: another build may call others
  run.open_data();
  const std::string output_refusal = run.claim_output_folder();
  run.agree_across_ranks(output_refusal);
  run.warn_of_doubtful_settings();

  run.build_model();
  std::optional<model::Checkpoint> resumed = run.resume_model();
  run.start_from_rank_0_weights();
  run.build_optimizer();
  run.begin_summary(resumed.has_value());
  run.open_train_loader();
  if (resumed) {
    run.resume_optimizer(*resumed);
    run.resume_data_position();
    // Only once nothing refuses the resumption:
    if (run.lead) warn_of_course_changes(run.o, run.saved_run.options);
    resumed.reset();  // its tensors are copied into the model and the state
  }
  run.prepare_steps();

  run.start_training();
  for (int64_t number = run.start_epoch; number < run.o.epochs; ++number) {
    Epoch epoch = run.begin_epoch(number);
    if (!run.train_epoch(epoch)) break;  // a stop signal: saved where it stopped
    run.sum_epoch(epoch);
    run.warn_of_lost_classes();
    const EvalResult eval = run.evaluate_epoch(epoch);
    run.save_and_log_epoch(epoch, eval);
    if (run.stopped_during_evaluation(epoch)) break;
  }
  return run.finish();
}

}  // namespace deit::train
