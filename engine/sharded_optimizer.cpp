#include "engine/sharded_optimizer.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <stdexcept>
#include <string>

namespace deit {

std::vector<int> partition_parameters(const ParameterRegistry& params, int world_size) {
  if (world_size < 1) throw std::invalid_argument("partition_parameters: world size < 1");
  const double total = static_cast<double>(params.element_count());
  // No elements to share (only empty tensors): rank 0 keeps them all, rather than a 0 / 0 owner.
  if (total == 0) return std::vector<int>(params.size(), 0);
  std::vector<int> owner;
  double before = 0;  // elements of the tensors registered earlier
  for (const Parameter& p : params.all()) {
    const double middle = before + 0.5 * static_cast<double>(p.value.numel());
    owner.push_back(std::min(world_size - 1, static_cast<int>(middle * world_size / total)));
    before += static_cast<double>(p.value.numel());
  }
  return owner;
}

ShardedOptimizer::ShardedOptimizer(const std::string& name, const ParameterRegistry& params,
                                   const OptimizerOptions& options, Communicator& comm,
                                   bool shard_state)
    : params_(params),
      comm_(comm),
      sharded_(shard_state && !comm.collectives_are_noops()),
      owner_(sharded_ ? partition_parameters(params, comm.world_size())
                      : std::vector<int>(params.size(), comm.rank())),
      owned_by_(comm.world_size()) {
  for (size_t i = 0; i < params.size(); ++i) {
    owned_by_[owner_[i]].push_back(i);
    values_.push_back(params.all()[i].value);
  }
  if (!sharded_) {
    local_ = make_optimizer(name, params, options);
    return;
  }
  const bool on_cuda = params.size() > 0 && params.all().front().value.device().is_cuda();
  // An optimizer over no tensor has no device to compute its share of the norm on, and every
  // rank must take part in summing the shares.
  if (on_cuda && owned().empty())
    throw std::invalid_argument(
        "--zero: sharding " + std::to_string(params.size()) + " parameter tensors over " +
        std::to_string(comm.world_size()) + " ranks leaves rank " + std::to_string(comm.rank()) +
        " without one, which a CUDA run cannot do; use fewer ranks or leave --zero off");
  for (size_t i : owned()) {
    const Parameter& p = params.all()[i];
    shard_.add(p.name, p.value, p.weight_decay);
  }
  local_ = make_optimizer(name, shard_, options);
  if (on_cuda)
    local_->sum_grad_squares_with(
        [&comm](const Tensor& sum_squares) { comm.all_reduce_sum(sum_squares); });
}

void ShardedOptimizer::gather_updates() { comm_.all_gather(values_, owner_); }

double ShardedOptimizer::sharded_grad_norm() {
  const std::vector<Parameter>& all = params_.all();
  std::vector<double> squares(all.size(), 0.0);
  for (size_t i : owned())
    if (all[i].value.grad().defined()) squares[i] = squared_norm(all[i].value.grad());
  comm_.all_reduce_sum(squares);
  // Every rank runs the same graph: the same parameters have gradients everywhere.
  double sum = 0;
  for (size_t i = 0; i < all.size(); ++i)
    if (all[i].value.grad().defined()) sum += squares[i];
  return std::sqrt(sum);
}

double ShardedOptimizer::step() {
  if (!sharded_) return local_->step();
  if (local_->on_cuda()) {
    // The norm of every rank's gradients (sum_grad_squares_with), the same on every rank: a
    // non-finite one throws on every rank alike, before the all-gather.
    const double grad_norm = local_->step();
    gather_updates();
    return grad_norm;
  }
  // The norm a replicated step computes, the same on every rank: a non-finite gradient stops
  // every rank alike (Optimizer::step throws for a given norm that is not finite).
  const double grad_norm = sharded_grad_norm();
  local_->step(grad_norm);
  gather_updates();
  return grad_norm;
}

void ShardedOptimizer::step_async() {
  begin_step_async();
  update_async();
}

void ShardedOptimizer::update_async() {
  local_->update_async();
  // A non-finite norm left every shard unchanged on every rank: the all-gather changes nothing.
  if (sharded_) gather_updates();
}

NamedTensors ShardedOptimizer::gather_state() {
  if (!sharded_) return local_->state();
  const NamedTensors local = local_->state();
  const std::map<std::string, Tensor> mine(local.begin(), local.end());
  const std::vector<Parameter>& all = params_.all();

  // The per-parameter update counts (i32) travel as f64, which the communicator moves: each rank
  // fills in its own parameters' counts and a sum collects them all (exactly: they are integers).
  std::vector<double> counts(all.size(), 0.0);
  for (size_t i : owned()) counts[i] = mine.at(all[i].name + ".step").data<int32_t>()[0];
  comm_.all_reduce_sum(counts);

  const bool keep = comm_.rank() == 0;
  NamedTensors gathered;
  if (keep) gathered.emplace_back("step", mine.at("step"));
  for (size_t i = 0; i < all.size(); ++i) {
    const int owner = owner_[i];
    for (const char* moment : {".exp_avg", ".exp_avg_sq"}) {
      const std::string key = all[i].name + moment;
      const Tensor& value = all[i].value;
      const Tensor t = owner == comm_.rank()
                           ? mine.at(key)
                           : Tensor::empty(value.shape(), value.dtype(), value.device());
      comm_.broadcast(t, owner);
      // To the host at once: the whole state on rank 0's device is what sharding saves room
      // for (ViT-H's LAMB moments), and the checkpoint is written from the host anyway. After
      // the communicator's wait for the device, which gives up after DEIT_COMM_TIMEOUT: a copy
      // behind a broadcast that a lost rank never joins would otherwise wait forever.
      if (keep) {
        comm_.wait_for_device();
        gathered.emplace_back(key, t.to(Device::cpu()));
      }
    }
    if (keep)
      gathered.emplace_back(all[i].name + ".step",
                            Tensor::from_vector<int32_t>({static_cast<int32_t>(counts[i])}, {1}));
  }
  return gathered;
}

void ShardedOptimizer::load_state(const NamedTensors& state) {
  if (!sharded_) {
    local_->load_state(state);
    return;
  }
  // Every rank checks the whole state, not only its share: an entry missing or mis-shaped for one
  // rank then stops every rank alike, before any has loaded anything, rather than that rank alone
  // while the others go on to wait for it in their next collective.
  Optimizer::check_state(std::string(local_->name()) + " optimizer state",
                         Optimizer::state_layout(params_), state);
  std::set<std::string> mine;
  for (const auto& entry : local_->state()) mine.insert(entry.first);
  NamedTensors share;
  for (const auto& entry : state)
    if (mine.count(entry.first)) share.push_back(entry);
  local_->load_state(share);
}

}  // namespace deit
