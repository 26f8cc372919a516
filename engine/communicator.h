// Collectives for data-parallel training behind one interface, with three backends:
//   single  world size 1: every collective leaves its values as they are (they are the result);
//   mpi     CPU tensors, over MPI (engine/communicator_mpi.cpp, built with DEIT_HAVE_MPI);
//   nccl    CUDA tensors, on the device's communication stream (engine/stream.h), joined to the
//           compute stream by events (engine/communicator_nccl.cpp, DEIT_HAVE_NCCL).
// make_communicator picks one from the device and the rendezvous (engine/rendezvous.h).
//
// Sharded optimizer state (ZeRO-1) adds a reduce-scatter of the gradient buckets (each tensor
// averaged on the rank that owns it) and an all-gather of the updated parameters (each owner's
// values to every rank); their shares are whole tensors, so of unequal sizes.
//
// Ordering on CUDA: every collective but a gradient bucket is ordered like a kernel on the compute
// stream: after the work queued there before the call, and before the work queued after it,
// without any host synchronisation. A gradient bucket (start_bucket_mean) is ordered after the
// work queued before it and runs beside what follows, until finish_buckets() joins it: that is how
// the reduction of the gradients overlaps the rest of backward (engine/gradient_reducer.h).
//
// As with MPI and NCCL themselves, every rank must call the same collectives in the same order,
// with tensors of the same shapes and dtypes. Calls come from one thread.
//
// Determinism: the same inputs on the same number of ranks give the same bits, run after run, and
// the same bits on every rank. MPI: MPI_Allreduce (and MPI_Reduce_scatter), whose algorithm Open
// MPI picks from the message size and the number of ranks alone; each algorithm (ring, recursive
// doubling, ...) reduces every element along a fixed schedule, and where two ranks combine the
// same two partial sums they get the same float (a + b == b + a). NCCL: the same holds for a fixed
// topology, NCCL version and NCCL_ALGO / NCCL_PROTO. A different number of ranks sums in a
// different order (fp32 rounding), and so may a reduce-scatter and an all-reduce of more than two
// ranks (on two, MPI's ZeRO-1 averages are a replicated run's bit for bit: a + b, then halved).
//
// Failures: an MPI or NCCL call that fails throws std::runtime_error naming the call, file and
// line. When one rank dies or leaves by an exception, the others cannot finish the collective they
// are in; it is the launcher that ends them: mpirun terminates the whole job as soon as one rank
// exits abnormally (non-zero, by a signal, or without MPI_Finalize), torchrun does the same, and
// srun does with --kill-on-bad-exit=1. For that, a rank that leaves a communicator's scope by an
// exception must not wait for the others on its way out: its communicator then skips MPI_Finalize
// (which synchronises all ranks in Open MPI) and NCCL's orderly teardown, and the process exits
// without them. Where no launcher ends them (a peer that hangs rather than dies, srun without
// --kill-on-bad-exit), the ranks end themselves after DEIT_COMM_TIMEOUT seconds
// (Rendezvous::comm_timeout): MPI's collectives are waited for against that deadline, and NCCL's
// through wait_for_device(), which gives up after it; the rank that gives up throws (exiting
// without the teardown above), and its exit ends the job as a death does. MPI_Init and NCCL's
// calls that make and free a communicator block until the other ranks take part, and cannot be
// interrupted: past the deadline, a watchdog ends the process from another thread
// (engine/watchdog.h).
#pragma once
#include <cstddef>
#include <memory>
#include <optional>
#include <vector>

#include "engine/device.h"
#include "engine/rendezvous.h"
#include "engine/tensor.h"

namespace deit {

enum class ReduceOp { sum, mean };

// Device time of the gradient buckets that one finish_buckets() joined (NCCL, eager steps).
struct BucketTiming {
  int buckets = 0;
  // The buckets' own time on the communication stream (the all-reduce, and the packing and
  // unpacking of a bucket that does not lie in its homes), added up: what the reduction costs,
  // hidden or not.
  double busy_ms = 0;
  // From the end of the compute stream's work queued before finish_buckets() to the end of the
  // last bucket, or 0 when the buckets ended first: how long the compute stream waited for them,
  // the communication time that backward did not hide.
  double exposed_ms = 0;
};

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

  // ZeRO-1's parameters after an update (engine/sharded_optimizer.h): each tensor's values on its
  // owner rank (`owners`, a rank per tensor, in non-decreasing order) overwrite the other ranks'.
  // An all-gather of shares of unequal sizes, in buckets as the list all-reduce: the tensors of a
  // bucket are packed, so each rank's share of it is one run. Ordered on CUDA like a kernel on the
  // compute stream; a CUDA parameter's bf16 copy is recast.
  void all_gather(const std::vector<Tensor>& tensors, const std::vector<int>& owners,
                  size_t bucket_bytes = kDefaultBucketBytes);

  // Returns once every rank has called it; with NCCL, also once this rank's queued work is done.
  virtual void barrier() = 0;

  // Returns once the work queued on device()'s compute stream so far is done (at once for CPU
  // tensors): where the host reads what collectives computed. NCCL polls instead of blocking, and
  // when a collective fails (NCCL's asynchronous error) or nothing completes within the
  // rendezvous's comm_timeout, aborts the communicator and throws, naming the rank.
  virtual void wait_for_device();

  // True for the single backend, whose collectives leave every value as it is: callers may skip
  // them (and their packing) altogether.
  virtual bool collectives_are_noops() const { return false; }

