// One run of train() on this process: the state its stages share (Run) and each epoch's (Epoch),
// internal to the trainer. train/trainer.cpp calls the stages in order; train/run_setup.cpp defines
// those up to the first step (data, output folder, model, resume, optimizer, loaders), and
// train/run_epoch.cpp those of each epoch (its steps, evaluation, checkpoint and log line).
#pragma once
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/image_source.h"
#include "data/prefetch.h"
#include "engine/communicator.h"
#include "engine/cuda_context.h"
#include "engine/ema.h"
#include "engine/gradient_reducer.h"
#include "engine/rng.h"
#include "engine/schedule.h"
#include "engine/sharded_optimizer.h"
#include "model/checkpoint.h"
#include "model/vit.h"
#include "train/data_pipeline.h"
#include "train/evaluate.h"
#include "train/graph_step.h"
#include "train/input_feed.h"
#include "train/output_folder.h"
#include "train/progress.h"
#include "train/recipe.h"
#include "train/run_state.h"
#include "train/step_readback.h"
#include "train/stop_request.h"
#include "train/trainer.h"

namespace deit::train::detail {

// Random streams of the trainer, each named by what it is for. A seed of their own keeps them
// apart from the sampler's and the augmentation's streams (data/sampler.h).
enum class Stream : uint64_t { kInit = 1, kMix = 2, kDropPath = 3 };

inline Rng stream_rng(uint64_t seed, Stream purpose, int64_t epoch = 0, uint64_t batch = 0) {
  constexpr uint64_t kTrainerSalt = 0x7472616696e6572ull;
  return Rng(seed ^ kTrainerSalt,
             (static_cast<uint64_t>(epoch) << 34) ^ (batch << 4) ^ static_cast<uint64_t>(purpose));
}

inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// --device: cpu, cuda:N, or a bare cuda, the GPU of the process's local rank on its node. The
// options keep the bare form, which the checkpoint saves: a resumed run of several processes
// spreads over the GPUs again.
Device run_device(const std::string& flag, int local_rank);

// The run state of the checkpoint at `checkpoint` (its metadata `state`), or an error naming it.
RunState saved_run_of(const std::string& checkpoint, const nlohmann::json& state);

// What refuses to resume the run `saved` with `o`, whatever the data and the launch: a run with
// nothing left to train, another optimizer (its state would not fit).
void refuse_unresumable(const TrainOptions& o, const RunState& saved);

// One epoch of the run while it trains: where it starts, how far it is, and its sums so far.
struct Epoch {
  int64_t number = 0;  // 0-based
  std::chrono::steady_clock::time_point start;
  double lr = 0;
  // Batches are numbered from the epoch's start, also when it resumes in the middle: the number
  // names the random streams. The same on every rank: each rank's share has the same length.
  int64_t first_batch = 0;  // the first this run trains (0 but in a resumed epoch)
  int64_t batches = 0;      // in the whole epoch
  int64_t done = 0;         // batches done so far, counted from the epoch's start
  // The batch losses summed so far and their count; on rank 0 of a resumed epoch, starting from
  // the sums the checkpoint holds (all ranks'), so that one rank adds to the same sum in the
  // same order as a run never stopped.
  double loss_sum = 0;
  int64_t counted = 0;
  int64_t counted_before = 0;  // of those, the ones the checkpoint held
  // This rank's images trained so far; once sum_epoch has run, the epoch's over every rank.
  int64_t images = 0;
  double carried_images = 0, carried_seconds = 0;  // the epoch before the resumption
  // The micro-batches of the current optimizer step whose loss is not counted yet, and their
  // losses once on the host: on the CPU each at once, on CUDA all at the end of the step.
  struct MicroBatch {
    uint64_t number;
    int64_t images;
  };
  std::vector<MicroBatch> uncounted;
  std::vector<double> uncounted_losses;
  // Once it is trained (sum_epoch): its mean loss over every rank, and its training time (a
  // resumed epoch's counted whole).
  double train_loss = 0;
  double train_seconds = 0;
};

// A run of train() on this process: what its stages share, each made by the first stage that
// needs it. train() calls the stages in order; the members are declared in that order, so that
// they are destroyed in the reverse one (the output folder's lock after the loaders' threads, the
// stop signals' handlers first).
struct Run {
  Run(TrainOptions options, Communicator& comm);

