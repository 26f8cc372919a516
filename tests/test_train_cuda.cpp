// deit train and deit eval on CUDA end to end. [gpu]: a tiny run on the device against the same
// run on the CPU (same data, augmentation, mixup and drop-path draws, same initial weights; only
// the device's bf16 activations differ, so the losses agree to DESIGN.md's bf16 tolerance, not
// bit for bit), its checkpoint evaluated by the CPU and by the device, a resumed CUDA run, and a
// run whose steps replay one captured CUDA graph against the eager one.
// Without a GPU: asking for one fails at once with a message that says what to do.
#include <catch2/catch.hpp>

#include <cmath>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/communicator.h"
#include "engine/cuda_context.h"
#include "engine/device.h"
#include "engine/rendezvous.h"
#include "model/checkpoint.h"
#include "tests/cli_runner.h"
#include "tests/cuda_test_util.h"
#include "tests/scoped_environment.h"
#include "tests/test_data_helpers.h"
#include "train/stop_request.h"
#include "train/trainer.h"

using namespace deit;
using deit::test::CliResult;
using deit::test::run_deit;

namespace {

// Relative tolerance between a CUDA (bf16 activations) and a CPU (fp32) loss.
constexpr double kBf16Tolerance = 5e-2;

// 8 classes of 32 x 32 images, 12 per class: an epoch of 96 images is 6 batches of 16.
std::string make_dataset(const test::TempDir& dir) {
  data::SyntheticOptions options;
  options.image_size = 32;
  options.num_classes = 8;
  options.train_per_class = 12;
  options.val_per_class = 2;
  return test::write_synthetic_dataset(dir, options);
}

// The model of tests/test_step_cuda.cpp, at shapes the CUDA kernels take (head dim 64), with
// drop-path on so that its per-sample draws are exercised on both devices.
const char* const kModelFlags = "--model deit3_tiny --patch 8 --dim 128 --depth 2 --heads 2 ";

train::TrainOptions tiny_run(const std::string& data, const std::string& output,
                             const std::string& device, int64_t epochs) {
  train::TrainOptions o = train::recipe_for("deit3_tiny");
  o.model.patch = 8;
  o.model.input_size = 32;
  o.model.dim = 128;
  o.model.heads = 2;
  o.model.depth = 2;
  o.drop_path = 0.1;
  o.data_dir = data;
  o.output_dir = output;
  o.device = device;
  o.epochs = epochs;
  o.batch_size = 16;
  o.warmup_epochs = 1;
  o.repeated_aug = false;
  o.workers = 2;
  o.progress = false;
  return o;
}

// The lines of the log of the run in `output`.
std::vector<nlohmann::json> log_lines(const std::string& output) {
  return test::log_lines(output + "/log.txt");
}

nlohmann::json eval_json(const std::string& checkpoint, const std::string& data,
                         const std::string& device) {
  const CliResult r = run_deit(std::string("eval ") + kModelFlags + "--checkpoint " + checkpoint +
                               " --data " + data + " --device " + device +
                               " --batch-size 16 --json");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  return nlohmann::json::parse(r.output);
}

double relative_error(const Tensor& got, const Tensor& want) {
  const std::vector<double> a = got.to_vector<double>(), b = want.to_vector<double>();
  double diff = 0, norm = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff += (a[i] - b[i]) * (a[i] - b[i]);
    norm += b[i] * b[i];
  }
  return norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

// Two runs' checkpoints: the same optimizer step count, and weights and f32 state (optimizer
// moments, EMA) within `tolerance` of each other, relative, tensor by tensor.
void check_checkpoints_agree(const std::string& a_path, const std::string& b_path,
                             double tolerance) {
  const model::Checkpoint a = model::read_checkpoint(a_path);
  const model::Checkpoint b = model::read_checkpoint(b_path);
  CHECK(b.state["optimizer_steps"] == a.state["optimizer_steps"]);
  REQUIRE(a.model.size() == b.model.size());
  for (size_t i = 0; i < a.model.size(); ++i) {
    INFO(a.model[i].first);
    CHECK(relative_error(b.model[i].second, a.model[i].second) <= tolerance);
  }
  REQUIRE(a.extra.size() == b.extra.size());
  for (size_t i = 0; i < a.extra.size(); ++i) {
    INFO(a.extra[i].first);
    if (a.extra[i].second.dtype() == DType::f32)
      CHECK(relative_error(b.extra[i].second, a.extra[i].second) <= tolerance);
  }
}

}  // namespace

