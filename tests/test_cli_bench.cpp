// `deit bench kernels|step` as a user (and bench/compare.sh) runs them: the step benchmark's JSON
// fields on the CPU, with a model small enough for CI; the kernel benchmark's refusal without a
// GPU. The numbers themselves are speeds and are not tested (DESIGN: no timing in tests); what is
// tested is that each field is there and means what bench/step_bench.h says.
// (`deit bench data` is tested with the augmentation, in test_augment_batch.cpp; here only where
// it puts its temporary shard.)
#include <unistd.h>

#include <catch2/catch.hpp>

#include <map>
#include <set>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "bench/step_bench.h"
#include "engine/device.h"
#include "model/config.h"
#include "model/cost.h"
#include "tests/cli_runner.h"
#include "tests/scoped_environment.h"

using deit::test::CliResult;
using deit::test::run_deit;
using deit::test::ScopedEnvironment;

namespace {

const char* kTinyStep =
    "bench step --model deit3_tiny --depth 1 --input-size 32 --batch-size 2 --device cpu "
    "--warmup 1 --steps 2 --profile-steps 1 --json";

}  // namespace

TEST_CASE("deit bench step --device cpu --json prints one object with the documented fields",
          "[cli][bench]") {
  const CliResult r = run_deit(kTinyStep);
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  const auto j = nlohmann::json::parse(r.output);  // the whole output: exactly one object
  CHECK(j["impl"] == "deit");
  CHECK(j["model"] == "deit3_tiny");
  // The model as run: the preset's sizes with --depth 1.
  CHECK(j["shape"] ==
        nlohmann::json{
            {"patch", 16}, {"dim", 192}, {"depth", 1}, {"heads", 3}, {"num_classes", 1000}});
  CHECK(j["input_size"] == 32);
  CHECK(j["batch_size"] == 2);
  CHECK(j["world_size"] == 1);
  CHECK(j["device"] == "cpu");
  CHECK(j["precision"] == "fp32");
  CHECK(j["optimizer"] == "lamb");
  CHECK(j["drop_path"].get<double>() == 0.0);  // the recipe's rate for deit3_tiny
  CHECK(j["branch_sample_share"].get<double>() == 1.0);  // no drop-path: every branch whole
  CHECK(j["recompute_gelu"] == false);
  CHECK(j["grad_checkpointing"] == false);
  CHECK(j["gemm_epilogues"].is_null());  // the CPU has none
  CHECK(j["gemm_autotune"].is_null());
  CHECK(j["gemm_plans_off_first_choice"].is_null());
  CHECK(j["zero"] == false);
  CHECK(j["warmup_steps"] == 1);
  CHECK(j["timed_steps"] == 2);

  const double step_ms = j["step_ms"].get<double>();
  CHECK(step_ms > 0);
  CHECK(j["images_per_s"].get<double>() == Approx(2 * 1000.0 / step_ms));

  // The FLOP count is model/cost.h's, for the model as overridden on the command line.
  deit::model::ViTConfig c = deit::model::preset("deit3_tiny");
  c.depth = 1;
  c.input_size = 32;
  const double gflops = 6.0 * static_cast<double>(deit::model::forward_macs(c)) / 1e9;
  CHECK(j["train_gflops_per_image"].get<double>() == Approx(gflops));
  CHECK(j["achieved_tflops"].get<double>() ==
        Approx(gflops * j["images_per_s"].get<double>() / 1000.0));
  // No known peak for a CPU: MFU is null rather than invented.
  CHECK(j["peak_tflops"].is_null());
  CHECK(j["mfu"].is_null());
  CHECK(j["peak_memory_bytes"].get<int64_t>() > 0);

  const auto& phases = j["phases_ms"];
  for (const char* phase : {"forward", "backward", "optimizer"}) {
    INFO(phase);
    CHECK(phases[phase].get<double>() >= 0);
  }
  CHECK(phases["forward"].get<double>() + phases["backward"].get<double>() +
            phases["optimizer"].get<double>() <=
        Approx(step_ms).epsilon(0.01));

  // One block: every op of the step shows up with its number of calls per step.
  REQUIRE(j["breakdown"].is_array());
  std::set<std::string> ops;
  double in_ops = 0, fractions = 0;
  for (const auto& op : j["breakdown"]) {
    ops.insert(op["op"].get<std::string>());
    in_ops += op["ms_per_step"].get<double>();
    fractions += op["fraction_of_step"].get<double>();
    // The one block is the last, whose attention is the class token's (model/vit.cpp).
    if (op["op"] == "class_attention" || op["op"] == "class_attention backward" ||
        op["op"] == "gelu")
      CHECK(op["calls_per_step"].get<double>() == 1.0);
    // One block: its norm1 and the final norm alone; norm2 fused with the residual update before.
    if (op["op"] == "layernorm") CHECK(op["calls_per_step"].get<double>() == 2.0);
    if (op["op"] == "layerscale_residual_layernorm")
      CHECK(op["calls_per_step"].get<double>() == 1.0);
  }
  for (const char* op :
       {"linear", "linear backward", "class_attention", "class_attention backward", "layernorm",
        "layernorm backward", "gelu", "layerscale_residual", "layerscale_residual_layernorm",
        "layerscale_residual_layernorm backward", "patch_unfold", "bce_with_logits"}) {
    INFO(op);
    CHECK(ops.count(op) == 1);
  }
  CHECK(fractions <= 1.0 + 1e-9);
  CHECK(in_ops + j["other_ms"].get<double>() ==
        Approx(j["profiled_step_ms"].get<double>()).epsilon(1e-6));
  CHECK(j["comm"].is_null());  // one process
  for (const char* field : {"graph_step_ms", "graph_images_per_s", "graph_error"}) {
    INFO(field);
    CHECK(j.contains(field));
    CHECK(j[field].is_null());  // no --cuda-graph
  }
}

