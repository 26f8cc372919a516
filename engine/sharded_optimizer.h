// The optimizer of a data-parallel run, whose parameters must stay identical on every rank after
// every step:
//  - replicated (the default): every rank holds every gradient, averaged over the ranks
//    (engine/gradient_reducer.h), keeps the whole optimizer state and makes the same update;
//  - sharded, ZeRO stage 1 (`deit train --zero`): the parameters are split across the ranks by
//    whole tensors (LAMB's trust ratio needs a whole tensor), in contiguous runs of registration
//    order with about equal element counts (partition_parameters). Each rank keeps the state of,
//    and updates, only the tensors it owns. The gradient reducer, given gradient_owners(),
//    reduce-scatters the gradients, so each average is made on its owner only; after the update
//    an all-gather (Communicator::all_gather) brings every owner's tensors to the other ranks.
//    An all-reduce is itself a reduce-scatter followed by an all-gather, so the two move about
//    the bytes the replicated run's all-reduce moves: what sharding saves is memory. The
//    optimizer state per rank (two moments, twice the model in fp32) shrinks by the world size,
//    which is what lets ViT-H's LAMB state fit beside a large batch.
// Clipping (--clip-grad, LAMB's max_grad_norm) needs the norm of every gradient, which no rank has
// all of when sharded. On the CPU each rank computes the squared norms of its own gradients, one
// per tensor; a sum over the ranks fills in the others' (exactly: each entry has one non-zero
// term), and every rank adds them up in registration order, as an unsharded step does
// (global_grad_norm): a sharded step makes bit-for-bit the update of a replicated one, given the
// same averages (two ranks: a + b either way). On CUDA the norm stays on the device: each rank sums
// the squares of its own share's gradients and a one-float all-reduce adds the shares up
// (Optimizer::sum_grad_squares_with), so the norm is summed in another order than a replicated
// step's (fp32 rounding), but it is the same on every rank, and so is the update. The all-gather
// is queued on the compute stream like the update (engine/communicator.h), so a sharded CUDA step
// needs no host wait either and can be captured in a graph. On CUDA every rank must own at least
// one tensor (the constructor says so when a rank would own none).
//
// Sharding needs collectives that run: it is on for several ranks, and for NCCL on one
// (DEIT_NCCL_ONE_RANK: one rank owns everything, so the path runs where one GPU is).
//
// Checkpoints have one format, whatever the world size and the sharding: gather_state() collects
// the whole state on rank 0 in Optimizer::state()'s layout, and load_state() takes that layout and
// keeps each rank's share. A run saved with --zero resumes without it and vice versa.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "engine/communicator.h"
#include "engine/optimizer.h"
#include "engine/parameters.h"

namespace deit {

// The rank that owns each parameter (by registration index) when `params` is sharded over
// `world_size` ranks: a tensor belongs to the rank whose equal share of the elements holds its
// middle element, so a rank's elements differ from an equal share by at most half a tensor at
// each end of its run. Contiguous and non-decreasing (the order the reducer's runs and
// Communicator::all_gather need); a rank may own nothing when tensors are few, and with no
// elements at all rank 0 owns every tensor.
std::vector<int> partition_parameters(const ParameterRegistry& params, int world_size);

class ShardedOptimizer {
 public:
  // `name` as make_optimizer takes it. `params` and `comm` must outlive the optimizer. With
  // shard_state false, or alone (Communicator::collectives_are_noops), every rank owns every
  // parameter.
  ShardedOptimizer(const std::string& name, const ParameterRegistry& params,
                   const OptimizerOptions& options, Communicator& comm, bool shard_state);

  // One update of every parameter from the averaged gradients (sharded: each rank's own tensors'
  // averages, as the reducer made them with gradient_owners()); a collective when sharded.
  // Returns the global gradient norm before clipping. Throws NonFiniteGradient, with nothing
  // modified, on every rank alike when a gradient is not finite.
  double step();
  // CUDA parameters: Optimizer::step_async (one update enqueued, no wait; then, when sharded, the
  // all-gather of the owners' tensors) and the device_grad_norm() it leaves on the device, the
  // global norm. Also in the two halves Optimizer describes for CUDA graphs: update_async() is
  // what a graph captures, begin_step_async() what runs before each replay.
  void step_async();
  void begin_step_async() { local_->begin_step_async(); }
  void update_async();
  Tensor device_grad_norm() const { return local_->device_grad_norm(); }

  void set_lr(double lr) { local_->set_lr(lr); }
  int64_t step_count() const { return local_->step_count(); }
  bool sharded() const { return sharded_; }
  // Parameters (by registration index) whose optimizer state this rank keeps.
  const std::vector<size_t>& owned() const { return owned_by_[comm_.rank()]; }
  // For GradientReducer: the owner of every parameter when sharded (whose gradient only its owner
  // needs averaged), empty when not (every rank needs every average).
  std::vector<int> gradient_owners() const { return sharded_ ? owner_ : std::vector<int>(); }

  // A collective: rank 0 gets the whole state in Optimizer::state()'s layout (on the host when
  // sharded, one tensor on its device at a time), the other ranks an empty list when sharded
  // (their own replica's state when not).
  NamedTensors gather_state();
  // Every rank passes the whole state (Optimizer::state()'s layout, as gather_state() returned it)
  // and keeps its share. Throws std::runtime_error naming a missing, unexpected or mis-shaped
  // entry, on every rank alike (each checks the whole state), with nothing modified.
  void load_state(const NamedTensors& state);

 private:
  // Sharded: every owner's updated tensors to the other ranks.
  void gather_updates();
  // Sharded, CPU: the global gradient norm from every rank's share, as global_grad_norm sums it.
  double sharded_grad_norm();

  const ParameterRegistry& params_;
  Communicator& comm_;
  bool sharded_;
  std::vector<int> owner_;                     // per parameter
  std::vector<std::vector<size_t>> owned_by_;  // per rank
  std::vector<Tensor> values_;                 // every parameter's, in registration order
  ParameterRegistry shard_;  // this rank's parameters, sharing their tensors with params_
  std::unique_ptr<Optimizer> local_;
};

}  // namespace deit
