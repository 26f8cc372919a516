// The stages of each epoch of a run (train/run.h): its steps, eager or replayed as a CUDA graph,
// its sums over the ranks, the evaluation, the checkpoint and the log line.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <set>

#include "data/mixup.h"
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/stream.h"
#include "kernels/augment.h"
#include "train/run.h"
#include "train/run_log.h"

namespace deit::train::detail {

namespace {

// What a run that diverged has kept: its last checkpoint, which may hold part of the epoch
// (--save-every, or the checkpoint a run resumed mid-epoch from).
constexpr const char* kNothingSavedSinceCheckpoint =
    "; nothing since the last checkpoint was saved (that checkpoint, if any, is untouched)";

// How many of a split's images some rank found unusable, each counted once: the train split is
// dealt out anew each epoch, so one file may be met by several ranks. The ranks' lists of indices
// are gathered (each rank writes its own run of a buffer the all-reduce sums), not marked in a
// buffer of one entry per image, which the all-reduce would carry whole (112 MB at ImageNet-21k's
// 14 million images) for a few files. Collective.
int64_t files_skipped_by_any_rank(Communicator& comm, const data::SkippedImages& skipped) {
  const std::vector<int64_t> mine = skipped.indices();
  std::vector<double> counts(static_cast<size_t>(comm.world_size()), 0.0);
  counts[static_cast<size_t>(comm.rank())] = static_cast<double>(mine.size());
  comm.all_reduce_sum(counts);
  const auto total = static_cast<size_t>(std::accumulate(counts.begin(), counts.end(), 0.0));
  if (total == 0) return 0;
  const auto offset =
      static_cast<size_t>(std::accumulate(counts.begin(), counts.begin() + comm.rank(), 0.0));
  std::vector<double> all(total, 0.0);  // indices below 2^53: exact in a double
  for (size_t i = 0; i < mine.size(); ++i) all[offset + i] = static_cast<double>(mine[i]);
  comm.all_reduce_sum(all);
  return static_cast<int64_t>(std::set<double>(all.begin(), all.end()).size());
}

NamedTensors prefixed(const std::string& prefix, const NamedTensors& tensors) {
  NamedTensors out;
  for (const auto& [name, t] : tensors) out.emplace_back(prefix + name, t);
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

}  // namespace

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
                               std::to_string(epoch.number + 1) + kNothingSavedSinceCheckpoint);
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
                           std::to_string(epoch.number + 1) + kNothingSavedSinceCheckpoint);
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
      (world > 1 ? " of rank " + std::to_string(rank) : "") + kNothingSavedSinceCheckpoint);
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
  // The batches trained, not the loader's count, which includes the one a CUDA feed staged ahead.
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
                  ", about " + format_duration(static_cast<double>(epochs_left) * epoch_seconds);
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
  summary.skipped_images = files_skipped_by_any_rank(comm, train_loader->skipped()) +
                           files_skipped_by_any_rank(comm, val_loader->skipped());
  summary.seconds = seconds_since(run_start);
  summary.train_images_per_second = train_seconds > 0 ? train_images / train_seconds : 0;
  return summary;
}

}  // namespace deit::train::detail
