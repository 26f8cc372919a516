// Collectives for data-parallel training behind one interface, with three backends:
//   single  world size 1: every collective leaves its values as they are (they are the result);
//   mpi     CPU tensors, over MPI (engine/communicator_mpi.cpp, built with DEIT_HAVE_MPI);
//   nccl    CUDA tensors, on the device's compute stream (engine/stream.h), so a collective is
//           ordered after the kernels that produced its input and before those that read its
//           output without any synchronisation (engine/communicator_nccl.cpp, DEIT_HAVE_NCCL).
// make_communicator picks one from the device and the rendezvous (engine/rendezvous.h).
//
// As with MPI and NCCL themselves, every rank must call the same collectives in the same order,
// with tensors of the same shapes and dtypes. Calls come from one thread.
//
// Determinism: the same inputs on the same number of ranks give the same bits, run after run, and
// the same bits on every rank. MPI: MPI_Allreduce, whose algorithm Open MPI picks from the message
// size and the number of ranks alone; each algorithm (ring, recursive doubling, ...) reduces every
// element along a fixed schedule, and where two ranks combine the same two partial sums they get
// the same float (a + b == b + a). NCCL: the same holds for a fixed topology, NCCL version and
// NCCL_ALGO / NCCL_PROTO. A different number of ranks sums in a different order (fp32 rounding).
//
// Failures: an MPI or NCCL call that fails throws std::runtime_error naming the call, file and
// line. When one rank dies or leaves by an exception, the others cannot finish the collective they
// are in; it is the launcher that ends them: mpirun terminates the whole job as soon as one rank
// exits abnormally (non-zero, by a signal, or without MPI_Finalize), torchrun does the same, and
// srun does with --kill-on-bad-exit=1. For that, a rank that leaves a communicator's scope by an
// exception must not wait for the others on its way out: its communicator then skips MPI_Finalize
// (which synchronises all ranks in Open MPI) and NCCL's orderly teardown, and the process exits
// without them.
#pragma once
#include <cstddef>
#include <memory>
#include <vector>

#include "engine/device.h"
#include "engine/rendezvous.h"
#include "engine/tensor.h"

namespace deit {

enum class ReduceOp { sum, mean };

// How a list of tensors is reduced: groups of indices into `tensors`, in order, each reduced as one
// flat buffer. Consecutive tensors of one dtype share a group while their bytes fit in
// `bucket_bytes`; a tensor at least that large is a group of its own. A group of one tensor is
// reduced in place, without a copy.
std::vector<std::vector<size_t>> plan_buckets(const std::vector<Tensor>& tensors,
                                              size_t bucket_bytes);

class Communicator {
 public:
  static constexpr size_t kDefaultBucketBytes = size_t{25} << 20;  // PyTorch DDP's bucket_cap_mb

  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  int local_rank() const { return local_rank_; }
  Device device() const { return device_; }
  virtual const char* backend() const = 0;  // "single", "mpi" or "nccl"

  // Tensors are f32 or f64 on device(), reduced in place: a Tensor is a handle, and the storage it
  // views is what is written (so a temporary such as param.grad() can be passed).
  void all_reduce_sum(const Tensor& tensor);
  void all_reduce_mean(const Tensor& tensor);
  // Every tensor of the list, packed into buckets of at most `bucket_bytes` (plan_buckets) and
  // reduced one bucket at a time: one collective per bucket rather than per tensor, and at most one
  // bucket of scratch memory. For all of a model's gradients.
  void all_reduce_sum(const std::vector<Tensor>& tensors,
                      size_t bucket_bytes = kDefaultBucketBytes);
  void all_reduce_mean(const std::vector<Tensor>& tensors,
                       size_t bucket_bytes = kDefaultBucketBytes);
  // A few host values, such as a step's loss sum and sample count.
  void all_reduce_sum(std::vector<double>& values);
  void all_reduce_mean(std::vector<double>& values);

  // Rank `root`'s values overwrite every other rank's; a CUDA parameter's bf16 copy
  // (engine/parameters.h) is recast from them.
  void broadcast(const Tensor& tensor, int root = 0);
  // In buckets, as the list all-reduce: a model's parameters at the start of training.
  void broadcast(const std::vector<Tensor>& tensors, int root = 0,
                 size_t bucket_bytes = kDefaultBucketBytes);

  // Returns once every rank has called it; with NCCL, also once this rank's queued work is done.
  virtual void barrier() = 0;

 protected:
  Communicator(Device device, int rank, int world_size, int local_rank);

  // The backends' collectives on one checked tensor: f32 or f64, on device(), not empty.
  virtual void all_reduce_flat(const Tensor& flat, ReduceOp op) = 0;
  virtual void broadcast_flat(const Tensor& flat, int root) = 0;

 private:
  void reduce(const Tensor& tensor, ReduceOp op);
  void reduce(const std::vector<Tensor>& tensors, ReduceOp op, size_t bucket_bytes);
  void reduce(std::vector<double>& values, ReduceOp op);
  void check_tensor(const Tensor& tensor, const char* what) const;
  void check_root(int root) const;

  Device device_;
  int rank_;
  int world_size_;
  int local_rank_;
};

// World size 1 -> single; a CPU device -> MPI; a CUDA device -> NCCL. Throws std::runtime_error
// when the backend needed was not built in ("this deit was built without MPI"), or when the launch
// and the backend disagree (e.g. a CPU run started by torchrun, whose processes MPI cannot
// connect).
std::unique_ptr<Communicator> make_communicator(Device device, const Rendezvous& rendezvous);

}  // namespace deit