TEST_CASE("deit train on CUDA follows the CPU run and writes a checkpoint the CPU evaluates",
          "[gpu][train]") {
  test::TempDir dir;
  const std::string data = make_dataset(dir);
  const train::TrainSummary cpu = train::train(tiny_run(data, dir.file("cpu"), "cpu", 2));
  const train::TrainSummary gpu = train::train(tiny_run(data, dir.file("cuda"), "cuda", 2));
  REQUIRE(gpu.epochs_run == 2);
  const std::vector<nlohmann::json> cpu_log = log_lines(dir.file("cpu"));
  const std::vector<nlohmann::json> gpu_log = log_lines(dir.file("cuda"));
  REQUIRE(cpu_log.size() == 2);
  REQUIRE(gpu_log.size() == 2);
  for (size_t epoch = 0; epoch < 2; ++epoch) {
    INFO("epoch " << epoch << "\n  cpu: " << cpu_log[epoch].dump()
                  << "\n  cuda: " << gpu_log[epoch].dump());
    const double train_loss = gpu_log[epoch]["train_loss"], test_loss = gpu_log[epoch]["test_loss"];
    const double acc1 = gpu_log[epoch]["test_acc1"], acc5 = gpu_log[epoch]["test_acc5"];
    REQUIRE(std::isfinite(train_loss));
    CHECK(train_loss == Approx(cpu_log[epoch]["train_loss"].get<double>()).epsilon(kBf16Tolerance));
    CHECK(test_loss == Approx(cpu_log[epoch]["test_loss"].get<double>()).epsilon(kBf16Tolerance));
    CHECK((std::isfinite(acc1) && acc1 >= 0 && acc1 <= 100));
    CHECK((std::isfinite(acc5) && acc5 >= acc1 && acc5 <= 100));
  }

  // The checkpoint holds host copies of the fp32 master weights, which the CPU evaluates (in fp32,
  // hence the tolerance against the run's bf16 evaluation) and the device evaluates again.
  const model::Checkpoint checkpoint = model::read_checkpoint(gpu.checkpoint);
  CHECK(checkpoint.state["epoch"] == 1);
  for (const auto& [name, t] : checkpoint.model) {
    INFO(name);
    CHECK(t.dtype() == DType::f32);
  }
  const nlohmann::json on_cpu = eval_json(gpu.checkpoint, data, "cpu");
  CHECK(on_cpu["images"] == 16);
  CHECK(on_cpu["loss"].get<double>() == Approx(gpu.last.loss).epsilon(kBf16Tolerance));
  // The same batches through the same kernels as the run's own evaluation.
  const nlohmann::json on_gpu = eval_json(gpu.checkpoint, data, "cuda");
  CHECK(on_gpu["images"] == 16);
  CHECK(on_gpu["loss"].get<double>() == Approx(gpu.last.loss).epsilon(1e-3));
}

TEST_CASE("a CUDA run resumed from its checkpoint continues where it stopped",
          "[gpu][train][resume]") {
  test::TempDir dir;
  const std::string data = make_dataset(dir);
  const train::TrainSummary straight =
      train::train(tiny_run(data, dir.file("straight"), "cuda", 2));

  // Epoch 0 runs at the warm-up's first learning rate whatever the number of epochs, so a one-epoch
  // run saves what the first epoch of the two-epoch run saves; the resumed run does the second.
  const std::string resumed_out = dir.file("resumed");
  REQUIRE(train::train(tiny_run(data, resumed_out, "cuda", 1)).epochs_run == 1);
  train::TrainOptions resume = tiny_run(data, resumed_out, "cuda", 2);
  resume.resume = resumed_out + "/checkpoint.safetensors";
  const train::TrainSummary resumed = train::train(resume);
  CHECK(resumed.epochs_run == 1);

  const model::Checkpoint a = model::read_checkpoint(straight.checkpoint);
  const model::Checkpoint b = model::read_checkpoint(resumed.checkpoint);
  CHECK(b.state["epoch"] == 1);
  // The bare --device cuda is saved as given: each process of a resumed run takes its own GPU.
  CHECK(b.state["options"]["device"] == "cuda");
  // The optimizer state came back onto the device: its step count went on from the saved one.
  CHECK(b.state["optimizer_steps"] == a.state["optimizer_steps"]);
  const std::vector<nlohmann::json> straight_log = log_lines(dir.file("straight"));
  const std::vector<nlohmann::json> resumed_log = log_lines(resumed_out);
  REQUIRE(resumed_log.size() == 2);
  CHECK(resumed_log[1]["epoch"] == 1);
  CHECK(resumed_log[1]["train_loss"].get<double>() ==
        Approx(straight_log[1]["train_loss"].get<double>()).epsilon(kBf16Tolerance));
  // The same updates on the same device: equal up to the order of the kernels' float sums.
  REQUIRE(a.model.size() == b.model.size());
  for (size_t i = 0; i < a.model.size(); ++i) {
    INFO(a.model[i].first);
    CHECK(relative_error(b.model[i].second, a.model[i].second) <= 1e-3);
  }
  for (size_t i = 0; i < a.extra.size(); ++i) {
    INFO(a.extra[i].first);
    REQUIRE(b.extra[i].first == a.extra[i].first);
    if (a.extra[i].second.dtype() == DType::f32)
      CHECK(relative_error(b.extra[i].second, a.extra[i].second) <= 1e-2);
    else
      CHECK(b.extra[i].second.to_vector<double>() == a.extra[i].second.to_vector<double>());
  }
}

