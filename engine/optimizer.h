// Optimizers over a ParameterRegistry: LAMB (DeiT III pre-training) and AdamW (fine-tuning), with
// the semantics of the reference trainer (facebookresearch/deit main.py through timm 0.6's
// create_optimizer): timm's Lamb, torch.optim.AdamW, and torch.nn.utils.clip_grad_norm_ for
// --clip-grad. kernels/optimizer.h holds the per-tensor arithmetic; this layer picks the tensors
// and the scalars.
//
// Parameter groups: timm puts 1-D tensors, biases and model.no_weight_decay() ({pos_embed,
// cls_token}) in a group without weight decay. Here each Parameter carries that decision in its
// weight_decay flag (set by the model); weight decay, and with it LAMB's trust ratio, applies
// only where the flag is set and options.weight_decay is nonzero.
//
// step() reads each parameter's .grad() (parameters without one are skipped), updates the
// parameter's value and the optimizer state in place, and leaves the gradients as they are:
// zeroing them is the caller's job (ParameterRegistry::zero_grad). Parameters are the fp32 (or
// f64, for tests) master weights on the CPU, or the fp32 masters of CUDA parameters (with their
// bf16 copies, engine/parameters.h), all on one device.
//
// On CUDA the update runs over every parameter at once with the multi-tensor kernels
// (kernels/optimizer.h, CudaParamTable): the global gradient norm, the clipping factor and LAMB's
// trust ratios stay on the device, and each update also rewrites the bf16 copies. The gradients
// may lie anywhere (new memory from autograd each step, or the gradient reducer's homes,
// engine/gradient_reducer.h): each update first points the table at them (set_grads_cuda, one
// launch per 256 tensors), rather than copying them into fixed buffers. Every parameter needs a
// gradient at every step there (a ViT's do). The learning rate and the step count's bias
// corrections reach the kernels through device memory (begin_step_async), so that a CUDA graph of
// the update can be replayed step after step.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "engine/parameters.h"
#include "engine/tensor.h"
#include "kernels/optimizer.h"

namespace deit {


// Defaults are main.py's (--lr, --weight-decay, --opt-eps, --clip-grad) and timm's (betas, LAMB's
// max_grad_norm). DeiT III pre-training: LAMB, lr 4e-3 (S) or 3e-3, weight decay 0.05, eps 1e-8.
struct OptimizerOptions {
  double lr = 5e-4;  // the schedule sets it every epoch (set_lr)
  double weight_decay = 0.05;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;  // main.py passes --opt-eps 1e-8; timm's Lamb alone would default to 1e-6
  // --clip-grad, as clip_grad_norm_ (called before any optimizer, LAMB included): the gradients
  // are scaled by min(1, clip_grad / (norm + 1e-6)). 0: off (the DeiT III default).
  double clip_grad = 0;
  // LAMB only, timm's max_grad_norm: the gradients are divided by norm / max_grad_norm when the
  // norm exceeds it. 0: off.
  double max_grad_norm = 1.0;
};

// Thrown by Optimizer::step() when a gradient holds NaN or infinity. Nothing has been modified.
class NonFiniteGradient : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// sum_i t[i]^2 of an f32 or f64 CPU tensor, accumulated in double in a fixed order: the same bits
// whatever the number of threads.
double squared_norm(const Tensor& t);

// sqrt of the sum of squared_norm over every defined gradient, in registration order.
double global_grad_norm(const ParameterRegistry& params);

// clip_grad_norm_'s factor: min(1, max_norm / (grad_norm + 1e-6)); 1 when max_norm <= 0.
double clip_grad_coefficient(double grad_norm, double max_norm);

// The name, shape and dtype that one entry of a NamedTensors list must have.
struct TensorLayout {
  std::string name;
  Shape shape;
  DType dtype;
};

// Every name of `expected` must appear once in `source` with its shape and dtype, and source may
// hold no other name; otherwise throws std::runtime_error naming `what` and the entry.
void check_named_tensors(const std::string& what, const std::vector<TensorLayout>& expected,
                         const NamedTensors& source);

// Copies `source` into `destination`, matched by name, once check_named_tensors has found source
// to fit destination's layout: a bad entry throws before anything is copied.
void load_named_tensors(const std::string& what, const NamedTensors& destination,
                        const NamedTensors& source);

class Optimizer {
 public:
  virtual ~Optimizer();
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // "lamb" or "adamw", as --opt spells it.
  virtual const char* name() const = 0;

