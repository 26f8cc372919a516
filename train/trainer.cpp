#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <map>
#include <optional>
#include <set>

#include "data/augment_params.h"
#include "data/image.h"
#include "data/image_source.h"
#include "data/mixup.h"
#include "data/xxhash64.h"
#include "engine/autograd.h"
#include "engine/cuda_context.h"
#include "engine/ema.h"
#include "engine/gradient_reducer.h"
#include "engine/ops.h"
#include "engine/schedule.h"
#include "engine/sharded_optimizer.h"
#include "engine/stream.h"
#include "kernels/augment.h"
#include "model/checkpoint.h"
#include "train/data_pipeline.h"
#include "train/finetune.h"
#include "train/graph_step.h"
#include "train/input_feed.h"
#include "train/output_folder.h"
#include "train/progress.h"
#include "train/rank_agreement.h"
#include "train/run_log.h"
#include "train/run_state.h"
#include "train/step_readback.h"
#include "train/stop_request.h"

namespace deit::train {

namespace {

namespace fs = std::filesystem;

// Random streams of the trainer, each named by what it is for. A seed of their own keeps them
// apart from the sampler's and the augmentation's streams (data/sampler.h).
enum class Stream : uint64_t { kInit = 1, kMix = 2, kDropPath = 3 };

Rng stream_rng(uint64_t seed, Stream purpose, int64_t epoch = 0, uint64_t batch = 0) {
  constexpr uint64_t kTrainerSalt = 0x7472616696e6572ull;
  return Rng(seed ^ kTrainerSalt,
             (static_cast<uint64_t>(epoch) << 34) ^ (batch << 4) ^ static_cast<uint64_t>(purpose));
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// What a resumed checkpoint holds beside the weights, which rank 0 broadcasts: its run state, its
// optimizer moments and its EMA. Copies of one checkpoint agree (rank 0 alone writes them).
std::string resumed_state_fingerprint(const model::Checkpoint& checkpoint) {
  const std::string state = checkpoint.state.dump();
  uint64_t hash = data::xxhash64(state.data(), state.size());
  for (const auto& [name, tensor] : checkpoint.extra) {
    hash = data::xxhash64(name.data(), name.size(), hash);
    hash = data::xxhash64(tensor.raw_data(), tensor.nbytes(), hash);
  }
  return std::to_string(hash);
}

// How many of a split's `images` some rank found unusable, each counted once: the train split is
// dealt out anew each epoch, so one file may be met by several ranks. Collective.
int64_t files_skipped_by_any_rank(Communicator& comm, const data::SkippedImages& skipped,
                                  size_t images) {
  std::vector<double> any{static_cast<double>(skipped.count())};
  comm.all_reduce_sum(any);
  if (any[0] == 0) return 0;
  std::vector<double> met(images, 0.0);  // by index, summed over the ranks
  for (const int64_t index : skipped.indices()) met.at(static_cast<size_t>(index)) = 1;
  comm.all_reduce_sum(met);
  return std::count_if(met.begin(), met.end(), [](double ranks) { return ranks > 0; });
}

// Whether two fingerprints of a split's listing (ImageSource::listing_fingerprint) say that its
// indices hold other images: only two of one kind of source ("folder:", "shard:") can tell.
bool listings_differ(const std::string& saved, const std::string& now) {
  const size_t kind_end = saved.find(':');
  return kind_end != std::string::npos &&
         now.compare(0, kind_end + 1, saved, 0, kind_end + 1) == 0 && now != saved;
}

// A split of the dataset; `warn`: whether to say what its listing found amiss (rank 0 alone, so
// that a data-parallel run says it once).
std::shared_ptr<const data::ImageSource> open_split(const std::string& root, const char* split,
                                                    bool warn) {
  return std::shared_ptr<const data::ImageSource>(data::open_dataset_split(root, split, warn));
}

NamedTensors prefixed(const std::string& prefix, const NamedTensors& tensors) {
  NamedTensors out;
  for (const auto& [name, t] : tensors) out.emplace_back(prefix + name, t);
  return out;
}

NamedTensors unprefixed(const std::string& prefix, const NamedTensors& tensors) {
  NamedTensors out;
  for (const auto& [name, t] : tensors)
    if (name.rfind(prefix, 0) == 0) out.emplace_back(name.substr(prefix.size()), t);
  return out;
}

// The batch's mixup / cutmix (lambda 1, no mixing, when both are off), drawn from its own stream.
// `stream_batch` names the batch's random stream (the batch number on one rank).
data::MixParams draw_mix(const TrainOptions& o, int image_size, int64_t epoch,
                         uint64_t stream_batch) {
  data::MixParams mix;
  if (o.mixup > 0 || o.cutmix > 0) {
    data::MixupConfig config;
    config.mixup_alpha = o.mixup;
    config.cutmix_alpha = o.cutmix;
    config.switch_prob = o.mixup_switch_prob;
    config.prob = o.mixup_prob;
    Rng rng = stream_rng(o.seed, Stream::kMix, epoch, stream_batch);
    mix = data::sample_mix_params(config, image_size, image_size, rng);
  }
  return mix;
}

// The batch's targets (B, K): one-hot labels mixed with `mix` (applied to the images in place,
// on their device), binarised (target > 0 -> 1) for the BCE loss as the reference trainer does.
Tensor mix_batch(const TrainOptions& o, const data::MixParams& mix, Tensor& images,
                 const FeedBatch& batch) {
  const int B = static_cast<int>(images.size(0)), S = static_cast<int>(images.size(2));
  const int K = static_cast<int>(o.model.num_classes);
  const bool mixing = o.mixup > 0 || o.cutmix > 0;
  const Device device = images.device();
  Tensor targets = Tensor::empty({B, K}, DType::f32, device);
  if (device.is_cpu()) {
    if (mixing) data::apply_mix(mix, images.data<float>(), B, 3, S, S);
    data::mix_targets(mix, batch.labels->data(), B, K, o.smoothing, targets.data<float>(),
                      o.bce_loss);
    return targets;
  }
#if DEIT_HAVE_CUDA
  kernels::check_labels(batch.labels->data(), B, K);  // a kernel cannot report a bad one
  const cudaStream_t stream = compute_stream(device.index);
  if (mixing) kernels::mix_images_cuda(mix, images.data<float>(), B, 3, S, S, stream);
  kernels::mix_targets_cuda(mix, batch.device_labels, B, K, o.smoothing, o.bce_loss,
                            targets.data<float>(), stream);
#endif
  return targets;
}

// --device: cpu, cuda:N, or a bare cuda, the GPU of the process's local rank on its node. The
// options keep the bare form, which the checkpoint saves: a resumed run of several processes
// spreads over the GPUs again.
Device run_device(const std::string& flag, int local_rank) {
  return flag == "cuda" ? Device::cuda(local_rank) : parse_device(flag);
}

// What the run is about to do, on stderr before its first step: the model and data, the length of
// an epoch, and the global batch, which the recipe's learning rate assumes (it is not scaled with
// the batch, so a run on fewer processes than the recipe's trains differently).
void print_run_start(const TrainOptions& o, const data::ImageSource& train_source,
                     const Communicator& comm, int64_t batches_per_epoch, int64_t start_epoch,
                     int64_t resumed_batches) {
  const int world = comm.world_size();
  const int64_t steps = (batches_per_epoch + o.accum_steps - 1) / o.accum_steps;
  std::fprintf(
      stderr,
      "training %s with the %s recipe on %s (%zu images, %zu classes), %lld epoch%s of %lld "
      "optimizer step%s, on %s\n",
      o.model.name.c_str(), o.recipe.c_str(), o.data_dir.c_str(), train_source.size(),
      train_source.class_names().size(), (long long)o.epochs, o.epochs == 1 ? "" : "s",
      (long long)steps, steps == 1 ? "" : "s", o.device.c_str());
  if (!o.resume.empty()) {
    std::fprintf(stderr, "resuming %s in epoch %lld", o.resume.c_str(), (long long)start_epoch + 1);
    if (resumed_batches > 0)
      std::fprintf(stderr, " after %lld of its batches", (long long)resumed_batches);
    std::fprintf(stderr, "\n");
  }
  const int64_t global_batch = o.batch_size * o.accum_steps * world;
  std::fprintf(stderr, "global batch %lld = %lld per process", (long long)global_batch,
               (long long)o.batch_size);
  if (o.accum_steps > 1) std::fprintf(stderr, " x %lld accumulated", (long long)o.accum_steps);
  std::fprintf(stderr, " x %d process%s", world, world == 1 ? "" : "es");
  // Which library averages the gradients: a one-rank NCCL run (DEIT_NCCL_ONE_RANK) says so.
  const std::string backend = comm.backend();
  if (backend != "single")
    std::fprintf(stderr, " (gradients averaged through %s)", backend == "nccl" ? "NCCL" : "MPI");
  const RecipeStage& stage = recipe_stage(o.recipe);
  const std::string preset = model::preset_of(o.model);
  if (!preset.empty() && global_batch != stage.global_batch)
    std::fprintf(stderr,
                 "; the %s %s recipe's is %lld, which its lr assumes (lr is not scaled "
                 "with the batch)",
                 preset.c_str(), stage.name, (long long)stage.global_batch);
  std::fprintf(stderr, "\n");
  if (!o.finetune.empty() && !stage.starts_from_weights)
    std::fprintf(stderr,
                 "note: fine-tuning with the %s recipe's values where no flag sets them; "
                 "--recipe finetune (or in21k-finetune) gives the reference's\n",
                 stage.name);
}

RunState saved_run_of(const std::string& checkpoint, const nlohmann::json& state) {
  try {
    return run_state_from_json(state);
  } catch (const std::exception& e) {
    throw std::runtime_error("checkpoint '" + checkpoint + "': " + e.what());
  }
}

// What refuses to resume the run `saved` with `o`, whatever the data and the launch: a run with
// nothing left to train, another optimizer (its state would not fit).
void refuse_unresumable(const TrainOptions& o, const RunState& saved) {
  if (saved.epochs_done >= o.epochs)
    throw std::runtime_error(
        "checkpoint '" + o.resume + "' has trained " + std::to_string(saved.epochs_done) +
        (saved.epochs_done == 1 ? " epoch" : " epochs") + " already, and --epochs is " +
        std::to_string(o.epochs) +
        ": nothing is left to train (give a larger --epochs to train further)");
  const std::string saved_opt = saved.options.value("opt", "");
  if (saved_opt != o.opt)
    throw std::runtime_error("checkpoint '" + o.resume + "' was trained with --opt " + saved_opt +
                             ", this run asks for " + o.opt);
}

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

Run::Run(TrainOptions options, Communicator& communicator)
    : run_start(std::chrono::steady_clock::now()),
      o(std::move(options)),
      comm(communicator),
      device(run_device(o.device, comm.local_rank())),
      rank(comm.rank()),
      world(comm.world_size()),
      lead(rank == 0),
      checkpoint_path((fs::path(o.output_dir) / "checkpoint.safetensors").string()),
      log_path((fs::path(o.output_dir) / "log.txt").string()) {
  require_device(device);
  if (comm.device() != device)
    throw std::invalid_argument("train: a " + std::string(comm.backend()) + " communicator on " +
                                comm.device().str() + " for a run on " + device.str());
}

// Opens the train and val splits, which must have the same classes, and settles the model's
// class count on them.
void Run::open_data() {
  o.validate();  // before anything is created; again once the dataset gives the class count
  train_source = open_split(o.data_dir, "train", lead);
  val_source = open_split(o.data_dir, "val", lead);
  train_listing = train_source->listing_fingerprint();
  if (train_source->class_names() != val_source->class_names())
    throw std::runtime_error("the train and val splits of '" + o.data_dir +
                             "' have different classes (" +
                             data::class_difference(train_source->class_names(), "train",
                                                    val_source->class_names(), "val") +
                             ")");
  classes = static_cast<int64_t>(train_source->class_names().size());
  if (!o.num_classes_given) o.model.num_classes = classes;
  if (o.model.num_classes < classes)
    throw std::invalid_argument(
        (o.resume.empty() ? "--num-classes " + std::to_string(o.model.num_classes) + " is"
                          : "checkpoint '" + o.resume + "' holds a model of " +
                                std::to_string(o.model.num_classes) + " classes,") +
        " fewer than the " + std::to_string(classes) + " classes of '" + o.data_dir + "'" +
        (o.resume.empty() ? ""
                          : ": resume it on its own dataset, or start a new run from it "
                            "with --finetune"));
  o.validate();
}

// Nothing is made for a bad run. Rank 0 alone writes to --output, and its refusal of it stops
// every rank (agree_across_ranks), as a collective it would miss would hang them. Returns that
// refusal where other ranks wait to hear it ("" when none).
std::string Run::claim_output_folder() {
  refuse_output_in_splits(o);
  std::string output_refusal;
  if (lead) {
    try {
      output_folder.emplace(o.output_dir, resumes_its_checkpoint(o));
    } catch (const std::exception& e) {
      if (world == 1) throw;
      output_refusal = e.what();
    }
  }
  return output_refusal;
}

// Before the first collective that depends on them (the weights' broadcast): every process runs
// the same command on the same classes, or all stop here, saying where they differ. Only the
// paths, the device and the loader's threads may differ; every other setting steers the run or
// which collectives it runs (--zero, --bucket-mb, --cuda-graph).
void Run::agree_across_ranks(const std::string& output_refusal) {
  if (world == 1) return;
  std::vector<double> refused{output_refusal.empty() ? 0.0 : 1.0};
  comm.all_reduce_sum(refused);
  if (!output_refusal.empty()) throw std::runtime_error(output_refusal);
  if (refused[0] > 0)
    throw std::runtime_error("rank 0 refused the run's --output (its message says why)");
  static const std::set<std::string> kMayDiffer = {"data",   "output",   "device", "workers",
                                                   "resume", "finetune", "model"};
  std::vector<std::pair<std::string, std::string>> entries;
  const nlohmann::json settings = o.to_json();  // items() refers to it
  for (const auto& [key, value] : settings.items())
    if (!kMayDiffer.count(key)) entries.emplace_back(key, value.dump());
  entries.emplace_back("resume", o.resume.empty() ? "no" : "yes");
  entries.emplace_back("the dataset's classes", nlohmann::json(train_source->class_names()).dump());
  // Each rank draws its share of one global order of the train split's images.
  entries.emplace_back("the train split's image count", std::to_string(train_source->size()));
  entries.emplace_back("the train split's images (by relative path, or a shard's content)",
                       train_listing);
  // Each rank scores its share of one val split, and the shares' counts are summed.
  entries.emplace_back(
      "the val split's images (by relative path, or a shard's content)",
      std::to_string(val_source->size()) + " " + val_source->listing_fingerprint());
  const std::vector<std::string> differ = entries_that_differ(comm, entries);
  if (!differ.empty()) {
    std::string list;
    for (const std::string& name : differ) list += (list.empty() ? "" : ", ") + name;
    throw std::invalid_argument("the " + std::to_string(world) + " processes of this run " +
                                "differ in " + list + ": every process must run the same " +
                                "command on a copy of the same dataset");
  }
}

// Settings that run but waste part of the work or mislead: said once, by rank 0.
void Run::warn_of_doubtful_settings() {
  if (const int64_t unseen = o.model.input_size % o.model.patch; lead && unseen != 0)
    std::fprintf(stderr,
                 "warning: --input-size %lld is not a multiple of the %lld-pixel patch: the last "
                 "%lld pixels of each row and column of an image are never seen (as in timm)\n",
                 (long long)o.model.input_size, (long long)o.model.patch, (long long)unseen);
  if (lead && o.resume.empty() && o.epochs <= o.warmup_epochs)
    std::fprintf(stderr,
                 "warning: the run's %lld epoch%s end%s within its %g warm-up epoch%s: its "
                 "learning rate never reaches --lr %g (a short trial run wants --warmup-epochs "
                 "0)\n",
                 (long long)o.epochs, o.epochs == 1 ? "" : "s", o.epochs == 1 ? "s" : "",
                 o.warmup_epochs, o.warmup_epochs == 1 ? "" : "s", o.lr);
  if (lead && classes == 1)
    std::fprintf(stderr,
                 "warning: '%s' has a single class ('%s'): a classifier of one class scores 100%% "
                 "whatever it learns (each subfolder of train/ and val/ is a class)\n",
                 o.data_dir.c_str(), train_source->class_names()[0].c_str());
  const std::string size = std::to_string(o.model.input_size);
  for (const std::string& warning :
       {data::packed_below(*train_source, o.model.input_size, "training at " + size + " needs"),
        data::packed_below(*val_source,
                           data::eval_resize_side(o.model.input_size, o.eval_crop_ratio),
                           "evaluation at " + size + " resizes to")})
    if (lead && !warning.empty()) std::fprintf(stderr, "%s\n", warning.c_str());
}

// The model, initialised from the run's seed, or from --finetune's weights.
void Run::build_model() {
  vit.emplace(o.model, device);
#if DEIT_HAVE_CUDA
  if (device.is_cuda()) {
    gemm_settings.emplace(device.index);
    gemm_settings->lt().set_autotune(o.gemm_autotune);
  }
#endif
  vit->set_recompute_gelu(o.recompute_gelu);
  // A CUDA graph's shapes are fixed, and its first, eager steps warm those shapes.
  vit->set_whole_batch_branches(o.whole_batch_branches || o.cuda_graph);
  vit->set_grad_checkpointing(o.grad_checkpointing);
  Rng init_rng = stream_rng(o.seed, Stream::kInit);
  vit->initialize(init_rng);
  if (!o.finetune.empty()) load_finetune_weights(*vit, o.finetune);
}

// --resume: reads the checkpoint, refuses one this run cannot go on from, and loads its weights
// into the model. Returns it for resume_optimizer (nothing without --resume); saved_run and
// start_epoch say where it stands.
std::optional<model::Checkpoint> Run::resume_model() {
  std::optional<model::Checkpoint> resumed;
  if (o.resume.empty()) return resumed;
  std::string read_error;
  try {
    resumed = model::read_checkpoint(o.resume);
  } catch (const std::exception& e) {
    read_error = e.what();
  }
  // Each rank reads its own copy (a folder on each node, say): a stale or another one would go
  // on from its own data position, optimizer moments and EMA under rank 0's weights. Compared
  // before any rank refuses on its own, which would leave the others waiting here.
  if (world > 1) {
    const std::string fingerprint =
        read_error.empty() ? resumed_state_fingerprint(*resumed) : "unreadable";
    if (!entries_that_differ(comm, {{"checkpoint", fingerprint}}).empty() && read_error.empty())
      throw std::runtime_error("the " + std::to_string(world) + " processes of this run " +
                               "resume different checkpoints (this one '" + o.resume +
                               "'): every process must resume a copy of the same one");
  }
  if (!read_error.empty()) throw std::runtime_error(read_error);
  saved_run = saved_run_of(o.resume, resumed->state);
  // Before a finished run is refused: its last line may be the one missing.
  if (lead && resumes_its_checkpoint(o)) {
    drop_unfinished_last_line(log_path);
    restore_last_log_line(log_path, saved_run);
  }
  refuse_unresumable(o, saved_run);
  start_epoch = saved_run.epochs_done;
  const int64_t saved_world = saved_run.world_size;
  if (saved_world != world)
    throw std::runtime_error("checkpoint '" + o.resume + "' was written by a run of " +
                             std::to_string(saved_world) + " process(es), this run has " +
                             std::to_string(world) + ": resume with the same number (the data " +
                             "order and the global batch depend on it)");
  const std::string classes_differ = data::class_difference(
      resumed->class_names, "the checkpoint", train_source->class_names(), "the dataset");
  if (!classes_differ.empty())
    throw std::runtime_error("checkpoint '" + o.resume + "' was trained on other classes than '" +
                             o.data_dir + "' holds (" + classes_differ + "): resume it on its " +
                             "own dataset, or start a new run from it with --finetune");
  model::load_checkpoint_model(*vit, *resumed);
  return resumed;
}

// Every rank starts from rank 0's weights, whatever each read or drew on its own (the broadcast
// refreshes the bf16 copies on CUDA).
void Run::start_from_rank_0_weights() {
  std::vector<Tensor> values;
  for (const Parameter& p : params().all()) values.push_back(p.value);
  comm.broadcast(values, 0);
}

// The optimizer (its state sharded over the ranks with --zero), the gradient reducer that
// averages the ranks' gradients, the moving average of the weights, and the learning rate's
// schedule.
void Run::build_optimizer() {
  OptimizerOptions opt_options;
  opt_options.lr = o.lr;
  opt_options.weight_decay = o.weight_decay;
  opt_options.eps = o.opt_eps;
  opt_options.clip_grad = o.clip_grad;
  optimizer.emplace(o.opt, params(), opt_options, comm, o.zero);
  reducer.emplace(params(), comm, std::max<size_t>(1, static_cast<size_t>(o.bucket_mb * (1 << 20))),
                  optimizer->gradient_owners());
  if (o.model_ema) ema = std::make_unique<WeightEma>(params(), o.model_ema_decay);

  CosineScheduleOptions schedule_options;
  schedule_options.lr = o.lr;
  schedule_options.min_lr = o.min_lr;
  schedule_options.warmup_lr = o.warmup_lr;
  schedule_options.warmup_epochs = o.warmup_epochs;
  schedule_options.epochs = static_cast<double>(o.epochs);
  schedule.emplace(schedule_options);
}

// What the summary says before any training: where the run writes, the model's size, the ranks.
// A resumed run's log is checked for the epoch lines it lacks.
void Run::begin_summary(bool resuming) {
  summary.checkpoint = checkpoint_path;
  summary.log = log_path;
  if (lead && resuming && resumes_its_checkpoint(o))
    warn_of_missing_log_lines(log_path, start_epoch);
  summary.parameters = params().element_count();
  summary.rank = rank;
  summary.world_size = world;
}

// This rank's share of the train split, augmented by the loader's worker threads.
void Run::open_train_loader() {
  shard = DataShard{static_cast<uint32_t>(rank), static_cast<uint32_t>(world)};
  // On CUDA the workers only decode and draw the augmentation parameters; the GPU stage applies
  // them (train/input_feed.h). On the CPU they augment too.
  format = device.is_cuda() ? data::PixelFormat::kSource : data::PixelFormat::kFloat32;
  train_loader = make_train_loader(train_source, o, shard, format);
}

// --resume: the optimizer's moments, the EMA and the best score so far, from the checkpoint.
void Run::resume_optimizer(const model::Checkpoint& resumed) {
  optimizer->load_state(unprefixed("optim.", resumed.extra));
  if (ema) {
    const NamedTensors saved_ema = unprefixed(model::kEmaPrefix, resumed.extra);
    if (saved_ema.empty())
      throw std::runtime_error("checkpoint '" + o.resume + "' holds no EMA weights (its run " +
                               "had --no-model-ema): resume it with --no-model-ema");
    ema->load_state(saved_ema);
  }
  summary.best_acc1 = saved_run.best_acc1;
  summary.best_epoch = saved_run.best_epoch;
  const auto val_images = static_cast<int64_t>(val_source->size());
  if (lead && saved_run.val_images >= 0 && saved_run.val_images != val_images &&
      saved_run.best_epoch >= 0)
    std::fprintf(stderr,
                 "warning: the val split of '%s' holds %lld images, %lld when '%s' was saved: "
                 "the run's best top-1 so far (%.2f%%, epoch %lld) was scored on the other, and "
                 "the epochs from here score on this one\n",
                 o.data_dir.c_str(), (long long)val_images, (long long)saved_run.val_images,
                 o.resume.c_str(), saved_run.best_acc1, (long long)saved_run.best_epoch + 1);
}

// --resume: where the run goes on in the train split's order (resume_position), or why it
// cannot on this split and these options.
void Run::resume_data_position() {
  // Rank 0's data position is saved; every rank's is the same but for its rank.
  data::SamplerState saved = saved_run.sampler;
  saved.rank = static_cast<uint32_t>(rank);
  // Between epochs the next epoch's order depends on the images there are, not on the last's:
  // a train split that gained or lost images (one found unreadable, say) can go on.
  const uint64_t images_now = train_source->size();
  const std::string change =
      saved.dataset_size != images_now
          ? "holds " + std::to_string(images_now) + " images, " +
                std::to_string(saved.dataset_size) + " when '" + o.resume + "' was saved"
      : listings_differ(saved_run.train_listing, train_listing)
          ? "holds other images than when '" + o.resume + "' was saved (as many, " +
                std::to_string(images_now) + ", but not the same files)"
          : "";
  if (!saved_run.within_epoch && !change.empty()) {
    if (lead)
      std::fprintf(stderr,
                   "warning: the train split of '%s' %s: the run goes on with the images there "
                   "are now, so it will not end where the uninterrupted run would have\n",
                   o.data_dir.c_str(), change.c_str());
    saved.dataset_size = images_now;
    saved.position = 0;
  }
  if (saved_run.within_epoch && !change.empty())
    throw std::runtime_error("cannot resume '" + o.resume + "' on '" + o.data_dir +
                             "': it was saved within an epoch, whose order is that of the " +
                             "images its train split held, and the split " + change +
                             ": put the train split back as it was to finish the epoch");
  try {
    train_loader->sampler().check_resumable(saved);
  } catch (const std::exception& e) {
    throw std::runtime_error("cannot resume '" + o.resume + "' on '" + o.data_dir +
                             "': " + e.what());
  }
  if (saved_run.within_epoch) {
    resume_position = saved.position;
    // Batches and optimizer steps are counted from the epoch's start: the resumed run's must
    // begin where the saved run stopped.
    const auto step_images = static_cast<uint64_t>(o.batch_size * o.accum_steps);
    if (resume_position % step_images != 0) {
      const nlohmann::json& saved_options = saved_run.options;
      throw std::runtime_error(
          "checkpoint '" + o.resume + "' was saved in the middle of epoch " +
          std::to_string(start_epoch + 1) + " after " + std::to_string(resume_position) +
          " images of each process, where no optimizer step of --batch-size " +
          std::to_string(o.batch_size) + " x --accum-steps " + std::to_string(o.accum_steps) +
          " begins: resume it with its own, " + saved_options.at("batch_size").dump() + " x " +
          saved_options.at("accum_steps").dump());
    }
  }
}

// What every step needs beside the model: the val loader, the feeds that bring both splits'
// batches to the device, the loss's backward seeds, and with --cuda-graph the captured step.
void Run::prepare_steps() {
  val_loader = make_eval_loader(val_source, o.model.input_size, o.eval_crop_ratio, o.batch_size,
                                o.workers, shard, format);
  train_feed.emplace(*train_loader, device, o.model.input_size);
  val_feed.emplace(*val_loader, device, o.model.input_size);

  if (device.is_cuda()) readback.emplace(device, o.accum_steps);
  const Tensor& grad_loss = grad_loss_for(o.accum_steps);
  if (o.cuda_graph)
    graph_step = std::make_unique<GraphStep>(
        device,
        [this, &grad_loss](const Tensor& images, const Tensor& targets, const Tensor& keep_scales) {
          const Tensor loss = loss_of(vit->forward(images, keep_scales), targets);
          reducer->backward(loss, grad_loss);
          optimizer->update_async();
          if (ema) ema->update(params());
          return loss;
        });
}

Tensor Run::loss_of(const Tensor& logits, const Tensor& targets) const {
  return o.bce_loss ? ops::bce_with_logits(logits, targets)
                    : ops::softmax_cross_entropy(logits, targets);
}

// Micro-batch losses are averaged over an optimizer step, as one large batch would be: each
// backward is seeded with 1 / (the step's micro-batches), fewer in an epoch's last step when
// --accum-steps does not divide the epoch. The gradients are averaged over the ranks once per
// step, during the step's last backward.
const Tensor& Run::grad_loss_for(int64_t micro_batches) {
  auto [it, made] = grad_loss_of.try_emplace(micro_batches);
  if (made)
    it->second = Tensor::full({1}, 1.0 / static_cast<double>(micro_batches), DType::f32, device);
  return it->second;
}

// Just before the first step: the stop signals' handlers, and (rank 0) what the run will do.
void Run::start_training() {
  last_save = std::chrono::steady_clock::now();
  last_log_line = saved_run.last_log_line;
  stop_signals.emplace(!(lead && o.progress) ? StopSignals::Announce::kNothing
                       : world == 1          ? StopSignals::Announce::kOneProcess
                                             : StopSignals::Announce::kSeveralProcesses);
  if (lead && o.progress)
    print_run_start(o, *train_source, comm,
                    static_cast<int64_t>(train_loader->sampler().epoch_length()) / o.batch_size,
                    start_epoch, static_cast<int64_t>(resume_position) / o.batch_size);
}

// Sets the epoch's learning rate and starts its data, from where a resumed run stopped in it,
// with the sums the checkpoint carries.
Epoch Run::begin_epoch(int64_t number) {
  Epoch epoch;
  epoch.start = std::chrono::steady_clock::now();
  epoch.number = number;
  epoch.lr = schedule->epoch_lr(number);
  optimizer->set_lr(epoch.lr);
  const uint64_t start_position = number == start_epoch ? resume_position : 0;
  train_feed->start_epoch(static_cast<uint64_t>(number), start_position);
  epoch.first_batch = static_cast<int64_t>(start_position) / o.batch_size;
  epoch.batches = epoch.first_batch + static_cast<int64_t>(train_loader->batches_in_epoch());
  if (number == start_epoch) {
    summary.resumed_at_batch = epoch.first_batch;
    summary.resumed_epoch_batches = epoch.batches;
  }
  if (start_position > 0) {
    const WithinEpoch& saved_sums = *saved_run.within_epoch;
    epoch.carried_images = saved_sums.images;
    epoch.carried_seconds = saved_sums.seconds;
    if (lead) {
      epoch.loss_sum = saved_sums.loss_sum;
      epoch.counted = static_cast<int64_t>(saved_sums.batches);
    }
  }
  epoch.counted_before = epoch.counted;
  epoch.done = epoch.first_batch;
  return epoch;
}

// Trains the epoch's batches, an optimizer step every --accum-steps of them. False when a stop
// signal ended it early, after a checkpoint of the step it reached.
bool Run::train_epoch(Epoch& epoch) {
  Progress progress("epoch " + std::to_string(epoch.number + 1) + "/" + std::to_string(o.epochs),
                    epoch.batches, o.progress && lead, epoch.first_batch);
  AfterStep after;
  while (const FeedBatch* batch = train_feed->next()) {
    const bool step_now = train_micro_batch(epoch, *batch);
    count_losses(epoch, progress);
    // After a whole optimizer step (but an epoch's last, which ends in a checkpoint of its own):
    // every rank learns whether any was asked to stop, and whether rank 0 saves here.
    if (step_now && epoch.done < epoch.batches) {
      const bool save_due =
          lead && o.save_every_minutes > 0 && seconds_since(last_save) >= 60 * o.save_every_minutes;
      after = after_step(comm, save_due);
      if (after.signal != 0) break;
      if (after.save) save_within_epoch(epoch);
    }
  }
  progress.finish();
  if (after.signal != 0) {
    save_within_epoch(epoch);
    summary.stop = {after.signal, after.rank, epoch.number, epoch.done, epoch.batches};
    return false;
  }
  return true;
}

// One batch: mixed, forward and backward, and the optimizer step when it ends one. Returns
// whether it did.
bool Run::train_micro_batch(Epoch& epoch, const FeedBatch& batch) {
  const uint64_t number = static_cast<uint64_t>(epoch.first_batch) + batch.number;
  // Mixup and drop-path draw per rank and batch, as the reference's per-rank seeds do.
  const uint64_t stream_batch = number * static_cast<uint64_t>(world) + rank;
  // The images are already on the device (augmented by the GPU stage on CUDA): fp32, which
  // the CUDA patch unfold casts to bf16 (engine/ops/tokens.cpp). They are mixed in place
  // there, with fp32 targets.
  Tensor images = batch.images;
  const data::MixParams mix =
      draw_mix(o, static_cast<int>(o.model.input_size), epoch.number, stream_batch);
  const Tensor targets = mix_batch(o, mix, images, batch);
  Rng drop_path_rng = stream_rng(o.seed, Stream::kDropPath, epoch.number, stream_batch);
  const Tensor keep_scales =
      vit->draw_keep_scales(images.size(0), o.drop_path, drop_path_rng, DType::f32);
  epoch.uncounted.push_back({number, static_cast<int64_t>(batch.size)});
  ++epoch.done;
  const bool step_now = epoch.done % o.accum_steps == 0 || epoch.done == epoch.batches;
  if (graph_step && warm && !graph_step->captured()) capture_step(images, targets, keep_scales);
  if (graph_step && graph_step->captured()) {
    readback->record_loss(
        graph_step->run(images, targets, keep_scales, [&] { optimizer->begin_step_async(); }));
    finish_cuda_step(epoch);
  } else {
    run_eager_step(epoch, images, targets, keep_scales, number, step_now);
  }
  return step_now;
}

// --cuda-graph: captures the step, once an eager one has warmed it. A capture that fails leaves
// a run of one process eager, and stops one of several.
void Run::capture_step(const Tensor& images, const Tensor& targets, const Tensor& keep_scales) {
  const std::string failure = graph_step->capture(images, targets, keep_scales, comm);
  if (failure.empty()) return;
  // With several ranks the failed capture may have left NCCL with collectives counted
  // differently on each rank, after which eager steps are not safe: the run stops.
  if (world > 1)
    throw std::runtime_error("--cuda-graph: the step could not be captured (" + failure +
                             "); run again without --cuda-graph");
  params().zero_grad();  // what the failed capture made
  graph_step.reset();
  if (lead)
    std::fprintf(stderr,
                 "warning: --cuda-graph: the step could not be captured (%s); "
                 "training goes on without a graph\n",
                 failure.c_str());
}

// The micro-batch op by op: forward, loss, backward; with step_now the gradients' reduction
// over the ranks and the optimizer step (queued on CUDA, read back by finish_cuda_step).
void Run::run_eager_step(Epoch& epoch, const Tensor& images, const Tensor& targets,
                         const Tensor& keep_scales, uint64_t number, bool step_now) {
  const Tensor loss = loss_of(vit->forward_drawn(images, keep_scales), targets);
  if (readback) {
    readback->record_loss(loss);
  } else {
    epoch.uncounted_losses.push_back(loss.item());
    check_loss(epoch, epoch.uncounted_losses.back(), number);
  }
  const Tensor& seed =
      grad_loss_for(micro_batches_in_step(epoch.done, epoch.batches, o.accum_steps));
  if (step_now) {
    reducer->backward(loss, seed);
    if (readback) {
      optimizer->step_async();
      if (ema) ema->update(params());
      finish_cuda_step(epoch);
    } else {
      try {
        optimizer->step();
      } catch (const NonFiniteGradient& e) {
        throw TrainingDiverged(std::string(e.what()) + " at epoch " +
                               std::to_string(epoch.number + 1) +
                               "; nothing of this epoch was saved");
      }
      params().zero_grad();
      if (ema) ema->update(params());
    }
    warm = true;
  } else {
    backward(loss, seed);
    train_feed->prefetch();
  }
}

// CUDA: the end of a queued optimizer step. The device works through it while the next batch
// goes up; then one wait reads its values: the losses first (a non-finite loss makes the
// gradient non-finite too, and names the batch), then the norm the update was skipped for.
void Run::finish_cuda_step(Epoch& epoch) {
  train_feed->prefetch();
  const StepReadback::Values values = readback->read(optimizer->device_grad_norm(), comm);
  for (size_t i = 0; i < values.losses.size(); ++i)
    check_loss(epoch, values.losses[i], epoch.uncounted[i].number);
  if (!std::isfinite(values.grad_norm))
    throw TrainingDiverged("optimizer: the global gradient norm is " +
                           std::to_string(values.grad_norm) + " at epoch " +
                           std::to_string(epoch.number + 1) + "; nothing of this epoch was saved");
  epoch.uncounted_losses = values.losses;
  params().zero_grad();
}

// Throws TrainingDiverged for a loss that is not finite.
void Run::check_loss(const Epoch& epoch, double loss_value, uint64_t batch_number) {
  if (std::isfinite(loss_value)) return;
  clear_tape();
  throw TrainingDiverged(
      "the loss is " + std::to_string(loss_value) + " at epoch " +
      std::to_string(epoch.number + 1) + ", batch " + std::to_string(batch_number + 1) +
      (world > 1 ? " of rank " + std::to_string(rank) : "") +
      "; nothing of this epoch was saved (the last checkpoint, if any, is untouched)");
}

// Adds the losses read back so far to the epoch's sums, and shows them.
void Run::count_losses(Epoch& epoch, Progress& progress) {
  for (size_t i = 0; i < epoch.uncounted_losses.size(); ++i) {
    epoch.loss_sum += epoch.uncounted_losses[i];
    epoch.images += epoch.uncounted[i].images;
    ++epoch.counted;
    // Every process trains as many images a step: the run's rate is this one's times the
    // processes.
    progress.update(epoch.first_batch + epoch.counted - epoch.counted_before, epoch.images * world,
                    epoch.loss_sum / epoch.counted);
  }
  if (!epoch.uncounted_losses.empty()) {
    epoch.uncounted.clear();
    epoch.uncounted_losses.clear();
  }
}

// The epoch's summed loss, batches and images so far, over every rank. Collective.
std::vector<double> Run::epoch_totals(const Epoch& epoch) {
  std::vector<double> totals{epoch.loss_sum, static_cast<double>(epoch.counted),
                             epoch.images + (lead ? epoch.carried_images : 0)};
  comm.all_reduce_sum(totals);
  return totals;
}

// A checkpoint of the step the run is at: the data position and the epoch's sums over every
// rank (rank 0 carries them when the run resumes there).
void Run::save_within_epoch(const Epoch& epoch) {
  const std::vector<double> totals = epoch_totals(epoch);
  data::SamplerState sampler = train_loader->state();
  sampler.position = static_cast<uint64_t>(epoch.done) * static_cast<uint64_t>(o.batch_size);
  write_checkpoint(epoch.number,
                   WithinEpoch{epoch.number, totals[1], totals[0], totals[2],
                               seconds_since(epoch.start) + epoch.carried_seconds},
                   sampler);
}

// A checkpoint of the whole epoch, trained.
void Run::save_epoch(const Epoch& epoch) {
  write_checkpoint(epoch.number + 1, std::nullopt, train_loader->state());
}

// Rank 0 writes it (every rank takes part: ZeRO's optimizer state is gathered): the weights, the
// optimizer and EMA state, and where the run stands (train/run_state.h): `epochs_done` whole
// epochs, and `within`, for a checkpoint of a step in the middle of the next one, where in it.
void Run::write_checkpoint(int64_t epochs_done, const std::optional<WithinEpoch>& within,
                           const data::SamplerState& sampler) {
  last_save = std::chrono::steady_clock::now();
  NamedTensors extra = prefixed("optim.", optimizer->gather_state());
  if (!lead) return;
  if (ema)
    for (auto& entry : prefixed(model::kEmaPrefix, ema->state())) extra.push_back(entry);
  RunState state;
  state.epochs_done = epochs_done;
  state.within_epoch = within;
  state.options = o.to_json();
  state.best_acc1 = summary.best_acc1;
  state.best_epoch = summary.best_epoch;
  state.sampler = sampler;
  state.world_size = world;
  state.optimizer_steps = optimizer->step_count();
  state.val_images = static_cast<int64_t>(val_source->size());
  state.train_listing = train_listing;
  state.last_log_line = last_log_line;
  model::save_checkpoint(checkpoint_path, *vit, extra, state.to_json(),
                         train_source->class_names());
}

// The epoch's totals over every rank, once it is trained: its loss, images and time; and the
// run's. Collective.
void Run::sum_epoch(Epoch& epoch) {
  const std::vector<double> totals = epoch_totals(epoch);
  epoch.train_seconds = seconds_since(epoch.start) + epoch.carried_seconds;
  train_images += static_cast<int64_t>(totals[2] - epoch.carried_images);
  train_seconds += seconds_since(epoch.start);
  epoch.train_loss = totals[1] > 0 ? totals[0] / totals[1] : 0.0;
  epoch.images = static_cast<int64_t>(totals[2]);
}

// Each unusable file was warned about as met; a class made only of them is lost altogether:
// over every rank (each meets its own share), none of its images loaded and some were skipped.
// Collective.
void Run::warn_of_lost_classes() {
  const std::vector<uint64_t> loaded = train_loader->loaded_per_class();
  std::vector<double> class_counts(2 * loaded.size());
  for (size_t label = 0; label < loaded.size(); ++label) {
    class_counts[label] = static_cast<double>(loaded[label]);
    class_counts[loaded.size() + label] =
        static_cast<double>(train_loader->skipped().count_in_class(static_cast<int>(label)));
  }
  comm.all_reduce_sum(class_counts);
  for (size_t label = 0; label < loaded.size(); ++label)
    if (class_counts[label] == 0 && class_counts[loaded.size() + label] > 0 &&
        lost_classes.insert(static_cast<int>(label)).second && lead)
      std::fprintf(stderr,
                   "warning: no training image of class '%s' could be read so far (each one "
                   "met was skipped, see above): the model cannot learn that class\n",
                   train_source->class_names().at(label).c_str());
}

// Scores the model on the val split, each rank its share. Collective.
EvalResult Run::evaluate_epoch(const Epoch& epoch) {
  try {
    return evaluate(*vit, *val_feed, o.progress && lead, &comm);
  } catch (const data::DataError& e) {
    // A val split that fails to read must not cost the epoch's training. Alone, the process
    // saves it (with several, the others wait in the evaluation's collectives).
    if (world > 1) throw;
    try {
      save_epoch(epoch);
    } catch (const std::exception& save_error) {
      throw data::DataError(std::string(e.what()) +
                            "\nand saving the epoch failed too: " + save_error.what());
    }
    const std::string then = epoch.number + 1 < o.epochs
                                 ? "resume it there once the val split reads"
                                 : "that was the run's last epoch: `deit eval --checkpoint " +
                                       checkpoint_path + "` evaluates it once the val split reads";
    throw data::DataError(std::string(e.what()) + "\nepoch " + std::to_string(epoch.number + 1) +
                          "'s training is saved, without its evaluation, in " + checkpoint_path +
                          ": " + then);
  }
}

// Records the epoch in the summary, saves its checkpoint, then appends its line to log.txt and
// (rank 0, with progress) says how it went.
void Run::save_and_log_epoch(const Epoch& epoch, const EvalResult& eval) {
  if (eval.acc1 > summary.best_acc1 || summary.best_epoch < 0) {
    summary.best_acc1 = eval.acc1;
    summary.best_epoch = epoch.number;
  }
  summary.last = eval;
  ++summary.epochs_run;
  // The checkpoint first: a log line stands for a saved and evaluated epoch, so a save that
  // fails leaves the folder as the last one left it, to resume or start again. The checkpoint
  // holds the line too, for a run stopped before it is logged (restore_last_log_line).
  const double epoch_seconds = seconds_since(epoch.start) + epoch.carried_seconds;
  last_log_line = {{"train_lr", epoch.lr},
                   {"train_loss", epoch.train_loss},
                   {"test_loss", eval.loss},
                   {"test_acc1", eval.acc1},
                   {"test_acc5", eval.acc5},
                   {"epoch", epoch.number},
                   {"n_parameters", summary.parameters},
                   {"train_images_per_s", epoch.images / epoch.train_seconds},
                   {"epoch_time_s", epoch_seconds}};
  save_epoch(epoch);
  if (lead) append_log_line(log_path, last_log_line, checkpoint_path, epoch.number + 1 == o.epochs);
  if (lead && o.progress) {
    // What is left, at this epoch's pace (a resumed epoch's counted whole).
    const int64_t epochs_left = o.epochs - epoch.number - 1;
    const std::string left =
        epochs_left == 0
            ? ""
            : "; " + std::to_string(epochs_left) + " more epoch" + (epochs_left == 1 ? "" : "s") +
                  ", about " +
                  format_duration(static_cast<double>(epochs_left) *
                                  (seconds_since(epoch.start) + epoch.carried_seconds));
    std::fprintf(stderr,
                 "epoch %lld/%lld  lr %.3g  train loss %.4f  val acc1 %.2f%%  acc5 %.2f%%  "
                 "val loss %.4f  (%s%s)\n",
                 (long long)epoch.number + 1, (long long)o.epochs, epoch.lr, epoch.train_loss,
                 eval.acc1, eval.acc5, eval.loss,
                 format_duration(seconds_since(epoch.start)).c_str(), left.c_str());
  }
}

// A signal during the evaluation: the epoch's checkpoint is the place to stop. After the last
// epoch's there is nothing left to stop: the summary says the signal came. Collective.
bool Run::stopped_during_evaluation(const Epoch& epoch) {
  const AfterStep after = after_step(comm, false);
  if (after.signal == 0) return false;
  summary.stop = {
      after.signal, after.rank, epoch.number + 1, 0, epoch.batches, epoch.number + 1 == o.epochs};
  return true;
}

// The summary of the whole run. Collectives: when train() returns on any rank, rank 0's log and
// checkpoint are complete.
TrainSummary Run::finish() {
  summary.skipped_images =
      files_skipped_by_any_rank(comm, train_loader->skipped(), train_source->size()) +
      files_skipped_by_any_rank(comm, val_loader->skipped(), val_source->size());
  summary.seconds = seconds_since(run_start);
  summary.train_images_per_second = train_seconds > 0 ? train_images / train_seconds : 0;
  return summary;
}

}  // namespace

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
  refuse_other_run(o.output_dir, resumes_its_checkpoint(o));
  if (!o.resume.empty())
    refuse_unresumable(o, saved_run_of(o.resume, model::read_checkpoint_header(o.resume).state));
}

// The outline of a run; each stage is a method of Run. Every rank calls the stages in this order,
// as the collectives inside them need (the weights' broadcast, the gradients' reduction, the
// checkpoints' gathering of the optimizer state, the evaluation's sums).
TrainSummary train(TrainOptions o, Communicator& comm) {
  Run run(std::move(o), comm);  // its device, its rank
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
