#include "engine/gradient_reducer.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "engine/autograd.h"

namespace deit {

GradientReducer::GradientReducer(const ParameterRegistry& params, Communicator& comm,
                                 size_t bucket_bytes, const std::vector<int>& owners)
    : comm_(comm) {
  if (!owners.empty() && owners.size() != params.size())
    throw std::invalid_argument("GradientReducer: " + std::to_string(owners.size()) +
                                " owners for " + std::to_string(params.size()) + " parameters");
  std::vector<Tensor> reversed;
  std::vector<int> reversed_owners;
  for (size_t i = params.size(); i-- > 0;) {
    reversed.push_back(params.all()[i].value);
    if (!owners.empty()) reversed_owners.push_back(owners[i]);
  }
  // Alone, backward() reduces nothing: no buffers are needed.
  const bool reduces = !comm_.collectives_are_noops();
  std::map<DType, int64_t> scratch_elements;
  for (std::vector<size_t> group : plan_buckets(reversed, bucket_bytes)) {
    if (!owners.empty())
      std::stable_sort(group.begin(), group.end(),
                       [&](size_t a, size_t b) { return reversed_owners[a] < reversed_owners[b]; });
    std::vector<Tensor>& bucket = buckets_.emplace_back();
    std::vector<int>& bucket_owners = owners_.emplace_back();
    int64_t elements = 0;
    for (size_t i : group) {
      bucket_of_.emplace(&reversed[i].impl(), buckets_.size() - 1);
      bucket.push_back(reversed[i]);
      if (!owners.empty()) bucket_owners.push_back(reversed_owners[i]);
      elements += reversed[i].numel();
    }
    if (group.size() > 1) {
      int64_t& most = scratch_elements[bucket.front().dtype()];
      most = std::max(most, elements);
    }
    if (!reduces) continue;
    const Tensor home = Tensor::zeros({elements}, bucket.front().dtype(), bucket.front().device());
    int64_t offset = 0;
    for (Tensor& param : bucket) {
      const int64_t n = param.numel();
      param.set_grad_home(home.slice(offset, offset + n).view(param.shape()));
      offset += n;
    }
    homes_.push_back(home);
  }
  if (!reduces) return;
  for (const auto& [dtype, elements] : scratch_elements)
    scratch_.emplace(dtype, Tensor::empty({elements}, dtype, comm_.device()));
}

GradientReducer::~GradientReducer() {
  if (homes_.empty()) return;
  for (std::vector<Tensor>& bucket : buckets_)
    for (Tensor& param : bucket) param.set_grad_home(Tensor());
}

void GradientReducer::backward(const Tensor& loss, const Tensor& grad_loss) {
  if (comm_.collectives_are_noops()) {
    deit::backward(loss, grad_loss);
    return;
  }
  pending_.clear();
  for (const std::vector<Tensor>& bucket : buckets_) pending_.push_back(bucket.size());
  next_bucket_ = 0;
  try {
    deit::backward(loss, grad_loss, [this](const Tensor& leaf) { on_grad_ready(leaf); });
    // Buckets holding a parameter that this backward did not reach: its gradient (if any, from
    // earlier micro-batches) is final now.
    while (next_bucket_ < buckets_.size()) reduce_bucket(next_bucket_++);
  } catch (...) {
    // The buckets already started still use their gradients: nothing queued after this may
    // touch them before they end. If that fails too (a capture the error invalidated), the
    // first error is the one worth reporting.
    try {
      comm_.finish_buckets();
    } catch (...) {
    }
    throw;
  }
  comm_.finish_buckets();
}

void GradientReducer::on_grad_ready(const Tensor& leaf) {
  const auto it = bucket_of_.find(&leaf.impl());
  if (it == bucket_of_.end()) return;  // an input marked requires_grad, not a parameter
  --pending_[it->second];
  while (next_bucket_ < buckets_.size() && pending_[next_bucket_] == 0)
    reduce_bucket(next_bucket_++);
}

void GradientReducer::reduce_bucket(size_t bucket) {
  const std::vector<Tensor>& params = buckets_[bucket];
  const std::vector<int>& param_owners = owners_[bucket];
  std::vector<Tensor> grads;
  std::vector<int> grad_owners;
  bool in_homes = true;
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor grad = params[i].grad();
    if (!grad.defined()) {
      in_homes = false;
      continue;
    }
    in_homes = in_homes && grad.impl_ptr() == params[i].grad_home().impl_ptr();
    grads.push_back(grad);
    if (!param_owners.empty()) grad_owners.push_back(param_owners[i]);
  }
  if (grads.empty()) return;
  if (in_homes) {
    // They lie packed there: reduced in place.
    comm_.start_bucket_mean(grads, homes_[bucket], grad_owners);
    return;
  }
  const auto scratch = scratch_.find(grads.front().dtype());
  comm_.start_bucket_mean(grads, scratch == scratch_.end() ? Tensor() : scratch->second,
                          grad_owners);
}

}  // namespace deit