  // One update from the current gradients. Returns the global gradient norm before any clipping
  // (what the trainer logs). Throws NonFiniteGradient, leaving everything unchanged, when a
  // gradient is not finite. `global_grad_norm`, when given, is the norm clipping uses instead of
  // the one over this optimizer's own gradients: an optimizer over one rank's shard of the model
  // (ZeRO-1, engine/sharded_optimizer.h) must clip by the norm of all of them. A given norm that
  // is not finite throws NonFiniteGradient too (another rank's gradient was not finite).
  double step(std::optional<double> global_grad_norm = std::nullopt);

  // CUDA parameters only: enqueues one update on the compute stream and returns without waiting.
  // The gradient norm stays on the device: device_grad_norm(). A non-finite gradient leaves
  // weights and moments unchanged (the kernels' NaN factor) but counts as a step. step() on CUDA
  // parameters is step_async() and one wait for the norm (no global_grad_norm: see
  // sum_grad_squares_with).
  void step_async();
  // step_async() in its two halves, for CUDA graphs (engine/cuda_graph.h):
  //   begin_step_async()  advances step_count() and writes this step's scalars (lr(), the bias
  //                       corrections of the new count) to the device, on the compute stream;
  //   update_async()      enqueues the update, which reads them there. Nothing in it synchronises
  //                       with the host or allocates, so it can be captured.
  // A graph captures update_async() (with the forward and backward before it) and is replayed
  // after a begin_step_async() each time: every replay then uses the current learning rate and
  // step count. Capturing begin_step_async() would freeze those at their values at capture.
  void begin_step_async();
  void update_async();
  // CUDA parameters only: clip by the norm of more gradients than this optimizer's, as an
  // optimizer over one rank's share of the model must (ZeRO-1, engine/sharded_optimizer.h).
  // update_async() then hands `sum_over_ranks` the device f32 (1) that holds the sum of squares of
  // this optimizer's gradients, and it must leave there, in compute-stream order and without a
  // host wait, the sum over every share (Communicator::all_reduce_sum does).
  void sum_grad_squares_with(std::function<void(const Tensor& sum_squares)> sum_over_ranks);
  // CUDA parameters only: f32 (1) on the device, the global gradient norm of the last update.
  Tensor device_grad_norm() const;
  bool on_cuda() const { return !slots_.empty() && slots_.front().param.value.device().is_cuda(); }

  double lr() const { return options_.lr; }
  void set_lr(double lr) { options_.lr = lr; }
  const OptimizerOptions& options() const { return options_; }
  // Updates so far: the step() calls that did not throw, and the begin_step_async() calls.
  int64_t step_count() const { return step_count_; }
  double last_grad_norm() const { return last_grad_norm_; }  // what the last step() returned

  // The state, for checkpoints: "step" (i32, shape (1)), then per parameter "<name>.exp_avg",
  // "<name>.exp_avg_sq" (the parameter's shape and dtype) and "<name>.step" (i32, shape (1): the
  // updates this parameter received). The tensors are the live state, not copies: save them
  // before the next step().
  NamedTensors state() const;
  // state()'s names, shapes and dtypes for an optimizer over `params`, without making one: what a
  // sharded optimizer checks a whole state against on every rank, though it keeps only its share.
  static std::vector<TensorLayout> state_layout(const ParameterRegistry& params);
  // Restores what state() returned (by name, in any order), into an optimizer built over the same
  // parameters. Throws std::runtime_error naming a missing, unexpected or mis-shaped entry, or a
  // negative step count, with nothing modified.
  void load_state(const NamedTensors& state);
  // What load_state checks before it loads anything: check_named_tensors(what, layout, state),
  // then that every step count (the layout's i32 entries) is at least 0. A count below 0 would
  // make the next update's bias correction 1 - beta^t zero or negative, and the update divide by
  // it: the weights would turn to NaN or jump the wrong way, with no error.
  static void check_state(const std::string& what, const std::vector<TensorLayout>& layout,
                          const NamedTensors& state);

