#include "engine/optimizer.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <set>

#include "engine/autograd.h"
#include "engine/ops/op_utils.h"

#if DEIT_HAVE_CUDA
#include "engine/stream.h"
#include "kernels/check.h"
#endif

namespace deit {

namespace {

Tensor step_tensor(int64_t steps) {
  if (steps > std::numeric_limits<int32_t>::max())
    throw std::overflow_error("optimizer state: step count " + std::to_string(steps) +
                              " does not fit the i32 checkpoint entry");
  return Tensor::from_vector<int32_t>({static_cast<int32_t>(steps)}, {1});
}

// The names, shapes and dtypes of `tensors`: what a state loaded into them must have.
std::vector<TensorLayout> layout_of(const NamedTensors& tensors) {
  std::vector<TensorLayout> layout;
  for (const auto& [name, tensor] : tensors)
    layout.push_back({name, tensor.shape(), tensor.dtype()});
  return layout;
}

}  // namespace

double squared_norm(const Tensor& t) {
  double sum = 0;
  ops::detail::dispatch_cpu_floating("squared_norm", {&t}, [&](auto zero) {
    using T = decltype(zero);
    sum = kernels::sum_squares_cpu<T>(t.data<T>(), t.numel());
  });
  return sum;
}

double global_grad_norm(const ParameterRegistry& params) {
  double sum = 0;
  for (const Parameter& p : params.all())
    if (p.value.grad().defined()) sum += squared_norm(p.value.grad());
  return std::sqrt(sum);
}

double clip_grad_coefficient(double grad_norm, double max_norm) {
  if (max_norm <= 0) return 1.0;
  return std::min(1.0, max_norm / (grad_norm + 1e-6));
}

void check_named_tensors(const std::string& what, const std::vector<TensorLayout>& expected,
                         const NamedTensors& source) {
  std::map<std::string, const Tensor*> given;
  for (const auto& [name, tensor] : source)
    if (!given.emplace(name, &tensor).second)
      throw std::runtime_error(what + ": entry '" + name + "' appears twice");
  std::set<std::string> wanted;
  for (const TensorLayout& entry : expected) {
    auto it = given.find(entry.name);
    if (it == given.end()) throw std::runtime_error(what + ": missing entry '" + entry.name + "'");
    const Tensor& src = *it->second;
    if (!src.defined() || src.shape() != entry.shape || src.dtype() != entry.dtype)
      throw std::runtime_error(what + ": entry '" + entry.name + "' is " +
                               (src.defined() ? src.describe() : std::string("undefined")) +
                               ", expected " + dtype_name(entry.dtype) + " " +
                               shape_str(entry.shape));
    wanted.insert(entry.name);
  }
  for (const auto& entry : source)
    if (!wanted.count(entry.first))
      throw std::runtime_error(what + ": unexpected entry '" + entry.first +
                               "' (state of another model?)");
}

void load_named_tensors(const std::string& what, const NamedTensors& destination,
                        const NamedTensors& source) {
  check_named_tensors(what, layout_of(destination), source);
  std::map<std::string, const Tensor*> given;
  for (const auto& [name, tensor] : source) given.emplace(name, &tensor);
  for (const auto& [name, tensor] : destination) {
    Tensor dst = tensor;
    dst.copy_from(*given.at(name));
  }
}

Optimizer::Optimizer(const ParameterRegistry& params, const OptimizerOptions& options)
    : options_(options) {
  slots_.reserve(params.size());
  const Device device = params.size() ? params.all().front().value.device() : Device::cpu();
  for (const Parameter& p : params.all()) {
    const Tensor& v = p.value;
    const bool host_master =
        v.device().is_cpu() && (v.dtype() == DType::f32 || v.dtype() == DType::f64);
    const bool device_master =
        v.device().is_cuda() && v.dtype() == DType::f32 && v.bf16_copy().defined();
    if (v.device() != device || !(host_master || device_master))
      throw std::invalid_argument("optimizer: parameter '" + p.name + "' is " + v.describe() +
                                  "; the master weights must be f32 (or f64) on the CPU, or f32 "
                                  "CUDA parameters with bf16 copies, all on " + device.str());
    slots_.push_back({p, Tensor::zeros(v.shape(), v.dtype(), device),
                      Tensor::zeros(v.shape(), v.dtype(), device)});
  }
  if (device.is_cuda()) {
#if DEIT_HAVE_CUDA
    std::vector<kernels::CudaParam> table;
    for (Slot& slot : slots_) {
      Tensor& value = slot.param.value;
      kernels::CudaParam entry;
      entry.param = value.data<float>();
      entry.param_bf16 = value.bf16_copy().data<kernels::bf16_bits>();
      entry.exp_avg = slot.exp_avg.data<float>();
      entry.exp_avg_sq = slot.exp_avg_sq.data<float>();
      entry.n = value.numel();
      entry.weight_decay = slot.param.weight_decay;
      table.push_back(entry);
    }
    device_table_ = std::make_unique<kernels::CudaParamTable>(table);
    device_grad_norm_ = Tensor::zeros({1}, DType::f32, device);
    device_sum_squares_ = Tensor::zeros({1}, DType::f32, device);
#endif
  }
}

Optimizer::~Optimizer() = default;

void Optimizer::step_async() {
  begin_step_async();
  update_async();
}

void Optimizer::begin_step_async() {
#if DEIT_HAVE_CUDA
  if (!on_cuda()) throw std::logic_error("optimizer: begin_step_async() is for CUDA parameters");
  ++step_count_;
  for (Slot& slot : slots_) ++slot.steps;
  // grad_scale 1: the clipping factor is computed on the device by update_async().
  kernels::set_step_cuda(*device_table_, adam_step(step_count_, 1.0), options_.lr,
                         options_.weight_decay,
                         compute_stream(slots_.front().param.value.device().index));
#else
  throw std::logic_error("optimizer: begin_step_async() needs CUDA parameters and a CUDA build");
#endif
}

void Optimizer::update_async() {
#if DEIT_HAVE_CUDA
  if (!on_cuda()) throw std::logic_error("optimizer: update_async() is for CUDA parameters");
  NoGrad no_grad;
  std::vector<const float*> grads;
  grads.reserve(slots_.size());
  for (const Slot& slot : slots_) {
    const Parameter& p = slot.param;
    const Tensor grad = p.value.grad();
    if (!grad.defined())
      throw std::invalid_argument("optimizer: '" + p.name + "' has no gradient; on CUDA every "
                                  "parameter takes part in every step");
    if (grad.shape() != p.value.shape() || grad.dtype() != DType::f32 ||
        grad.device() != p.value.device())
      throw std::invalid_argument("optimizer: gradient of '" + p.name + "' is " +
                                  grad.describe() + ", parameter is " + p.value.describe());
    grads.push_back(grad.data<float>());
  }
  cudaStream_t stream = compute_stream(slots_.front().param.value.device().index);
  kernels::set_grads_cuda(*device_table_, grads, stream);
  if (sum_grad_squares_over_ranks_) {
    float* sum_squares = device_sum_squares_.data<float>();
    kernels::grad_sum_squares_cuda(*device_table_, sum_squares, stream);
    sum_grad_squares_over_ranks_(device_sum_squares_);
    kernels::grad_factor_cuda(*device_table_, sum_squares, options_.clip_grad,
                              device_max_grad_norm(), stream);
  } else {
    kernels::grad_norm_cuda(*device_table_, options_.clip_grad, device_max_grad_norm(), stream);
  }
  update_on_device(*device_table_, stream);
  DEIT_CUDA_CHECK(cudaMemcpyAsync(device_grad_norm_.data<float>(), device_table_->grad_norm(),
                                  sizeof(float), cudaMemcpyDeviceToDevice, stream));
#else
  throw std::logic_error("optimizer: update_async() needs CUDA parameters and a CUDA build");
#endif
}

void Optimizer::sum_grad_squares_with(
    [[maybe_unused]] std::function<void(const Tensor&)> sum_over_ranks) {
  if (!on_cuda())
    throw std::logic_error("optimizer: sum_grad_squares_with() is for CUDA parameters");
#if DEIT_HAVE_CUDA
  sum_grad_squares_over_ranks_ = std::move(sum_over_ranks);
#endif
}

Tensor Optimizer::device_grad_norm() const {
#if DEIT_HAVE_CUDA
  if (on_cuda()) return device_grad_norm_;
#endif
  throw std::logic_error("optimizer: device_grad_norm() is for CUDA parameters");
}

double Optimizer::step(std::optional<double> global_grad_norm) {
  if (on_cuda()) {
    if (global_grad_norm)
      throw std::invalid_argument("optimizer: a given global gradient norm is not supported for "
                                  "CUDA parameters yet (the norm is computed on the device)");
    step_async();
    const double grad_norm = device_grad_norm().item();  // waits for the step
    if (!std::isfinite(grad_norm)) {
      // The kernels left weights and moments as they were; undo the count too.
      --step_count_;
      for (Slot& slot : slots_) --slot.steps;
      throw NonFiniteGradient("optimizer: the global gradient norm is not finite; step skipped, "
                              "nothing modified");
    }
    last_grad_norm_ = grad_norm;
    return grad_norm;
  }
  NoGrad no_grad;  // the update is not part of any graph
  std::vector<Slot*> active;
  double sum = 0;
  for (Slot& slot : slots_) {
    const Tensor grad = slot.param.value.grad();
    if (!grad.defined()) continue;
    if (grad.shape() != slot.param.value.shape() || grad.dtype() != slot.param.value.dtype() ||
        grad.device() != slot.param.value.device())
      throw std::invalid_argument("optimizer: gradient of '" + slot.param.name + "' is " +
                                  grad.describe() + ", parameter is " +
                                  slot.param.value.describe());
    const double squares = squared_norm(grad);
    if (!std::isfinite(squares))
      throw NonFiniteGradient("optimizer: the gradient of '" + slot.param.name +
                              "' is not finite; step skipped, nothing modified");
    sum += squares;
    active.push_back(&slot);
  }
  // A given norm covers gradients this optimizer did not see (the other ranks' shares): one of
  // them not finite would otherwise scale the update by NaN, or leave it unclipped.
  if (global_grad_norm && !std::isfinite(*global_grad_norm))
    throw NonFiniteGradient("optimizer: the global gradient norm is " +
                            std::to_string(*global_grad_norm) + "; step skipped, nothing modified");
  const double grad_norm = global_grad_norm.value_or(std::sqrt(sum));
  const double grad_scale = clip_grad_coefficient(grad_norm, options_.clip_grad);
  ++step_count_;
  for (Slot* slot : active) ++slot->steps;
  update(active, grad_scale, grad_norm * grad_scale);
  last_grad_norm_ = grad_norm;
  return grad_norm;
}

NamedTensors Optimizer::state() const {
  NamedTensors out;
  out.reserve(1 + 3 * slots_.size());
  out.emplace_back("step", step_tensor(step_count_));
  for (const Slot& slot : slots_) {
    out.emplace_back(slot.param.name + ".exp_avg", slot.exp_avg);
    out.emplace_back(slot.param.name + ".exp_avg_sq", slot.exp_avg_sq);
    out.emplace_back(slot.param.name + ".step", step_tensor(slot.steps));
  }
  return out;
}

std::vector<TensorLayout> Optimizer::state_layout(const ParameterRegistry& params) {
  std::vector<TensorLayout> layout{{"step", {1}, DType::i32}};
  for (const Parameter& p : params.all()) {
    layout.push_back({p.name + ".exp_avg", p.value.shape(), p.value.dtype()});
    layout.push_back({p.name + ".exp_avg_sq", p.value.shape(), p.value.dtype()});
    layout.push_back({p.name + ".step", {1}, DType::i32});
  }
  return layout;
}

void Optimizer::check_state(const std::string& what, const std::vector<TensorLayout>& layout,
                            const NamedTensors& state) {
  check_named_tensors(what, layout, state);
  std::map<std::string, const Tensor*> given;
  for (const auto& [name, tensor] : state) given.emplace(name, &tensor);
  for (const TensorLayout& entry : layout) {
    if (entry.dtype != DType::i32) continue;  // the moments
    const int32_t steps = given.at(entry.name)->data<int32_t>()[0];
    if (steps < 0)
      throw std::runtime_error(what + ": entry '" + entry.name + "' counts " +
                               std::to_string(steps) + " steps (a corrupt checkpoint?)");
  }
}

void Optimizer::load_state(const NamedTensors& saved) {
  // state() gives the live moments plus fresh step tensors: loading into it fills the moments in
  // place, and the counts are read back from the step tensors.
  const NamedTensors live = state();
  const std::string what = std::string(name()) + " optimizer state";
  check_state(what, layout_of(live), saved);
  load_named_tensors(what, live, saved);
  step_count_ = live[0].second.data<int32_t>()[0];
  for (size_t i = 0; i < slots_.size(); ++i)
    slots_[i].steps = live[1 + 3 * i + 2].second.data<int32_t>()[0];
}

kernels::AdamStep Optimizer::adam_step(int64_t t, double grad_scale) const {
  kernels::AdamStep s;
  s.beta1 = options_.beta1;
  s.beta2 = options_.beta2;
  s.eps = options_.eps;
  s.bias_correction1 = 1 - std::pow(options_.beta1, static_cast<double>(t));
  s.bias_correction2 = 1 - std::pow(options_.beta2, static_cast<double>(t));
  s.grad_scale = grad_scale;
  return s;
}

double Optimizer::weight_decay_of(const Slot& slot) const {
  return slot.param.weight_decay ? options_.weight_decay : 0.0;
}

std::unique_ptr<Optimizer> make_optimizer(const std::string& name, const ParameterRegistry& params,
                                          const OptimizerOptions& options) {
  if (name == "lamb") return std::make_unique<Lamb>(params, options);
  if (name == "adamw") return std::make_unique<AdamW>(params, options);
  throw std::invalid_argument("unknown optimizer '" + name + "' (choose lamb or adamw)");
}

}  // namespace deit