TEST_CASE("deit train --cuda-graph trains as the eager CUDA run does, step for step",
          "[gpu][train][graph]") {
  // Every step after the first replays one captured graph with the batch, targets and keep scales
  // copied into its fixed buffers and the learning rate written before the launch. The kernels
  // are deterministic and the replay runs the same ones in the same order, so the two runs agree
  // to the last bits; the tolerances leave room for nothing else. Three epochs: the first two both
  // run at the warm-up's first learning rate, the third at another, so a graph that froze the
  // learning rate of its capture would part from the eager run there. The EMA is on, with a decay
  // that makes a missed update visible.
  constexpr int64_t kEpochs = 3;
  test::TempDir dir;
  const std::string data = make_dataset(dir);
  train::TrainOptions eager = tiny_run(data, dir.file("eager"), "cuda", kEpochs);
  eager.model_ema = true;
  eager.model_ema_decay = 0.9;
  // A graph runs drop-path's branches over the whole batch (its shapes are fixed): so does the
  // eager run here, the same GEMMs on both sides.
  eager.whole_batch_branches = true;
  train::TrainOptions graph = eager;
  graph.output_dir = dir.file("graph");
  graph.cuda_graph = true;
  const train::TrainSummary a = train::train(eager);
  const train::TrainSummary b = train::train(graph);
  REQUIRE(b.epochs_run == kEpochs);
  const std::vector<nlohmann::json> eager_log = log_lines(eager.output_dir);
  const std::vector<nlohmann::json> graph_log = log_lines(graph.output_dir);
  REQUIRE(graph_log.size() == kEpochs);
  CHECK(eager_log[2]["train_lr"].get<double>() != eager_log[1]["train_lr"].get<double>());
  for (size_t epoch = 0; epoch < kEpochs; ++epoch) {
    INFO("epoch " << epoch << "\n  eager: " << eager_log[epoch].dump()
                  << "\n  graph: " << graph_log[epoch].dump());
    for (const char* key : {"train_loss", "test_loss", "test_acc1"})
      CHECK(graph_log[epoch][key].get<double>() ==
            Approx(eager_log[epoch][key].get<double>()).epsilon(1e-6));
  }
  check_checkpoints_agree(a.checkpoint, b.checkpoint, 1e-6);
}

TEST_CASE("deit train --gemm-autotune trains on CUDA and leaves the setting as it found it",
          "[gpu][train]") {
  test::TempDir dir;
  const std::string data = make_dataset(dir);
  train::TrainOptions o = tiny_run(data, dir.file("tuned"), "cuda", 1);
  o.model.dim = 160;  // a width no other case here trains: its GEMMs are planned, and timed, here
  o.gemm_autotune = true;
  const kernels::CublasLt& lt = *cuda_context(0).cublas_lt;
  const size_t off_before = lt.plans_off_first_choice();
  const train::TrainSummary s = train::train(o);
  CHECK(s.epochs_run == 1);
  const std::vector<nlohmann::json> log = log_lines(o.output_dir);
  REQUIRE(log.size() == 1);
  CHECK(std::isfinite(log[0]["train_loss"].get<double>()));
  // The emulated heuristic's first choice is always the slower
  // (tests/emulated/runtime/cublaslt.cpp).
  if (test::on_emulated_device()) CHECK(lt.plans_off_first_choice() > off_before);
  CHECK_FALSE(lt.autotune());
}

TEST_CASE("a CUDA graph run stopped by a signal resumes from the step it saved",
          "[gpu][train][graph][resume]") {
  test::TempDir dir;
  const std::string data = make_dataset(dir);
  train::TrainOptions straight = tiny_run(data, dir.file("straight"), "cuda", 1);
  straight.cuda_graph = true;
  train::TrainOptions stopped = straight;
  stopped.output_dir = dir.file("stopped");
  const train::TrainSummary a = train::train(straight);

  // As a signal would: the run stops after its first step (eager, before any capture), saves,
  // and the resumed run captures and replays the epoch's other five.
  train::request_stop(SIGTERM);
  const train::TrainSummary at = train::train(stopped);
  CHECK(at.stop.signal == SIGTERM);
  CHECK(at.stop.batches_done == 1);
  CHECK(at.stop.batches == 6);
  train::TrainOptions rest = stopped;
  rest.resume = stopped.output_dir + "/checkpoint.safetensors";
  const train::TrainSummary b = train::train(rest);
  CHECK(b.stop.signal == 0);
  CHECK(b.epochs_run == 1);

  const std::vector<nlohmann::json> a_log = log_lines(straight.output_dir);
  const std::vector<nlohmann::json> b_log = log_lines(stopped.output_dir);
  REQUIRE(b_log.size() == 1);
  CHECK(b_log[0]["train_loss"].get<double>() ==
        Approx(a_log[0]["train_loss"].get<double>()).epsilon(1e-6));
  check_checkpoints_agree(a.checkpoint, b.checkpoint, 1e-6);
}

