#include "engine/gradient_reducer.h"

#include "engine/autograd.h"

namespace deit {

GradientReducer::GradientReducer(const ParameterRegistry& params, Communicator& comm,
                                 size_t bucket_bytes)
    : comm_(comm), bucket_bytes_(bucket_bytes) {
  std::vector<Tensor> reversed;
  for (auto it = params.all().rbegin(); it != params.all().rend(); ++it)
    reversed.push_back(it->value);
  for (const std::vector<size_t>& group : plan_buckets(reversed, bucket_bytes)) {
    std::vector<Tensor>& bucket = buckets_.emplace_back();
    for (size_t i : group) {
      bucket_of_.emplace(&reversed[i].impl(), buckets_.size() - 1);
      bucket.push_back(reversed[i]);
    }
  }
}

void GradientReducer::backward(const Tensor& loss, const Tensor& grad_loss) {
  if (comm_.world_size() == 1) {
    deit::backward(loss, grad_loss);
    return;
  }
  pending_.clear();
  for (const std::vector<Tensor>& bucket : buckets_) pending_.push_back(bucket.size());
  next_bucket_ = 0;
  deit::backward(loss, grad_loss, [this](const Tensor& leaf) { on_grad_ready(leaf); });
  // Buckets holding a parameter that this backward did not reach: its gradient (if any, from
  // earlier micro-batches) is final now.
  while (next_bucket_ < buckets_.size()) reduce_bucket(next_bucket_++);
}

void GradientReducer::on_grad_ready(const Tensor& leaf) {
  const auto it = bucket_of_.find(&leaf.impl());
  if (it == bucket_of_.end()) return;  // an input marked requires_grad, not a parameter
  --pending_[it->second];
  while (next_bucket_ < buckets_.size() && pending_[next_bucket_] == 0)
    reduce_bucket(next_bucket_++);
}

void GradientReducer::reduce_bucket(size_t bucket) {
  std::vector<Tensor> grads;
  for (const Tensor& param : buckets_[bucket])
    if (param.grad().defined()) grads.push_back(param.grad());
  // The bucket fits bucket_bytes_ by construction: the communicator reduces it as one buffer.
  comm_.all_reduce_mean(grads, bucket_bytes_);
}

}  // namespace deit
