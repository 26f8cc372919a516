#include "train/trainer.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>

#include "data/image.h"
#include "data/image_source.h"
#include "data/made_folder.h"
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
#include "train/output_lock.h"
#include "train/progress.h"
#include "train/rank_agreement.h"
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

// A folder that holds a run is written over only by resuming that run's checkpoint.safetensors
// there: not by a new run, nor by resuming a copy of it or another run's checkpoint.
void refuse_other_run(const std::string& dir, bool resuming_its_checkpoint) {
  if (resuming_its_checkpoint) return;
  std::error_code ec;
  const fs::path checkpoint = fs::path(dir) / "checkpoint.safetensors";
  if (fs::exists(checkpoint, ec))
    throw std::runtime_error("'" + dir + "' already holds a run (checkpoint.safetensors): " +
                             "continue it with --resume " + checkpoint.string() +
                             ", or give another --output");
  if (fs::exists(fs::path(dir) / "log.txt", ec))
    throw std::runtime_error("'" + dir + "' holds the log of a run but no checkpoint " +
                             "(log.txt): give another --output, or remove log.txt to use it");
}

// What a save cut short left (a second stop signal, a killed run): checkpoint.safetensors.tmp.PID.
// Only under the folder's lock, which keeps out a live run's save.
void remove_unfinished_saves(const std::string& dir) {
  std::error_code ec;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, ec))
    if (entry.path().filename().string().rfind("checkpoint.safetensors.tmp.", 0) == 0)
      fs::remove(entry.path(), ec);
}

// Whether the run resumes its output folder's own checkpoint.safetensors.
bool resumes_its_checkpoint(const TrainOptions& o) {
  std::error_code ec;
  return !o.resume.empty() &&
         fs::equivalent(o.resume, fs::path(o.output_dir) / "checkpoint.safetensors", ec);
}

// A run folder inside a split would be read as one of its classes, by this run and every later
// one on the dataset.
void refuse_output_in_splits(const TrainOptions& o) {
  if (const char* split = data::split_holding(o.output_dir, o.data_dir))
    throw std::invalid_argument("--output '" + o.output_dir + "' lies inside the " + split +
                                " split of '" + o.data_dir + "', where its files would be read " +
                                "as images: give a folder outside it");
}

// Rank 0's hold on the output folder for the run's life: made where missing, locked against other
// runs, refused when it holds another run, cleared of what an interrupted save left. Fails before
// any work when the run could not save what it computes.
class OutputFolder {
 public:
  OutputFolder(const std::string& dir, bool resuming_its_checkpoint)
      : made_(dir), lock_(dir, "--output") {
    // Under the lock: a run that is writing the folder is refused as in use, not as finished.
    refuse_other_run(dir, resuming_its_checkpoint);
    remove_unfinished_saves(dir);
  }

 private:
  data::MadeFolder made_;  // destroyed after the lock, whose file would keep a failed run's folder
  OutputLock lock_;
};

// The lines of the run's log (none where it cannot be read).
std::vector<std::string> log_file_lines(const std::string& log_path) {
  std::vector<std::string> lines;
  std::ifstream log(log_path);
  for (std::string line; std::getline(log, line);) lines.push_back(line);
  return lines;
}

// Appends `text` to the file at `path`; false, with errno set, when it could not.
bool append_to_file(const std::string& path, const std::string& text) {
  std::FILE* file = std::fopen(path.c_str(), "a");
  if (!file) return false;
  const bool written = std::fwrite(text.data(), 1, text.size(), file) == text.size();
  return std::fclose(file) == 0 && written;
}