  // Gradient buckets (engine/gradient_reducer.h). Averages `tensors` (one dtype, f32 or f64, on
  // device()) over the ranks as one buffer: several tensors are packed into `scratch` (of their
  // dtype, at least their total size, used by nothing else) and unpacked, unless they already lie
  // there one after another from its start (the reducer's gradient homes), where they are reduced
  // in place; one tensor is reduced in place and `scratch` is not touched. The result is
  // all_reduce_mean's, bit for bit.
  //   MPI: complete when the call returns.
  //   NCCL: returns at once. The bucket runs on the communication stream after the work queued on
  //   the compute stream before the call, beside the work queued after it: nothing may read or
  //   write `tensors` or `scratch`, nor the host free them, until finish_buckets() has joined it.
  //   Buckets run one after another, so one scratch serves them all.
  // With `owners` (a rank per tensor, in non-decreasing order), a reduce-scatter instead of an
  // all-reduce (ZeRO-1's gradients, engine/sharded_optimizer.h): each tensor's average is made on
  // its owner only, and the other ranks' copies of it are left with unspecified values. That moves
  // about half the bytes of an all-reduce.
  void start_bucket_mean(const std::vector<Tensor>& tensors, const Tensor& scratch,
                         const std::vector<int>& owners = {});
  // The work queued on the compute stream after this call runs after every bucket started before
  // it (NCCL; without a host wait). Nothing to do for MPI.
  virtual void finish_buckets() {}
  // The device time of the buckets the last finish_buckets() joined; waits for them. Read it
  // before the next start_bucket_mean, which records over their events (nullopt from then on).
  // nullopt where buckets reduce on the host while backward waits for them (MPI: every bucket is
  // exposed), where there were none, or where that work was captured into a CUDA graph rather
  // than run (its events are not recorded then).
  virtual std::optional<BucketTiming> last_bucket_timing() const { return std::nullopt; }

 protected:
  Communicator(Device device, int rank, int world_size, int local_rank);

  // The backends' collectives on one checked tensor: f32 or f64, on device(), not empty.
  virtual void all_reduce_flat(const Tensor& flat, ReduceOp op) = 0;
  virtual void broadcast_flat(const Tensor& flat, int root) = 0;
  // Collectives over the ranks' runs of `flat`: counts[r] elements for rank r, one after another
  // in rank order (counts may be 0; one per rank). reduce_scatter_flat leaves on each rank, in its
  // own run, the reduction of every rank's values of that run, and unspecified values in the rest
  // of `flat`. all_gather_flat overwrites each run with its rank's values.
  virtual void reduce_scatter_flat(const Tensor& flat, const std::vector<int64_t>& counts,
                                   ReduceOp op) = 0;
  virtual void all_gather_flat(const Tensor& flat, const std::vector<int64_t>& counts) = 0;
  // One checked bucket of start_bucket_mean: `flat` is the scratch cut to the bucket's size, or
  // undefined for a lone tensor; `counts` the ranks' runs of a reduce-scatter
  // (reduce_scatter_flat), empty for an all-reduce. By default it runs at once: pack, the
  // collective, unpack.
  virtual void start_bucket(const std::vector<Tensor>& tensors, const Tensor& flat, ReduceOp op,
                            const std::vector<int64_t>& counts);

 private:
  void reduce(const Tensor& tensor, ReduceOp op);
  void reduce(const std::vector<Tensor>& tensors, ReduceOp op, size_t bucket_bytes);
  void reduce(std::vector<double>& values, ReduceOp op);
  void check_tensor(const Tensor& tensor, const char* what) const;
  void check_root(int root) const;
  // The ranks' runs when `tensors` are packed in order: elements per rank, from each tensor's
  // owner. Throws std::invalid_argument unless `owners` has a rank per tensor, non-decreasing.
  std::vector<int64_t> runs_of(const std::vector<Tensor>& tensors, const std::vector<int>& owners,
                               const char* what) const;

  Device device_;
  int rank_;
  int world_size_;
  int local_rank_;
};

// World size 1: the sum and the mean over one rank are its own values (in a reduce-scatter too:
// its run is the whole buffer), a broadcast or an all-gather from rank 0 is already done, and
// there is nobody to wait for. (Not final: a test stands in for a one-rank backend whose
// collectives run.)
class SingleProcessCommunicator : public Communicator {
 public:
  SingleProcessCommunicator(Device device, int local_rank)
      : Communicator(device, 0, 1, local_rank) {}
  const char* backend() const override { return "single"; }
  void barrier() override {}
  bool collectives_are_noops() const override { return true; }

 protected:
  void all_reduce_flat(const Tensor&, ReduceOp) override {}
  void broadcast_flat(const Tensor&, int) override {}
  void reduce_scatter_flat(const Tensor&, const std::vector<int64_t>&, ReduceOp) override {}
  void all_gather_flat(const Tensor&, const std::vector<int64_t>&) override {}
};

// World size 1 -> single (but NCCL on a CUDA device with rendezvous.nccl_one_rank); a CPU device
// -> MPI; a CUDA device -> NCCL. Throws std::runtime_error
// when the backend needed was not built in ("this deit was built without MPI"), or when the launch
// and the backend disagree (e.g. a CPU run started by torchrun, whose processes MPI cannot
// connect).
std::unique_ptr<Communicator> make_communicator(Device device, const Rendezvous& rendezvous);

}  // namespace deit