TEST_CASE("deit bench step --recompute-gelu runs fc2 through gelu_linear", "[cli][bench]") {
  const CliResult r = run_deit(std::string(kTinyStep) + " --recompute-gelu");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  const auto j = nlohmann::json::parse(r.output);
  CHECK(j["recompute_gelu"] == true);
  std::set<std::string> ops;
  for (const auto& op : j["breakdown"]) ops.insert(op["op"].get<std::string>());
  CHECK(ops.count("gelu_linear") == 0);  // dispatched as its parts: gelu, then linear
  CHECK(ops.count("gelu backward") == 1);
  // One block: GELU once in forward and once more in backward, where it is recomputed.
  for (const auto& op : j["breakdown"])
    if (op["op"] == "gelu") CHECK(op["calls_per_step"].get<double>() == 2.0);
}

TEST_CASE("deit bench step --grad-checkpointing runs each block's forward again in backward",
          "[cli][bench]") {
  const CliResult r = run_deit(std::string(kTinyStep) + " --grad-checkpointing");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  const auto j = nlohmann::json::parse(r.output);
  CHECK(j["grad_checkpointing"] == true);
  std::map<std::string, double> calls;
  for (const auto& op : j["breakdown"])
    calls[op["op"].get<std::string>()] = op["calls_per_step"].get<double>();
  // One block: its attention (the class token's, in the last block) and GELU twice (forward,
  // then again in backward), once backward.
  CHECK(calls["class_attention"] == 2.0);
  CHECK(calls["gelu"] == 2.0);
  CHECK(calls["class_attention backward"] == 1.0);
}

TEST_CASE("running out of memory says what needs less", "[cli][bench]") {
  // 10^9 images of 3 x 224 x 224: more bytes than a 64-bit process can address, refused at once
  // whatever the kernel's overcommit policy.
  const CliResult r = run_deit(
      "bench step --device cpu --model deit3_tiny --batch-size 1000000000 --steps 1 --warmup 0");
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.output, Catch::Contains("out of memory allocating") &&
                           Catch::Contains("--batch-size") &&
                           Catch::Contains("--grad-checkpointing"));
}

TEST_CASE("deit bench step takes a peak for MFU and the recipe's overrides", "[cli][bench]") {
  const CliResult r = run_deit(std::string(kTinyStep) +
                               " --peak-tflops 2 --opt adamw --drop-path 0.5 --profile-steps 0");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  const auto j = nlohmann::json::parse(r.output);
  CHECK(j["peak_tflops"].get<double>() == 2.0);
  CHECK(j["peak_tflops_source"] == "--peak-tflops");
  CHECK(j["mfu"].get<double>() == Approx(j["achieved_tflops"].get<double>() / 2.0));
  CHECK(j["optimizer"] == "adamw");
  CHECK(j["drop_path"].get<double>() == 0.5);
  CHECK(j["breakdown"].is_null());
}

