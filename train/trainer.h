// The training loop of the DeiT III recipe, one loop for the CPU and CUDA backends (--device):
//
//   for each epoch:  lr = cosine schedule with warm-up, set once per epoch (as main.py steps
//                    timm's: epoch e trains at the schedule's value at e - 1, engine/schedule.h)
//     for each batch of the sampler (3 augmented views of each image with --repeated-aug):
//       images, labels -> mixup or cutmix (one lambda per batch) -> targets, binarised for BCE
//       logits = ViT(images) with per-sample drop-path -> BCE (or soft-target cross-entropy)
//       backward; every accum_steps micro-batches: LAMB / AdamW step, grads zeroed, EMA update
//     evaluate on the validation split; write OUTPUT/checkpoint.safetensors (temporary file,
//     then rename), then append the epoch's JSON line to OUTPUT/log.txt (train/run_log.h)
//
// train() in trainer.cpp reads as that outline: each stage is a method of a Run (train/run.h),
// the state the stages share, defined in train/run_setup.cpp (up to the first step) and
// train/run_epoch.cpp (each epoch). train/output_folder.h says which runs may write OUTPUT.
//
// On CUDA (DESIGN.md "Precision") the parameters are fp32 masters with bf16 copies on the device,
// initialised from the host's random draws, so a run starts from the CPU run's weights. The worker
// threads decode the images and draw their augmentation parameters (the same draws as a CPU run);
// the uint8 sources go up through pinned buffers on a copy stream while the device computes the
// previous step, and the GPU stage augments them (train/input_feed.h, kernels/augment.h, the CPU
// stage's values bit for bit) into fp32 images (the patch unfold casts them to bf16), then mixes
// images and targets (fp32) on the device. Evaluation's resize and centre crop run there too.
// Backward, the optimizer update and the EMA update are queued on the device, and the host waits
// for it once per optimizer step, reading that step's losses and gradient norm together
// (train/step_readback.h); with --cuda-graph every step after the first is one replay of a
// captured step (train/graph_step.h). Evaluation reads the logits back per batch. Checkpoints
// hold host copies of the fp32 masters and of the optimizer and EMA state, and load back onto the
// device. bf16 activations make a CUDA run close to a CPU run, not equal.
//
// Every random choice is drawn from a stream named by (seed, epoch, batch, purpose) or by the
// sample's position (augmentation), never from a generator carried across steps: a run resumed from
// the end of an epoch repeats, bit for bit on the CPU, what the uninterrupted run did.
//
// Data-parallel (one process per rank, started by mpirun, torchrun or srun; engine/rendezvous.h):
// rank 0's weights are broadcast at the start (after init, --finetune or --resume); each rank reads
// its share of every epoch (data/sampler.h) with batch --batch-size; the gradients are averaged
// over the ranks in buckets during the last backward of each optimizer step
// (engine/gradient_reducer.h), so every rank makes the same update, that of one process with the
// global batch (--batch-size * ranks); the optimizer state is replicated or, with --zero, sharded
// (engine/sharded_optimizer.h). The collectives are MPI's on the CPU and NCCL's on CUDA
// (engine/communicator.h); on CUDA each bucket is reduced on a communication stream while backward
// goes on, and the optimizer waits for the buckets. Validation is sharded and its counts summed,
// every image counted once. The train loss and throughput are summed over the ranks. Rank 0 alone
// prints progress and writes log.txt and the checkpoint, which records the world size: --resume
// needs the same one. Random streams across ranks: the augmentation of a sample is named by its
// global position, so it is the same whatever the number of ranks; mixup (one lambda per batch, as
// timm) and drop-path are drawn per rank and batch, as the reference's per-rank seeds make them.
// With mixup, cutmix and drop-path off, w ranks with batch b therefore train like one process with
// batch w * b, up to the order of floating-point sums (tests/test_distributed_train.cpp).
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

#include "engine/communicator.h"
#include "train/evaluate.h"
#include "train/recipe.h"

namespace deit::train {

// The loss became NaN or infinite; nothing of that epoch was written.
struct TrainingDiverged : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Where a run that a signal stopped (train/stop_request.h) saved its checkpoint.
struct StoppedAt {
  int signal = 0;            // 0: the run was not stopped
  int rank = 0;              // the (lowest) rank that received it
  int64_t epoch = 0;         // the epoch it stopped in (0-based)
  int64_t batches_done = 0;  // of that epoch's batches; 0: before the epoch began
  int64_t batches = 0;
  bool finished = false;  // it came during the last epoch's evaluation: the run had finished
};

struct TrainSummary {
  int64_t epochs_run = 0;        // in this invocation, the first perhaps in part:
  int64_t resumed_at_batch = 0;  // batches of it done before (0: it began at its start)...
  int64_t resumed_epoch_batches = 0;  // ...of these
  EvalResult last;               // evaluation after the final epoch
  double best_acc1 = 0;
  int64_t best_epoch = -1;
  double seconds = 0;
  double train_images_per_second = 0;
  int64_t skipped_images = 0;    // unusable files any rank met in the data
  std::string checkpoint;        // path of the last checkpoint
  std::string log;               // path of log.txt
  int64_t parameters = 0;
  int rank = 0;        // of this process in the run
  int world_size = 1;  // processes in the run
  StoppedAt stop;      // a stopped run has saved its checkpoint (and, unless finished, not
                       // trained all its epochs)
};

// Trains with the ranks of `comm` (every rank calls it, with the same options); the summary's
// numbers are those of the whole run on every rank.
TrainSummary train(TrainOptions options, Communicator& comm);
// As above, with the communicator of this process's launch (make_communicator: alone when not
// started by mpirun, torchrun or srun). `--device cuda` becomes cuda:LOCAL_RANK.
TrainSummary train(TrainOptions options);

// What train() refuses before it reads any data, but for the device (a run may be planned on a
// machine without the GPU it will train on): invalid options, an --output that holds another run,
// lies inside the dataset's splits or cannot be a folder (a file stands there), a resumed run with
// nothing left to train or another optimizer. What --dry-run checks; not the folder's lock
// (train/output_lock.h), as a dry run often plans a run that starts once the one holding it has
// ended.
void check_before_data(const TrainOptions& options);

// The warning of a resumed run whose settings change its course (those of
// TrainOptions::course_differences against the options its checkpoint saved), if any.
void warn_of_course_changes(const TrainOptions& options, const nlohmann::json& saved_options);

}  // namespace deit::train
