// Data-parallel gradient averaging, the way PyTorch's DistributedDataParallel does it: the
// parameters' gradients are grouped into buckets, and each bucket is all-reduced (averaged over the
// ranks) as soon as backward has made every gradient in it final (autograd.h's grad-ready hook).
// On the CPU (MPI) the collective runs there and then, between two backward nodes. With NCCL it is
// queued on the communication stream (engine/communicator.h, start_bucket_mean) behind the kernels
// that produced the bucket's gradients, and runs while backward's remaining kernels run on the
// compute stream; backward() ends by making the compute stream wait for every bucket
// (finish_buckets), so whatever the caller queues next (the optimizer step) reads the averages.
// The host never waits. Communicator::last_bucket_timing() tells, after an eager step, how much of
// the reduction backward hid.
//
// Buckets: plan_buckets (engine/communicator.h) over the parameters in reverse registration order,
// which is roughly the order backward finalises them (the head first, the patch embedding last).
// Buckets are reduced strictly in that planned order, the same on every rank, whatever order their
// gradients became final in: every rank must issue the same collectives in the same order.
//
// What the average means: with the loss a mean over each rank's batch of b samples, the mean of the
// w ranks' gradients is the gradient of the mean loss over all w * b samples, so w ranks with batch
// b step like one process with batch w * b (up to the order of floating-point sums).
//
// Sharded optimizer state (ZeRO-1, engine/sharded_optimizer.h): given each parameter's owner, a
// bucket is reduce-scattered rather than all-reduced, so each gradient's average is made only on
// the rank that updates its tensor (about half the bytes of an all-reduce), and the other ranks'
// copies of it are left with unspecified values. A bucket's parameters are then ordered by owner
// (reverse registration order within one owner), so that each rank's share of it is one run.
//
// A parameter that gets no gradient: every rank runs the same graph, so the same parameters lack a
// gradient on every rank; they are left out of their bucket's reduction and stay without one.
//
// Buffers (as DDP's gradient_as_bucket_view): each bucket has one flat buffer, made once, and each
// of its parameters a gradient home (Tensor::set_grad_home) there, in bucket order. Backward
// accumulates every gradient in its home, so a bucket's gradients already lie packed and are
// reduced where they are: no copy into a buffer and back, and the gradients stay at the same
// addresses step after step. A bucket that some parameter's gradient is missing from (or lies
// elsewhere, set by hand) is packed into one scratch buffer per dtype instead, of the largest
// bucket, and unpacked. The buckets of a backward run one after another on the communication
// stream, so each finds the scratch free, and the next backward's first bucket (and its first
// write into a home) is queued after the compute stream has waited for this one's last.
#pragma once
#include <cstddef>
#include <map>
#include <unordered_map>
#include <vector>

#include "engine/communicator.h"
#include "engine/parameters.h"
#include "engine/tensor.h"

namespace deit {

class GradientReducer {
 public:
  // `params` and `comm` must outlive the reducer. `owners`: the rank that owns each parameter (by
  // registration index) when the optimizer state is sharded, for a reduce-scatter; empty when
  // every rank updates every parameter.
  // Gives the parameters their gradient homes, unless `comm` is alone; the destructor takes them
  // back (gradients made after that are new memory again).
  GradientReducer(const ParameterRegistry& params, Communicator& comm,
                  size_t bucket_bytes = Communicator::kDefaultBucketBytes,
                  const std::vector<int>& owners = {});
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // backward(loss, grad_loss), and by its return every parameter's gradient (all that backward and
  // earlier backward calls accumulated) averaged over the ranks (with owners, on its owner only):
  // on CUDA, for the work queued on the compute stream from then on. Call it for the last
  // micro-batch of an optimizer step, plain backward for the others: gradients are reduced once per
  // step. Alone (the single-process communicator) it is plain backward.
  void backward(const Tensor& loss, const Tensor& grad_loss);

  size_t bucket_count() const { return buckets_.size(); }

 private:
  void on_grad_ready(const Tensor& leaf);
  void reduce_bucket(size_t bucket);

  Communicator& comm_;
  std::vector<std::vector<Tensor>> buckets_;  // parameter values, in reduction order
  std::vector<std::vector<int>> owners_;      // per bucket: its parameters' owners, or empty
  std::vector<Tensor> homes_;                 // per bucket: its gradients' homes, packed
  std::map<DType, Tensor> scratch_;           // per dtype, for buckets not all in their homes
  std::unordered_map<const TensorImpl*, size_t> bucket_of_;
  // During backward: per bucket, the gradients not yet final; and the next bucket to reduce.
  std::vector<size_t> pending_;
  size_t next_bucket_ = 0;
};

}  // namespace deit