  // The stages of a run, in the order train() calls them.
  void agree_on_build();
  void open_data();
  std::string claim_output_folder();
  void agree_across_ranks(const std::string& output_refusal);
  void warn_of_doubtful_settings();
  void build_model();
  std::optional<model::Checkpoint> resume_model();
  void start_from_rank_0_weights();
  void build_optimizer();
  void begin_summary(bool resuming);
  void open_train_loader();
  void resume_optimizer(const model::Checkpoint& resumed);
  void resume_data_position();
  void prepare_steps();
  void start_training();
  Epoch begin_epoch(int64_t number);
  bool train_epoch(Epoch& epoch);
  void sum_epoch(Epoch& epoch);
  void warn_of_lost_classes();
  EvalResult evaluate_epoch(const Epoch& epoch);
  void save_and_log_epoch(const Epoch& epoch, const EvalResult& eval);
  bool stopped_during_evaluation(const Epoch& epoch);
  TrainSummary finish();

  // What the stages call.
  ParameterRegistry& params() { return vit->parameters(); }
  Tensor loss_of(const Tensor& logits, const Tensor& targets) const;
  const Tensor& grad_loss_for(int64_t micro_batches);
  bool train_micro_batch(Epoch& epoch, const FeedBatch& batch);
  void capture_step(const Tensor& images, const Tensor& targets, const Tensor& keep_scales);
  void run_eager_step(Epoch& epoch, const Tensor& images, const Tensor& targets,
                      const Tensor& keep_scales, uint64_t number, bool step_now);
  void finish_cuda_step(Epoch& epoch);
  void check_loss(const Epoch& epoch, double loss_value, uint64_t batch_number);
  void count_losses(Epoch& epoch, Progress& progress);
  std::vector<double> epoch_totals(const Epoch& epoch);
  void save_within_epoch(const Epoch& epoch);
  void save_epoch(const Epoch& epoch);
  void write_checkpoint(int64_t epochs_done, const std::optional<WithinEpoch>& within,
                        const data::SamplerState& sampler);

  const std::chrono::steady_clock::time_point run_start;
  TrainOptions o;
  Communicator& comm;
  const Device device;
  const int rank, world;
  // Rank 0 alone writes the run's files and shows progress; the other ranks never touch OUTPUT.
  const bool lead;
  const std::string checkpoint_path, log_path;  // OUTPUT/checkpoint.safetensors, OUTPUT/log.txt

  std::shared_ptr<const data::ImageSource> train_source, val_source;
  std::string train_listing;
  int64_t classes = 0;
  std::optional<OutputFolder> output_folder;  // rank 0's

  // On CUDA: fp32 master weights with their bf16 copies (engine/parameters.h), initialised from
  // the host's random draws, so a CUDA run starts from the CPU run's weights.
  std::optional<model::VisionTransformer> vit;
#if DEIT_HAVE_CUDA
  // For this run: a GEMM's plan settles on its first run, in step one.
  std::optional<CublasLtSettingsScope> gemm_settings;
#endif
  // Where the resumed run stands. A checkpoint saved in the middle of an epoch (a stop signal,
  // --save-every): the run goes on from the step it saved, with the epoch's sums so far (every
  // rank's; rank 0 carries them).
  RunState saved_run;
  int64_t start_epoch = 0;

  std::optional<ShardedOptimizer> optimizer;
  std::optional<GradientReducer> reducer;
  std::unique_ptr<WeightEma> ema;
  std::optional<CosineSchedule> schedule;

  TrainSummary summary;

  DataShard shard;
  data::PixelFormat format = data::PixelFormat::kFloat32;
  std::unique_ptr<data::PrefetchLoader> train_loader;
  uint64_t resume_position = 0;  // in this rank's entries of the epoch start_epoch
  std::unique_ptr<data::PrefetchLoader> val_loader;
  std::optional<InputFeed> train_feed, val_feed;

  // CUDA: the host reads each optimizer step's losses and gradient norm with one wait.
  std::optional<StepReadback> readback;
  std::map<int64_t, Tensor> grad_loss_of;  // by micro-batches in the step; made once each
  // --cuda-graph: every optimizer step after the run's first (eager, which warms the plans and the
  // allocator's cache) replays one captured step (train/graph_step.h; --accum-steps is 1).
  std::unique_ptr<GraphStep> graph_step;
  bool warm = false;  // an eager optimizer step has run

  std::chrono::steady_clock::time_point last_save;
  nlohmann::json last_log_line;  // each checkpoint keeps it
  std::optional<StopSignals> stop_signals;

  int64_t train_images = 0;
  double train_seconds = 0;
  std::set<int> lost_classes;  // warned about
};

}  // namespace deit::train::detail
