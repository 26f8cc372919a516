// Shared by the data-parallel tests of the CPU (test_distributed_train.cpp and test_comm_mpi.cpp,
// over MPI) and of CUDA (test_nccl_ranks_cuda.cpp, over NCCL): every rank of one job calls them
// alike.
#pragma once
#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <csignal>
#include <exception>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "data/synthetic.h"
#include "engine/communicator.h"
#include "model/checkpoint.h"
#include "tests/test_data_helpers.h"
#include "train/trainer.h"

namespace deit::test {

// For the cases that make a rank hang on purpose: every rank makes a CPU communicator (so MPI is
// running on all of them) under a rendezvous whose waits give up after 2 s, passes a barrier, and
// rank `stopped` then stops (SIGSTOP) until mpirun ends it. The others get the communicator and
// the rendezvous.
struct StoppedRank {
  Rendezvous rendezvous;
  std::unique_ptr<Communicator> comm;
};
inline StoppedRank stop_rank(int stopped) {
  StoppedRank job{detect_rendezvous(), nullptr};
  job.rendezvous.comm_timeout = std::chrono::seconds(2);
  job.comm = make_communicator(Device::cpu(), job.rendezvous);
  job.comm->barrier();
  if (job.comm->rank() == stopped) std::raise(SIGSTOP);
  return job;
}

// Rank 0's text on every rank (the communicator moves floating-point values: one byte in each).
inline std::string from_rank0(Communicator& comm, const std::string& text) {
  constexpr size_t kMax = 1024;
  REQUIRE(text.size() < kMax);
  std::vector<double> bytes(kMax, 0.0);
  if (comm.rank() == 0)
    for (size_t i = 0; i < text.size(); ++i) bytes[i] = static_cast<unsigned char>(text[i]);
  comm.all_reduce_sum(bytes);
  std::string out;
  for (double b : bytes) {
    if (b == 0) break;
    out.push_back(static_cast<char>(b));
  }
  return out;
}

// A folder shared by the ranks: made by rank 0, which removes it once every rank is done with it.
class SharedDir {
 public:
  explicit SharedDir(Communicator& comm) : comm_(comm) {
    if (comm.rank() == 0) owned_ = std::make_unique<test::TempDir>();
    path_ = from_rank0(comm, owned_ ? owned_->path() : "");
  }
  ~SharedDir() {
    // Every rank is done before rank 0's TempDir removes the folder; but a rank leaving by an
    // exception must not wait for the others (engine/communicator.h).
    if (std::uncaught_exceptions() == 0) comm_.barrier();
  }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  Communicator& comm_;
  std::unique_ptr<test::TempDir> owned_;
  std::string path_;
};

// 3 classes of 16 x 16 images: 24 to train on (3 steps of 8 images, 4 per rank on two ranks) and 3
// to validate on (2 on rank 0, 1 on rank 1: an uneven split must count each image once).
inline std::string write_dataset(Communicator& comm, const std::string& root) {
  if (comm.rank() == 0) {
    data::SyntheticOptions options;
    options.image_size = 16;
    options.num_classes = 3;
    options.train_per_class = 8;
    options.val_per_class = 1;
    data::generate_synthetic_dataset(root, options);
  }
  comm.barrier();
  return root;
}

// A tiny ViT with every source of per-rank randomness off (mixup, cutmix, drop-path: see
// train/trainer.h); augmentation stays on, drawn per sample by its global position. Full learning
// rate from the first step, so that the weights move well beyond the tolerance; --clip-grad low
// enough to clip every step, so a rank that clipped by its own shard's norm would stand out; small
// buckets, so gradients are reduced in many buckets while backward runs.
inline train::TrainOptions tiny_run(const std::string& data, const std::string& out,
                                    int64_t batch) {
  train::TrainOptions o = train::recipe_for("deit3_tiny");
  o.model.patch = 4;
  o.model.dim = 16;
  o.model.depth = 2;
  o.model.heads = 2;
  o.model.input_size = 8;
  o.data_dir = data;
  o.output_dir = out;
  o.epochs = 1;
  o.batch_size = batch;
  o.warmup_epochs = 0;
  o.mixup = 0;
  o.cutmix = 0;
  o.drop_path = 0;
  o.repeated_aug = false;
  o.clip_grad = 0.05;
  o.bucket_mb = 4.0 / 1024;  // 4 KiB
  o.workers = 1;
  o.progress = false;
  return o;
}

// Under `dir`: "whole", 2 epochs of `run` with --zero; "first", its first epoch alone; "rest",
// the second epoch resumed from first's checkpoint without --zero (the checkpoint's optimizer
// state is whole, whoever held which part). Returns rest's summary.
inline train::TrainSummary train_resumed_across_zero(const train::TrainOptions& run,
                                                     const SharedDir& dir, Communicator& comm) {
  train::TrainOptions whole = run;
  whole.output_dir = dir.file("whole");
  whole.epochs = 2;
  whole.zero = true;
  train::train(whole, comm);
  train::TrainOptions first = whole;
  first.output_dir = dir.file("first");
  first.epochs = 1;
  train::train(first, comm);
  train::TrainOptions rest = whole;
  rest.output_dir = dir.file("rest");
  rest.zero = false;
  rest.resume = dir.file("first/checkpoint.safetensors");
  return train::train(rest, comm);
}

using Tensors = std::map<std::string, std::vector<double>>;

inline Tensors read_tensors(const NamedTensors& named) {
  Tensors out;
  for (const auto& [name, t] : named) out[name] = t.to_vector<double>();
  return out;
}

inline Tensors model_of(const std::string& checkpoint) {
  return read_tensors(model::read_checkpoint(checkpoint, false).model);
}

inline double norm(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x * x;
  return std::sqrt(s);
}

// The largest per-tensor relative difference ||a - b|| / ||b||.
inline double max_relative_error(const Tensors& a, const Tensors& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (const auto& [name, want] : b) {
    const std::vector<double>& got = a.at(name);
    REQUIRE(got.size() == want.size());
    std::vector<double> diff(got.size());
    for (size_t i = 0; i < got.size(); ++i) diff[i] = got[i] - want[i];
    const double scale = norm(want);
    worst = std::max(worst, scale > 0 ? norm(diff) / scale : norm(diff));
  }
  return worst;
}

}  // namespace deit::test