#if DEIT_HAVE_NCCL
TEST_CASE("a one-process CUDA run through NCCL (DEIT_NCCL_ONE_RANK) trains as without it",
          "[gpu][train][nccl]") {
  // The data-parallel path on one GPU: gradient buckets all-reduced on the communication stream
  // during backward, the barrier, the host-value reductions. A mean over one rank changes no bit.
  // With --accum-steps 2, the first micro-batch's gradients are added to in their homes by the
  // second's (engine/gradient_reducer.h). With --zero, the one rank owns every tensor: the
  // gradients are reduce-scattered to it and the updates all-gathered from it
  // (engine/sharded_optimizer.h).
  const auto [accum_steps, zero] =
      GENERATE(table<int64_t, bool>({{1, false}, {2, false}, {2, true}}));
  INFO("--accum-steps " << accum_steps << (zero ? " --zero" : ""));
  test::TempDir dir;
  const std::string data = make_dataset(dir);
  train::TrainOptions alone = tiny_run(data, dir.file("alone"), "cuda:0", 2);
  alone.accum_steps = accum_steps;
  train::TrainOptions through_nccl = alone;
  through_nccl.output_dir = dir.file("nccl");
  through_nccl.zero = zero;
  Rendezvous one_rank;
  one_rank.nccl_one_rank = true;
  const std::unique_ptr<Communicator> nccl = make_communicator(Device::cuda(0), one_rank);
  REQUIRE(std::string(nccl->backend()) == "nccl");
  const train::TrainSummary a = train::train(alone);
  const train::TrainSummary b = train::train(through_nccl, *nccl);
  REQUIRE(b.epochs_run == 2);
  const std::vector<nlohmann::json> alone_log = log_lines(alone.output_dir);
  const std::vector<nlohmann::json> nccl_log = log_lines(through_nccl.output_dir);
  REQUIRE(nccl_log.size() == 2);
  for (size_t epoch = 0; epoch < 2; ++epoch)
    for (const char* key : {"train_loss", "test_loss"})
      CHECK(nccl_log[epoch][key].get<double>() ==
            Approx(alone_log[epoch][key].get<double>()).epsilon(1e-6));
  const model::Checkpoint ca = model::read_checkpoint(a.checkpoint);
  const model::Checkpoint cb = model::read_checkpoint(b.checkpoint);
  REQUIRE(ca.model.size() == cb.model.size());
  for (size_t i = 0; i < ca.model.size(); ++i) {
    INFO(ca.model[i].first);
    CHECK(relative_error(cb.model[i].second, ca.model[i].second) <= 1e-6);
  }
}

TEST_CASE("deit train through NCCL on one GPU says which library averages the gradients",
          "[gpu][train][nccl]") {
  test::TempDir dir;
  const std::string data = make_dataset(dir);
  const CliResult r = [&] {
    const test::ScopedEnvironment one_rank("DEIT_NCCL_ONE_RANK", "1");  // popen's shell inherits it
    return run_deit("train " + std::string(kModelFlags) + "--input-size 32 --data " + data +
                    " --output " + dir.file("run") + " --device cuda --epochs 1 --batch-size 16");
  }();
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("x 1 process (gradients averaged through NCCL)"));
}
#endif

TEST_CASE("deit train, eval and demo on a CUDA device this machine lacks say so at once",
          "[train][cli]") {
  if (cuda_device_count() > 0) return;  // the [gpu] cases above train there
  const std::string args = std::string(kModelFlags) + "--data nowhere --device cuda";
  CliResult r = run_deit("train " + args + " --output nowhere-out");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("cuda:0") && Catch::Contains("--device cpu"));
  r = run_deit("eval " + args + " --checkpoint nowhere.safetensors");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("cuda:0") && Catch::Contains("--device cpu"));
  // The demo neither makes its dataset nor replaces its previous run first.
  const test::TempDir dir;
  const std::string out = dir.path() + "/demo";
  r = run_deit("demo --device cuda --out " + out);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("cuda:0") && Catch::Contains("--device cpu"));
  CHECK_FALSE(std::filesystem::exists(out));
}