TEST_CASE("MFU's peak is the datasheet's for the GPU named, and none for a MIG instance",
          "[cli][bench]") {
  using deit::bench::known_peak_tflops;
  // The names as the CUDA driver gives them.
  CHECK(known_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0);
  CHECK(known_peak_tflops("NVIDIA H200") == 989.0);
  CHECK(known_peak_tflops("NVIDIA GH200 480GB") == 989.0);
  CHECK(known_peak_tflops("NVIDIA H100 PCIe") == 756.0);
  CHECK(known_peak_tflops("NVIDIA H100 NVL") == 835.0);
  CHECK(known_peak_tflops("NVIDIA H200 NVL") == 835.0);
  CHECK(known_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0);
  CHECK_FALSE(known_peak_tflops("NVIDIA H100 80GB HBM3 MIG 3g.40gb"));
  CHECK_FALSE(known_peak_tflops("NVIDIA A100-SXM4-40GB MIG 1g.5gb"));
  CHECK_FALSE(known_peak_tflops("NVIDIA L40S"));
}

TEST_CASE("deit bench step's text names a custom model's sizes and aligns its op table",
          "[cli][bench]") {
  const CliResult r = run_deit(
      "bench step --model deit3_tiny --depth 1 --input-size 32 "
      "--batch-size 2 --device cpu --warmup 0 --steps 1 --profile-steps 1");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  // What runs is said first (on stderr), then the report's first line.
  CHECK(r.output.rfind("timing deit3_tiny at batch 2 on cpu: 0 warm-up, 1 timed and 1 profiled "
                       "steps\ndeit3_tiny (custom: patch 16, dim 192, depth 1, heads 3) at 32 px",
                       0) == 0);
  // Every op row (the longest name included) has its milliseconds in the same column.
  std::set<size_t> ms_columns;
  std::istringstream lines(r.output.substr(r.output.find("time per op")));
  std::string line;
  std::getline(lines, line);
  while (std::getline(lines, line) && line.rfind("  ", 0) == 0) ms_columns.insert(line.find(" ms"));
  CHECK(ms_columns.size() == 1);
  // An op run once a step (one block's) is counted in the singular.
  CHECK_THAT(r.output, Catch::Contains("     1 call\n") && !Catch::Contains(" 1 calls"));
}

TEST_CASE("deit bench step --zero in one process says it shards nothing", "[cli][bench]") {
  const CliResult r = run_deit(std::string(kTinyStep) + " --zero --profile-steps 0");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  const size_t note = r.output.find(
      "bench step: --zero shards the optimizer state over several "
      "processes; in one there is nothing to shard");
  REQUIRE(note != std::string::npos);
  // The note is on stderr, on a line of its own; stdout is the one JSON object.
  const size_t line_end = r.output.find('\n', note);
  std::string json = r.output;
  json.erase(note, line_end + 1 - note);
  const auto j = nlohmann::json::parse(json);
  CHECK(j["zero"] == false);
  CHECK(j["comm"].is_null());
}

TEST_CASE("deit bench rejects bad input with a clear message and a non-zero exit",
          "[cli][bench]") {
  CliResult r = run_deit("bench step --model deit3_gigantic --device cpu");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("unknown model 'deit3_gigantic'"));
  r = run_deit("bench step --model deit3_tiny --device cpu --batch-size 0");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--batch-size"));
  // A shape no model has is refused as the flags are read, before the benchmark says what it
  // times (without the check in ModelOptions::apply_to it was refused only once the model was
  // built, after "timing deit3_tiny at batch 64 ...").
  r = run_deit("bench step --model deit3_tiny --heads 5 --device cpu");
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.output, Catch::Contains("dim 192 is not divisible by heads 5") &&
                           !Catch::Contains("timing"));
  r = run_deit("bench step --device cpu");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--model"));
  r = run_deit("bench step --model deit3_tiny --device cpu --cuda-graph");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--cuda-graph needs --device cuda"));
  r = run_deit("bench kernels --device cpu");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--device must be cuda"));
  // A name that is no device at all gets the same answer (it offered cpu, which is refused).
  r = run_deit("bench kernels --device gpu");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--device must be cuda or cuda:N, got 'gpu'") &&
                           !Catch::Contains("expected cpu"));
  r = run_deit("bench kernels --device cuda:x");  // parse_device's message says what is wrong
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("cuda:x") && !Catch::Contains("--device must be cuda"));
  r = run_deit("bench kernels --repeats 0");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--repeats: Value 0 not in range 1 to 2147483647"));
  r = run_deit("bench");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("subcommand is required"));
  r = run_deit("bench step --model deit3_tiny --device cpu --peak-tflops -1");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--peak-tflops must be a positive number"));
  r = run_deit("bench step --model deit3_tiny --device cpu --drop-path 1");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output,
             Catch::Contains("--drop-path must be in [0, 1), got 1") && !Catch::Contains("timing"));
  // Refused before the line that announces the timing, not after it.
  r = run_deit("bench step --model deit3_tiny --device cpu --opt sgd");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output,
             Catch::Contains("--opt: sgd not in {lamb,adamw}") && !Catch::Contains("timing"));
  r = run_deit("bench step --model deit3_tiny --device cuda:99");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("cuda:99") && !Catch::Contains("timing"));
}