 protected:
  struct Slot {
    Parameter param;
    Tensor exp_avg;
    Tensor exp_avg_sq;
    int64_t steps = 0;
  };

  Optimizer(const ParameterRegistry& params, const OptimizerOptions& options);

  // Applies one update to every slot in `active` (those whose parameter has a gradient).
  // step_count() and each active slot's `steps` already include this step. The gradients are read
  // as grad * grad_scale (--clip-grad); grad_norm is the global norm of the gradients so read.
  virtual void update(const std::vector<Slot*>& active, double grad_scale, double grad_norm) = 0;

#if DEIT_HAVE_CUDA
  // The CUDA twin of update() over every parameter of `table`, enqueued on `stream`, after
  // grad_norm_cuda has put the gradient factor, and set_step_cuda the step's scalars, on the
  // device.
  virtual void update_on_device(kernels::CudaParamTable& table, cudaStream_t stream) = 0;
#endif
  // The max_grad_norm folded into the device gradient factor (LAMB's own clip; 0: none).
  virtual double device_max_grad_norm() const { return 0; }

  // The scalars of an Adam-style step numbered t (t >= 1: bias corrections 1 - beta^t).
  kernels::AdamStep adam_step(int64_t t, double grad_scale) const;
  // options().weight_decay where the parameter takes weight decay, else 0.
  double weight_decay_of(const Slot& slot) const;

 private:
  std::vector<Slot> slots_;
  OptimizerOptions options_;
  int64_t step_count_ = 0;
  double last_grad_norm_ = 0;
#if DEIT_HAVE_CUDA
  // CUDA parameters: the table over the weights and moments (gradients set at each update).
  std::unique_ptr<kernels::CudaParamTable> device_table_;
  Tensor device_grad_norm_;  // copied from the table after each update
  std::function<void(const Tensor&)> sum_grad_squares_over_ranks_;  // empty: this optimizer's own
  Tensor device_sum_squares_;  // f32 (1): what sum_grad_squares_over_ranks_ sums
#endif
};

// timm's Lamb (0.6; apex's FusedLAMB, which DeiT III's --opt fusedlamb selects, computes the same):
//   g = grad * s, s = 1 / max(1, norm / max_grad_norm) over the global norm of all gradients
//   m, v: Adam moments of g; update = m_hat / (sqrt(v_hat) + eps) + wd * p
//   trust = ||p|| / ||update|| where wd != 0 and both norms are nonzero, else 1
//   p -= lr * trust * update
// The bias corrections use step_count(): timm advances every group's step on every call.
class Lamb final : public Optimizer {
 public:
  Lamb(const ParameterRegistry& params, const OptimizerOptions& options);
  const char* name() const override { return "lamb"; }

 private:
  void update(const std::vector<Slot*>& active, double grad_scale, double grad_norm) override;
#if DEIT_HAVE_CUDA
  void update_on_device(kernels::CudaParamTable& table, cudaStream_t stream) override;
#endif
  double device_max_grad_norm() const override { return options().max_grad_norm; }
};

// torch.optim.AdamW: p *= 1 - lr * wd, then p -= lr * m_hat / (sqrt(v_hat) + eps). The bias
// corrections use each parameter's own update count, as torch keeps a step per parameter (on
// CUDA every parameter is updated at every step, so the counts are all step_count()).
class AdamW final : public Optimizer {
 public:
  AdamW(const ParameterRegistry& params, const OptimizerOptions& options);
  const char* name() const override { return "adamw"; }

 private:
  void update(const std::vector<Slot*>& active, double grad_scale, double grad_norm) override;
#if DEIT_HAVE_CUDA
  void update_on_device(kernels::CudaParamTable& table, cudaStream_t stream) override;
#endif
};

// "lamb" or "adamw"; anything else throws std::invalid_argument naming the choices.
std::unique_ptr<Optimizer> make_optimizer(const std::string& name, const ParameterRegistry& params,
                                          const OptimizerOptions& options);

}  // namespace deit
