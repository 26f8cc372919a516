// The stages of a run up to its first step (train/run.h): the data, the output folder, the ranks'
// agreement, the model, a resume, the optimizer and the loaders.
#include <algorithm>
#include <cstdio>
#include <exception>
#include <filesystem>

#include "data/augment_params.h"
#include "data/xxhash64.h"
#include "engine/build_fingerprint.h"
#include "engine/ops.h"
#include "train/finetune.h"
#include "train/rank_agreement.h"
#include "train/run.h"
#include "train/run_log.h"
#include "train/shell_quoted.h"

namespace deit::train::detail {

namespace {

namespace fs = std::filesystem;

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

NamedTensors unprefixed(const std::string& prefix, const NamedTensors& tensors) {
  NamedTensors out;
  for (const auto& [name, t] : tensors)
    if (name.rfind(prefix, 0) == 0) out.emplace_back(name.substr(prefix.size()), t);
  return out;
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
      "training %s at %lld px with the %s recipe on %s (%zu images, %zu classes), %lld epoch%s of "
      "%lld optimizer step%s, on %s\n",
      o.model.name.c_str(), (long long)o.model.input_size, o.recipe.c_str(), o.data_dir.c_str(),
      train_source.size(), train_source.class_names().size(), (long long)o.epochs,
      o.epochs == 1 ? "" : "s", (long long)steps, steps == 1 ? "" : "s", o.device.c_str());
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

}  // namespace

Device run_device(const std::string& flag, int local_rank) {
  return flag == "cuda" ? Device::cuda(local_rank) : parse_device(flag);
}

RunState saved_run_of(const std::string& checkpoint, const nlohmann::json& state) {
  try {
    return run_state_from_json(state);
  } catch (const std::exception& e) {
    throw std::runtime_error("checkpoint '" + checkpoint + "': " + e.what());
  }
}

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

// Before anything else, as two builds may differ in anything else: in what they accept (the
// dataset, --output), in the entries agree_across_ranks compares, and so in the size of its
// collectives. Its collective is one that every build keeps (agree_on_build).
void Run::agree_on_build() {
  if (world > 1) train::agree_on_build(comm, build_fingerprint(), "run");
}

// Opens the train and val splits, which must have the same classes, and settles the model's
// class count on them.
void Run::open_data() {
  o.validate();  // before anything is created; again once the dataset gives the class count
  train_source = open_split(o.data_dir, "train", lead);
  val_source = open_split(o.data_dir, "val", lead);
  train_listing = train_source->listing_fingerprint();
  const std::vector<std::string>& train_classes = train_source->class_names();
  const std::vector<std::string>& val_classes = val_source->class_names();
  if (train_classes != val_classes) {
    // A val folder that lacks some classes (a small dataset split by hand) needs only an empty
    // folder for each: its labels then line up with train's (torchvision would shift them).
    const fs::path val_folder = fs::path(o.data_dir) / "val";
    std::error_code error;
    std::string hint;
    if (fs::is_directory(val_folder, error) &&
        !fs::exists(fs::path(o.data_dir) / "val.shard", error) &&
        data::names_missing_from(val_classes, train_classes).empty()) {
      const std::vector<std::string> missing = data::names_missing_from(train_classes, val_classes);
      hint =
          "; an empty val folder for a class keeps the labels in line (evaluation then has no "
          "image of it): ";
      if (missing.size() <= 5) {
        hint += "mkdir";
        for (const std::string& name : missing)
          hint += " " + shell_quoted((val_folder / name).string());
      } else {
        hint += "make " + val_folder.string() + "/<class> for each of the " +
                std::to_string(missing.size()) + " classes only in train";
      }
    }
    throw std::runtime_error(
        "the train and val splits of '" + o.data_dir + "' have different classes (" +
        data::class_difference(train_classes, "train", val_classes, "val") + ")" + hint);
  }
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
  require_agreement(comm, entries, "run",
                    "every process must run the same command on a copy of the same dataset");
}

// Settings that run but waste part of the work or mislead: said once, by rank 0.
void Run::warn_of_doubtful_settings() {
  if (const int64_t unseen = o.model.input_size % o.model.patch; lead && unseen != 0)
    std::fprintf(stderr,
                 "warning: --input-size %lld is not a multiple of the %lld-pixel patch: the last "
                 "%lld pixels of each row and column of an image are never seen (as in timm)\n",
                 (long long)o.model.input_size, (long long)o.model.patch, (long long)unseen);
  // The schedule steps after each epoch, as main.py's does (engine/schedule.h): epoch e trains at
  // the rate of time e - 1, so the last epoch, E - 1, is still warming up while E - 2 < warm-up.
  if (lead && o.resume.empty() && o.warmup_epochs > 0 && o.epochs < o.warmup_epochs + 2)
    std::fprintf(stderr,
                 "warning: the run's %lld epoch%s train%s at warm-up rates only (%g warm-up "
                 "epoch%s, and each epoch trains at the rate the schedule reached after the one "
                 "before, as main.py steps it): its learning rate never reaches --lr %g (a short "
                 "trial run wants --warmup-epochs 0)\n",
                 (long long)o.epochs, o.epochs == 1 ? "" : "s", o.epochs == 1 ? "s" : "",
                 o.warmup_epochs, o.warmup_epochs == 1 ? "" : "s", o.lr);
  if (lead && classes == 1)
    std::fprintf(stderr,
                 "warning: '%s' has a single class ('%s'): a classifier of one class scores 100%% "
                 "whatever it learns (each subfolder of train/ and val/ is a class)\n",
                 o.data_dir.c_str(), train_source->class_names()[0].c_str());
  if (!lead) return;
  if (o.min_lr > o.lr)
    std::fprintf(stderr,
                 "warning: --min-lr %g is above --lr %g: the cosine climbs to --min-lr instead of "
                 "decaying from --lr\n",
                 o.min_lr, o.lr);
  if (o.resume.empty() && o.model.num_classes > classes)
    std::fprintf(stderr,
                 "warning: --num-classes %lld is more than the %lld classes of '%s': the head's "
                 "last %lld outputs have no images, and learn only to stay off\n",
                 (long long)o.model.num_classes, (long long)classes, o.data_dir.c_str(),
                 (long long)(o.model.num_classes - classes));
  const std::string size = std::to_string(o.model.input_size);
  for (const std::string& warning :
       {data::packed_below(*train_source, o.model.input_size, "training at " + size + " needs"),
        data::packed_below(*val_source,
                           data::eval_resize_side(o.model.input_size, o.eval_crop_ratio),
                           "evaluation at " + size + " resizes to")})
    if (!warning.empty()) std::fprintf(stderr, "%s\n", warning.c_str());
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
  if (!o.finetune.empty())
    for (const std::string& note :
         load_finetune_weights(*vit, o.finetune, train_source->class_names()))
      if (lead) std::fprintf(stderr, "%s\n", note.c_str());
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
  else if (lead && resuming && start_epoch > 0)
    note_log_starts_apart(log_path, (fs::path(o.resume).parent_path() / "log.txt").string(),
                          start_epoch);
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
  const NamedTensors saved_ema =
      ema ? unprefixed(model::kEmaPrefix, resumed.extra) : NamedTensors();
  if (ema && saved_ema.empty())
    throw std::runtime_error("checkpoint '" + o.resume + "' holds no EMA weights (its run " +
                             "had --no-model-ema): resume it with --no-model-ema");
  // Their errors name the state ("lamb optimizer state: missing entry 'step'"), not the file.
  try {
    optimizer->load_state(unprefixed("optim.", resumed.extra));
    if (ema) ema->load_state(saved_ema);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error("checkpoint '" + o.resume + "': " + e.what());
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

}  // namespace deit::train::detail