TEST_CASE("deit bench data takes an empty TMPDIR for an unset one, as POSIX tools do",
          "[cli][bench]") {
  const CliResult r = [] {
    const ScopedEnvironment empty_tmpdir("TMPDIR", "");
    return run_deit(
        "bench data --device cpu --input-size 32 --batch-size 4 --batches 20 --workers 1 --json");
  }();
  INFO(r.output);
  CHECK(r.exit_code == 0);
}

TEST_CASE("deit bench kernels without a GPU fails and says why", "[cli][bench]") {
  if (deit::cuda_device_count() > 0) {
    WARN("this machine has a CUDA device: `deit bench kernels` would run (bench/gpu-check.sh "
         "runs it), so its refusal is not checked here");
    return;
  }
  const CliResult r = run_deit("bench kernels --json");
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.output, Catch::Contains("deit bench kernels needs a CUDA device"));
#if DEIT_HAVE_CUDA
  // Why (the runtime's words and the likely cause), and where to run it instead: the kernels have
  // no CPU path, so not "--device cpu".
  CHECK_THAT(r.output,
             Catch::Contains("cudaGetDeviceCount") || Catch::Contains("this machine has"));
  CHECK_THAT(r.output, Catch::Contains("bench/gpu-check.sh") && !Catch::Contains("--device cpu"));
#endif
}

TEST_CASE("deit bench step runs drop-path branches on the kept samples unless told otherwise",
          "[cli][bench]") {
  // A batch of 8 at a rate of 0.5: the first block's attention branch and the last one's MLP keep
  // from 1 to 7 of their samples (all but certainly: the bench's draws are seeded) and run on them
  // alone, the first gathered from the whole batch's norm1 and the last scattered back into it.
  const std::string step = std::string(kTinyStep) + " --batch-size 8 --drop-path 0.5";
  for (const bool whole : {false, true}) {
    const CliResult r = run_deit(step + (whole ? " --whole-batch-branches" : ""));
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    const auto j = nlohmann::json::parse(r.output);
    CHECK(j["whole_batch_branches"] == whole);
    CHECK(j["batch_size"] == 8);  // the later --batch-size
    std::set<std::string> ops;
    for (const auto& op : j["breakdown"]) ops.insert(op["op"].get<std::string>());
    CHECK(ops.count("gather_samples") == (whole ? 0 : 1));
    CHECK(ops.count("scatter_samples") == (whole ? 0 : 1));
    // Near half the samples a branch (1 to 7 of 8 where selected, all 8 where not).
    const double share = j["branch_sample_share"].get<double>();
    if (whole)
      CHECK(share == 1.0);
    else
      CHECK((share > 0.3 && share < 0.8));
  }
}

TEST_CASE("out of memory under an address-space limit (ulimit -v) gives that limit",
          "[cli][bench][address_space]") {
  // 8 GiB (wide enough for the libraries a CUDA build maps). The message gave the machine's memory,
  // which the process could never have. The first batch, 800,000 x 3 x 32 x 32 floats (9.4 GiB),
  // is refused before it is allocated.
  const CliResult r = deit::test::run_shell(
      "ulimit -v 8388608 && " + std::string(DEIT_BINARY) +
      " bench step --model deit3_tiny --dim 32 --depth 1 --heads 2 --input-size 32 --device cpu "
      "--batch-size 800000 --warmup 0 --steps 1 --profile-steps 0");
  INFO(r.output);
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.output, Catch::Contains("out of memory allocating"));
  const double physical_gib = static_cast<double>(sysconf(_SC_PHYS_PAGES)) *
                              static_cast<double>(sysconf(_SC_PAGESIZE)) / (1 << 30);
  if (physical_gib > 8)
    CHECK_THAT(r.output, Catch::Contains(", 8192 MiB at most: the machine's memory or its limit"));
}