// Warns when the run's log has fewer epoch lines than its checkpoint has trained epochs: a run
// killed between saving an epoch and logging it, an epoch saved unevaluated (its val split failed
// to read), or a log removed. The lines are kept nowhere else.
void warn_of_missing_log_lines(const std::string& log_path, int64_t epochs_done) {
  const auto lines = static_cast<int64_t>(log_file_lines(log_path).size());
  if (lines < epochs_done)
    std::fprintf(stderr,
                 "warning: %s holds %lld epoch line%s, its checkpoint %lld epoch%s: the lines of "
                 "the epochs between are lost (a run stopped between saving an epoch and logging "
                 "it, an epoch saved unevaluated when its val split failed to read, or a log "
                 "removed); the log goes on from epoch %lld\n",
                 log_path.c_str(), (long long)lines, lines == 1 ? "" : "s", (long long)epochs_done,
                 epochs_done == 1 ? "" : "s", (long long)epochs_done + 1);
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

// Cuts from the run's log a last line that lacks its newline: what a write cut short left (a full
// disk, a kill inside it). The epoch it began is in the checkpoint, whose line
// restore_last_log_line writes back whole; left there, the next line would be appended to it.
void drop_unfinished_last_line(const std::string& log_path) {
  std::error_code error;
  const uintmax_t size = fs::file_size(log_path, error);
  if (error || size == 0) return;
  std::ifstream log(log_path, std::ios::binary);
  std::string text(size, '\0');
  if (!log.read(text.data(), static_cast<std::streamsize>(size)) || text.back() == '\n') return;
  const size_t kept = text.rfind('\n') + 1;  // 0 where the log has no whole line
  fs::resize_file(log_path, kept, error);
  if (error) {
    std::fprintf(stderr,
                 "warning: %s ends in an unfinished line (%zu bytes, a write cut short) that "
                 "cannot be removed (%s): the next line will be appended to it\n",
                 log_path.c_str(), text.size() - kept, error.message().c_str());
    return;
  }
  std::fprintf(stderr,
               "note: %s ended in an unfinished line (%zu bytes, a write cut short): removed\n",
               log_path.c_str(), text.size() - kept);
}

// Writes the line of the checkpoint's last epoch into the run's log where the run stopped between
// saving that epoch and logging it (a kill in that millisecond; a retrying script's kills can land
// there every time): the line is in the checkpoint too. Known by the log's last line, which is of
// an earlier epoch; other gaps are for warn_of_missing_log_lines. A failure is warned about: the
// run can go on without the line, as it could before.
void restore_last_log_line(const std::string& log_path, const RunState& saved) {
  const int64_t last_epoch = saved.epochs_done - 1;
  if (!saved.last_log_line.is_object() ||
      saved.last_log_line.value("epoch", int64_t{-1}) != last_epoch)
    return;
  const std::vector<std::string> lines = log_file_lines(log_path);
  if (!lines.empty()) {
    const nlohmann::json logged = nlohmann::json::parse(lines.back(), nullptr, false);
    if (!logged.is_object() || logged.value("epoch", last_epoch) >= last_epoch) return;
  }
  const std::string text = saved.last_log_line.dump() + "\n";
  if (!append_to_file(log_path, text)) {
    std::fprintf(stderr, "warning: cannot append to %s (%s) the line of epoch %lld: %s",
                 log_path.c_str(), std::strerror(errno), (long long)saved.epochs_done,
                 text.c_str());
    return;
  }
  std::fprintf(stderr,
               "note: %s lacked the line of epoch %lld, whose checkpoint was saved before the "
               "run stopped: written from the checkpoint\n",
               log_path.c_str(), (long long)saved.epochs_done);
}

// Appends an epoch's line to log.txt, after its checkpoint was saved. A failure says that the epoch
// is saved, and gives the line, which the log would lack for good: a resumed run goes on from the
// next epoch.
void append_log_line(const std::string& path, const nlohmann::json& line,
                     const std::string& checkpoint, bool last_epoch) {
  if (!append_to_file(path, line.dump() + "\n")) {
    const std::string epoch = std::to_string(line.at("epoch").get<int64_t>() + 1);
    throw std::runtime_error(
        "cannot append to log '" + path + "': " + std::strerror(errno) + "; epoch " + epoch +
        (last_epoch ? ", the run's last, is saved in " + checkpoint
                    : " is saved in " + checkpoint + ": fix the log's permissions and --resume") +
        " (the log lacks the epoch's line: " + line.dump() + ")");
  }
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

TrainSummary train(TrainOptions o, Communicator& comm) {
  const auto run_start = std::chrono::steady_clock::now();
  const Device device = run_device(o.device, comm.local_rank());
  require_device(device);
  if (comm.device() != device)
    throw std::invalid_argument("train: a " + std::string(comm.backend()) + " communicator on " +
                                comm.device().str() + " for a run on " + device.str());
  const int rank = comm.rank(), world = comm.world_size();
  // Rank 0 alone writes the run's files and shows progress; the other ranks never touch OUTPUT.
  const bool lead = rank == 0;
  o.validate();  // before anything is created; again once the dataset gives the class count
  auto train_source = open_split(o.data_dir, "train", lead);
  auto val_source = open_split(o.data_dir, "val", lead);
  const std::string train_listing = train_source->listing_fingerprint();
  if (train_source->class_names() != val_source->class_names())
    throw std::runtime_error("the train and val splits of '" + o.data_dir +
                             "' have different classes (" +
                             data::class_difference(train_source->class_names(), "train",
                                                    val_source->class_names(), "val") +
                             ")");
  const auto classes = static_cast<int64_t>(train_source->class_names().size());
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
  // Nothing is made for a bad run. Rank 0 alone writes to --output, and its refusal of it stops
  // every rank (below), as a collective it would miss would hang them.
  refuse_output_in_splits(o);
  std::string output_refusal;
  std::optional<OutputFolder> output_folder;
  if (lead) {
    try {
      output_folder.emplace(o.output_dir, resumes_its_checkpoint(o));
    } catch (const std::exception& e) {
      if (world == 1) throw;
      output_refusal = e.what();
    }
  }
  // Before the first collective that depends on them (the weights' broadcast): every process runs
  // the same command on the same classes, or all stop here, saying where they differ. Only the
  // paths, the device and the loader's threads may differ; every other setting steers the run or
  // which collectives it runs (--zero, --bucket-mb, --cuda-graph).
  if (world > 1) {
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
    entries.emplace_back("the dataset's classes",
                         nlohmann::json(train_source->class_names()).dump());
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

  // On CUDA: fp32 master weights with their bf16 copies (engine/parameters.h), initialised from
  // the host's random draws, so a CUDA run starts from the CPU run's weights.
  model::VisionTransformer vit(o.model, device);
#if DEIT_HAVE_CUDA
  // For this run: a GEMM's plan settles on its first run, in step one.
  std::optional<CublasLtSettingsScope> gemm_settings;
  if (device.is_cuda()) {
    gemm_settings.emplace(device.index);
    gemm_settings->lt().set_autotune(o.gemm_autotune);
  }
#endif
  vit.set_recompute_gelu(o.recompute_gelu);
  // A CUDA graph's shapes are fixed, and its first, eager steps warm those shapes.
  vit.set_whole_batch_branches(o.whole_batch_branches || o.cuda_graph);
  vit.set_grad_checkpointing(o.grad_checkpointing);
  Rng init_rng = stream_rng(o.seed, Stream::kInit);
  vit.initialize(init_rng);
  if (!o.finetune.empty()) load_finetune_weights(vit, o.finetune);
  std::optional<model::Checkpoint> resumed;
  // Where the resumed run stands. A checkpoint saved in the middle of an epoch (a stop signal,
  // --save-every): the run goes on from the step it saved, with the epoch's sums so far (every
  // rank's; rank 0 carries them).
  RunState saved_run;
  int64_t start_epoch = 0;
  if (!o.resume.empty()) {
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
      const std::string log_path = (fs::path(o.output_dir) / "log.txt").string();
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
    model::load_checkpoint_model(vit, *resumed);
  }
  ParameterRegistry& params = vit.parameters();
  // Every rank starts from rank 0's weights, whatever each read or drew on its own (the broadcast
  // refreshes the bf16 copies on CUDA).
  std::vector<Tensor> values;
  for (const Parameter& p : params.all()) values.push_back(p.value);
  comm.broadcast(values, 0);

  OptimizerOptions opt_options;
  opt_options.lr = o.lr;
  opt_options.weight_decay = o.weight_decay;
  opt_options.eps = o.opt_eps;
  opt_options.clip_grad = o.clip_grad;
  ShardedOptimizer optimizer(o.opt, params, opt_options, comm, o.zero);
  GradientReducer reducer(params, comm,
                          std::max<size_t>(1, static_cast<size_t>(o.bucket_mb * (1 << 20))),
                          optimizer.gradient_owners());
  std::unique_ptr<WeightEma> ema;
  if (o.model_ema) ema = std::make_unique<WeightEma>(params, o.model_ema_decay);

  CosineScheduleOptions schedule_options;
  schedule_options.lr = o.lr;
  schedule_options.min_lr = o.min_lr;
  schedule_options.warmup_lr = o.warmup_lr;
  schedule_options.warmup_epochs = o.warmup_epochs;
  schedule_options.epochs = static_cast<double>(o.epochs);
  const CosineSchedule schedule(schedule_options);

  const std::string checkpoint_path = (fs::path(o.output_dir) / "checkpoint.safetensors").string();
  const std::string log_path = (fs::path(o.output_dir) / "log.txt").string();
  TrainSummary summary;
  summary.checkpoint = checkpoint_path;
  summary.log = log_path;
  if (lead && resumed && resumes_its_checkpoint(o))
    warn_of_missing_log_lines(log_path, start_epoch);
  summary.parameters = params.element_count();
  summary.rank = rank;
  summary.world_size = world;

  const DataShard shard{static_cast<uint32_t>(rank), static_cast<uint32_t>(world)};
  // On CUDA the workers only decode and draw the augmentation parameters; the GPU stage applies
  // them (train/input_feed.h). On the CPU they augment too.
  const data::PixelFormat format =
      device.is_cuda() ? data::PixelFormat::kSource : data::PixelFormat::kFloat32;
  auto train_loader = make_train_loader(train_source, o, shard, format);
  uint64_t resume_position = 0;  // in this rank's entries of the epoch start_epoch
  if (resumed) {
    optimizer.load_state(unprefixed("optim.", resumed->extra));
    if (ema) {
      const NamedTensors saved_ema = unprefixed(model::kEmaPrefix, resumed->extra);
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
    // Only once nothing refuses the resumption:
    if (lead) warn_of_course_changes(o, saved_run.options);
    resumed.reset();  // its tensors are copied into the model and the state
  }
  auto val_loader = make_eval_loader(val_source, o.model.input_size, o.eval_crop_ratio,
                                     o.batch_size, o.workers, shard, format);
  InputFeed train_feed(*train_loader, device, o.model.input_size);
  InputFeed val_feed(*val_loader, device, o.model.input_size);

  // CUDA: the host reads each optimizer step's losses and gradient norm with one wait.
  std::optional<StepReadback> readback;
  if (device.is_cuda()) readback.emplace(device, o.accum_steps);

  auto loss_of = [&](const Tensor& logits, const Tensor& targets) {
    return o.bce_loss ? ops::bce_with_logits(logits, targets)
                      : ops::soft_cross_entropy(logits, targets);
  };
  // Micro-batch losses are averaged over an optimizer step, as one large batch would be: each
  // backward is seeded with 1 / (the step's micro-batches), fewer in an epoch's last step when
  // --accum-steps does not divide the epoch. The gradients are averaged over the ranks once per
  // step, during the step's last backward.
  std::map<int64_t, Tensor> grad_loss_of;  // by micro-batches in the step; made once each
  auto grad_loss_for = [&](int64_t micro_batches) -> const Tensor& {
    auto [it, made] = grad_loss_of.try_emplace(micro_batches);
    if (made)
      it->second = Tensor::full({1}, 1.0 / static_cast<double>(micro_batches), DType::f32, device);
    return it->second;
  };
  const Tensor& grad_loss = grad_loss_for(o.accum_steps);
  // --cuda-graph: every optimizer step after the run's first (eager, which warms the plans and the
  // allocator's cache) replays one captured step (train/graph_step.h; --accum-steps is 1).
  std::unique_ptr<GraphStep> graph_step;
  if (o.cuda_graph)
    graph_step = std::make_unique<GraphStep>(
        device, [&](const Tensor& images, const Tensor& targets, const Tensor& keep_scales) {
          const Tensor loss = loss_of(vit.forward(images, keep_scales), targets);
          reducer.backward(loss, grad_loss);
          optimizer.update_async();
          if (ema) ema->update(params);
          return loss;
        });
  bool warm = false;  // an eager optimizer step has run

  // Rank 0 writes it (every rank takes part: ZeRO's optimizer state is gathered): the weights, the
  // optimizer and EMA state, and where the run stands (train/run_state.h): `epochs_done` whole
  // epochs, and `within`, for a checkpoint of a step in the middle of the next one, where in it.
  auto last_save = std::chrono::steady_clock::now();
  nlohmann::json last_log_line = saved_run.last_log_line;  // each checkpoint keeps it
  auto write_checkpoint = [&](int64_t epochs_done, const std::optional<WithinEpoch>& within,
                              const data::SamplerState& sampler) {
    last_save = std::chrono::steady_clock::now();
    NamedTensors extra = prefixed("optim.", optimizer.gather_state());
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
    state.optimizer_steps = optimizer.step_count();
    state.val_images = static_cast<int64_t>(val_source->size());
    state.train_listing = train_listing;
    state.last_log_line = last_log_line;
    model::save_checkpoint(checkpoint_path, vit, extra, state.to_json(),
                           train_source->class_names());
  };
  const StopSignals stop_signals(!(lead && o.progress) ? StopSignals::Announce::kNothing
                                 : world == 1          ? StopSignals::Announce::kOneProcess
                                                       : StopSignals::Announce::kSeveralProcesses);
  if (lead && o.progress)
    print_run_start(o, *train_source, comm,
                    static_cast<int64_t>(train_loader->sampler().epoch_length()) / o.batch_size,
                    start_epoch, static_cast<int64_t>(resume_position) / o.batch_size);

  int64_t train_images = 0;
  double train_seconds = 0;
  std::set<int> lost_classes;  // warned about
  for (int64_t epoch = start_epoch; epoch < o.epochs; ++epoch) {
    const auto epoch_start = std::chrono::steady_clock::now();
    const double lr = schedule.epoch_lr(epoch);
    optimizer.set_lr(lr);
    const uint64_t start_position = epoch == start_epoch ? resume_position : 0;
    train_feed.start_epoch(static_cast<uint64_t>(epoch), start_position);
    // Batches are numbered from the epoch's start, also when it resumes in the middle: the number
    // names the random streams. The same on every rank: each rank's share has the same length.
    const int64_t first_batch = static_cast<int64_t>(start_position) / o.batch_size;
    const int64_t batches = first_batch + static_cast<int64_t>(train_loader->batches_in_epoch());
    if (epoch == start_epoch) {
      summary.resumed_at_batch = first_batch;
      summary.resumed_epoch_batches = batches;
    }
    Progress progress("epoch " + std::to_string(epoch + 1) + "/" + std::to_string(o.epochs),
                      batches, o.progress && lead, first_batch);
    // The batch losses summed so far and their count; on rank 0 of a resumed epoch, starting from
    // the sums the checkpoint holds (all ranks'), so that one rank adds to the same sum in the
    // same order as a run never stopped.
    double loss_sum = 0;
    int64_t counted = 0;
    double carried_images = 0, carried_seconds = 0;  // the epoch before the resumption
    if (start_position > 0) {
      const WithinEpoch& saved_sums = *saved_run.within_epoch;
      carried_images = saved_sums.images;
      carried_seconds = saved_sums.seconds;
      if (lead) {
        loss_sum = saved_sums.loss_sum;
        counted = static_cast<int64_t>(saved_sums.batches);
      }
    }
    const int64_t counted_before = counted;
    int64_t epoch_images = 0, done = first_batch;
    // The micro-batches of the current optimizer step whose loss is not counted yet, and their
    // losses once on the host: on the CPU each at once, on CUDA all at the end of the step.
    struct MicroBatch {
      uint64_t number;
      int64_t images;
    };
    std::vector<MicroBatch> uncounted;
    std::vector<double> uncounted_losses;
    auto check_loss = [&](double loss_value, uint64_t batch_number) {
      if (std::isfinite(loss_value)) return;
      clear_tape();
      throw TrainingDiverged(
          "the loss is " + std::to_string(loss_value) + " at epoch " + std::to_string(epoch + 1) +
          ", batch " + std::to_string(batch_number + 1) +
          (world > 1 ? " of rank " + std::to_string(rank) : "") +
          "; nothing of this epoch was saved (the last checkpoint, if any, is untouched)");
    };
    // CUDA: the end of a queued optimizer step. The device works through it while the next batch
    // goes up; then one wait reads its values: the losses first (a non-finite loss makes the
    // gradient non-finite too, and names the batch), then the norm the update was skipped for.
    auto finish_cuda_step = [&] {
      train_feed.prefetch();
      const StepReadback::Values values = readback->read(optimizer.device_grad_norm(), comm);
      for (size_t i = 0; i < values.losses.size(); ++i)
        check_loss(values.losses[i], uncounted[i].number);
      if (!std::isfinite(values.grad_norm))
        throw TrainingDiverged("optimizer: the global gradient norm is " +
                               std::to_string(values.grad_norm) + " at epoch " +
                               std::to_string(epoch + 1) + "; nothing of this epoch was saved");
      uncounted_losses = values.losses;
      params.zero_grad();
    };
    // The epoch's summed loss, batches and images so far, over every rank. Collective.
    auto epoch_totals = [&] {
      std::vector<double> totals{loss_sum, static_cast<double>(counted),
                                 epoch_images + (lead ? carried_images : 0)};
      comm.all_reduce_sum(totals);
      return totals;
    };
    // A checkpoint of the step the run is at: the data position and the epoch's sums over every
    // rank (rank 0 carries them when the run resumes there).
    auto save_within_epoch = [&] {
      const std::vector<double> totals = epoch_totals();
      data::SamplerState sampler = train_loader->state();
      sampler.position = static_cast<uint64_t>(done) * static_cast<uint64_t>(o.batch_size);
      write_checkpoint(epoch,
                       WithinEpoch{epoch, totals[1], totals[0], totals[2],
                                   seconds_since(epoch_start) + carried_seconds},
                       sampler);
    };
    AfterStep after;
    while (const FeedBatch* batch = train_feed.next()) {
      const uint64_t number = static_cast<uint64_t>(first_batch) + batch->number;
      // Mixup and drop-path draw per rank and batch, as the reference's per-rank seeds do.
      const uint64_t stream_batch = number * static_cast<uint64_t>(world) + rank;
      // The images are already on the device (augmented by the GPU stage on CUDA): fp32, which
      // the CUDA patch unfold casts to bf16 (engine/ops/tokens.cpp). They are mixed in place
      // there, with fp32 targets.
      Tensor images = batch->images;
      const data::MixParams mix =
          draw_mix(o, static_cast<int>(o.model.input_size), epoch, stream_batch);
      const Tensor targets = mix_batch(o, mix, images, *batch);
      Rng drop_path_rng = stream_rng(o.seed, Stream::kDropPath, epoch, stream_batch);
      const Tensor keep_scales =
          vit.draw_keep_scales(images.size(0), o.drop_path, drop_path_rng, DType::f32);
      uncounted.push_back({number, static_cast<int64_t>(batch->size)});
      ++done;
      const bool step_now = done % o.accum_steps == 0 || done == batches;
      if (graph_step && warm && !graph_step->captured()) {
        const std::string failure = graph_step->capture(images, targets, keep_scales, comm);
        if (!failure.empty()) {
          // With several ranks the failed capture may have left NCCL with collectives counted
          // differently on each rank, after which eager steps are not safe: the run stops.
          if (world > 1)
            throw std::runtime_error("--cuda-graph: the step could not be captured (" + failure +
                                     "); run again without --cuda-graph");
          params.zero_grad();  // what the failed capture made
          graph_step.reset();
          if (lead)
            std::fprintf(stderr, "warning: --cuda-graph: the step could not be captured (%s); "
                                 "training goes on without a graph\n", failure.c_str());
        }
      }
      if (graph_step && graph_step->captured()) {
        readback->record_loss(graph_step->run(images, targets, keep_scales,
                                              [&] { optimizer.begin_step_async(); }));
        finish_cuda_step();
      } else {
        const Tensor loss = loss_of(vit.forward_drawn(images, keep_scales), targets);
        if (readback) {
          readback->record_loss(loss);
        } else {
          uncounted_losses.push_back(loss.item());
          check_loss(uncounted_losses.back(), number);
        }
        const Tensor& seed = grad_loss_for(micro_batches_in_step(done, batches, o.accum_steps));
        if (step_now) {
          reducer.backward(loss, seed);
          if (readback) {
            optimizer.step_async();
            if (ema) ema->update(params);
            finish_cuda_step();
          } else {
            try {
              optimizer.step();
            } catch (const NonFiniteGradient& e) {
              throw TrainingDiverged(std::string(e.what()) + " at epoch " +
                                     std::to_string(epoch + 1) +
                                     "; nothing of this epoch was saved");
            }
            params.zero_grad();
            if (ema) ema->update(params);
          }
          warm = true;
        } else {
          backward(loss, seed);
          train_feed.prefetch();
        }
      }
      for (size_t i = 0; i < uncounted_losses.size(); ++i) {
        loss_sum += uncounted_losses[i];
        epoch_images += uncounted[i].images;
        ++counted;
        // Every process trains as many images a step: the run's rate is this one's times the
        // processes.
        progress.update(first_batch + counted - counted_before, epoch_images * world,
                        loss_sum / counted);
      }
      if (!uncounted_losses.empty()) {
        uncounted.clear();
        uncounted_losses.clear();
      }
      // After a whole optimizer step (but an epoch's last, which ends in a checkpoint of its own):
      // every rank learns whether any was asked to stop, and whether rank 0 saves here.
      if (step_now && done < batches) {
        const bool save_due = lead && o.save_every_minutes > 0 &&
                              seconds_since(last_save) >= 60 * o.save_every_minutes;
        after = after_step(comm, save_due);
        if (after.signal != 0) break;
        if (after.save) save_within_epoch();
      }
    }
    progress.finish();
    if (after.signal != 0) {
      save_within_epoch();
      summary.stop = {after.signal, after.rank, epoch, done, batches};
      break;
    }
    const std::vector<double> totals = epoch_totals();
    const double epoch_train_seconds = seconds_since(epoch_start) + carried_seconds;
    train_images += static_cast<int64_t>(totals[2] - carried_images);
    train_seconds += seconds_since(epoch_start);
    const double train_loss = totals[1] > 0 ? totals[0] / totals[1] : 0.0;
    epoch_images = static_cast<int64_t>(totals[2]);

    // Each unusable file was warned about as met; a class made only of them is lost altogether:
    // over every rank (each meets its own share), none of its images loaded and some were skipped.
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

    auto save_epoch = [&] { write_checkpoint(epoch + 1, std::nullopt, train_loader->state()); };
    EvalResult eval;
    try {
      eval = evaluate(vit, val_feed, o.progress && lead, &comm);
    } catch (const data::DataError& e) {
      // A val split that fails to read must not cost the epoch's training. Alone, the process
      // saves it (with several, the others wait in the evaluation's collectives).
      if (world > 1) throw;
      try {
        save_epoch();
      } catch (const std::exception& save_error) {
        throw data::DataError(std::string(e.what()) +
                              "\nand saving the epoch failed too: " + save_error.what());
      }
      const std::string then =
          epoch + 1 < o.epochs ? "resume it there once the val split reads"
                               : "that was the run's last epoch: `deit eval --checkpoint " +
                                     checkpoint_path + "` evaluates it once the val split reads";
      throw data::DataError(std::string(e.what()) + "\nepoch " + std::to_string(epoch + 1) +
                            "'s training is saved, without its evaluation, in " + checkpoint_path +
                            ": " + then);
    }
    if (eval.acc1 > summary.best_acc1 || summary.best_epoch < 0) {
      summary.best_acc1 = eval.acc1;
      summary.best_epoch = epoch;
    }
    summary.last = eval;
    ++summary.epochs_run;
    // The checkpoint first: a log line stands for a saved and evaluated epoch, so a save that
    // fails leaves the folder as the last one left it, to resume or start again. The checkpoint
    // holds the line too, for a run stopped before it is logged (restore_last_log_line).
    const double epoch_seconds = seconds_since(epoch_start) + carried_seconds;
    last_log_line = {{"train_lr", lr},
                     {"train_loss", train_loss},
                     {"test_loss", eval.loss},
                     {"test_acc1", eval.acc1},
                     {"test_acc5", eval.acc5},
                     {"epoch", epoch},
                     {"n_parameters", summary.parameters},
                     {"train_images_per_s", epoch_images / epoch_train_seconds},
                     {"epoch_time_s", epoch_seconds}};
    save_epoch();
    if (lead) append_log_line(log_path, last_log_line, checkpoint_path, epoch + 1 == o.epochs);
    if (lead && o.progress) {
      // What is left, at this epoch's pace (a resumed epoch's counted whole).
      const int64_t epochs_left = o.epochs - epoch - 1;
      const std::string left =
          epochs_left == 0 ? ""
                           : "; " + std::to_string(epochs_left) + " more epoch" +
                                 (epochs_left == 1 ? "" : "s") + ", about " +
                                 format_duration(static_cast<double>(epochs_left) *
                                                 (seconds_since(epoch_start) + carried_seconds));
      std::fprintf(stderr,
                   "epoch %lld/%lld  lr %.3g  train loss %.4f  val acc1 %.2f%%  acc5 %.2f%%  "
                   "val loss %.4f  (%s%s)\n",
                   (long long)epoch + 1, (long long)o.epochs, lr, train_loss, eval.acc1, eval.acc5,
                   eval.loss, format_duration(seconds_since(epoch_start)).c_str(), left.c_str());
    }
    // A signal during the evaluation: the epoch's checkpoint is the place to stop. After the last
    // epoch's there is nothing left to stop: the summary says the signal came.
    if ((after = after_step(comm, false)).signal != 0) {
      summary.stop = {after.signal, after.rank, epoch + 1, 0, batches, epoch + 1 == o.epochs};
      break;
    }
  }
  // Collectives: when train() returns on any rank, rank 0's log and checkpoint are complete.
  summary.skipped_images =
      files_skipped_by_any_rank(comm, train_loader->skipped(), train_source->size()) +
      files_skipped_by_any_rank(comm, val_loader->skipped(), val_source->size());
  summary.seconds = seconds_since(run_start);
  summary.train_images_per_second = train_seconds > 0 ? train_images / train_seconds : 0;
  return summary;
}

}  // namespace deit::train
