// `deit info` as a user runs it: JSON on stdout, clear errors and non-zero exits on bad input.
#include <catch2/catch.hpp>

#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include "tests/cli_runner.h"

using deit::test::CliResult;
using deit::test::run_deit;

TEST_CASE("deit info --json prints one object with the exact parameter count", "[cli]") {
  const CliResult r = run_deit("info --model deit3_base --json");
  REQUIRE(r.exit_code == 0);
  const auto j = nlohmann::json::parse(r.output);
  CHECK(j["params"] == 86585320);
  CHECK(j["gmacs"].get<double>() == Approx(17.56).epsilon(0.01));
  CHECK(j["tokens"] == 197);
  // The fields a script reads besides the counts: the shape as given, and training's 6 FLOPs per
  // MAC (2 forward, 4 backward).
  CHECK(j["head_dim"] == 64);
  CHECK(j["input_size"] == 224);
  CHECK(j["train_gflops_per_image"].get<double>() == Approx(6 * j["gmacs"].get<double>()));
  CHECK(j["recompute_bytes_per_image_bf16"] == 0);  // nothing recomputed without checkpointing
}

TEST_CASE("a model is named custom only when its sizes differ from what it was made from",
          "[cli]") {
  const auto name_of = [](const std::string& flags) {
    const CliResult r = run_deit("info " + flags + " --json");
    REQUIRE(r.exit_code == 0);
    return nlohmann::json::parse(r.output)["model"].get<std::string>();
  };
  CHECK(name_of("--model deit3_small --dim 384 --heads 6") == "deit3_small");
  CHECK(name_of("--model deit3_small --num-classes 10 --input-size 96") == "deit3_small");
  // Each size on its own makes another model.
  for (const char* size : {"--dim 192", "--patch 8", "--depth 6", "--heads 3"}) {
    INFO(size);
    CHECK(name_of("--model deit3_small " + std::string(size)) == "deit3_small (custom)");
  }
}

TEST_CASE("deit info accepts custom sizes", "[cli]") {
  const CliResult r = run_deit("info --model deit3_small --depth 2 --dim 64 --heads 2 "
                               "--num-classes 10 --input-size 32 --json");
  REQUIRE(r.exit_code == 0);
  const auto j = nlohmann::json::parse(r.output);
  // 2 blocks of 64 wide, 4 patches, 10 classes: counted by hand from the parameter table.
  const int64_t block = 2 * 64 + (64 * 192 + 192) + (64 * 64 + 64) + 64 + 2 * 64 +
                        (64 * 256 + 256) + (256 * 64 + 64) + 64;
  const int64_t expected = 64 + 4 * 64 + (64 * 768 + 64) + 2 * block + 2 * 64 + (64 * 10 + 10);
  CHECK(j["params"] == expected);
  // In the text, a model this small is counted in K and MMACs (it read 0.0M and 0.00 GMACs).
  const std::string small_model =
      "info --model deit3_small --depth 1 --dim 32 --heads 2 --num-classes 10 --input-size 32 ";
  const CliResult text = run_deit(small_model);
  REQUIRE(text.exit_code == 0);
  CHECK_THAT(text.output, Catch::Contains("parameters       37930 (37.9K)") &&
                              Catch::Contains("forward          0.16 MMACs per image (training "
                                              "~0.97 MFLOP per image)"));
  // And its activations in KiB (they read 0.0 MiB).
  const auto small =
      nlohmann::json::parse(run_deit(small_model + "--grad-checkpointing --json").output);
  const auto kib = [](const nlohmann::json& bytes) {
    char text[32];
    std::snprintf(text, sizeof text, "%.1f KiB", bytes.get<double>() / 1024);
    return std::string(text);
  };
  const CliResult checkpointed = run_deit(small_model + "--grad-checkpointing");
  INFO(checkpointed.output);
  CHECK_THAT(
      checkpointed.output,
      Catch::Contains("activations      " + kib(small["activation_bytes_per_image_bf16"]) +
                      " per image saved for backward") &&
          Catch::Contains(", " + kib(small["activation_bytes_per_image_f32"]) + " in fp32") &&
          Catch::Contains("recompute        +" + kib(small["recompute_bytes_per_image_bf16"]) +
                          " per image") &&
          !Catch::Contains("0.0 MiB"));
  // Past 100 MFLOP (16.7 to 100 MMACs) no exponent: %.2g printed ~2e+02 MFLOP.
  const CliResult mid = run_deit(
      "info --model deit3_small --depth 4 --dim 128 --heads 2 --num-classes 10 --input-size 96");
  REQUIRE(mid.exit_code == 0);
  CHECK_THAT(mid.output, Catch::Contains("forward          34 MMACs per image (training ~204 "
                                         "MFLOP per image)") &&
                             !Catch::Contains("e+"));
}

TEST_CASE("deit info --recompute-gelu counts the activations without GELU's output", "[cli]") {
  const CliResult kept = run_deit("info --model deit3_small --json");
  const CliResult recomputed = run_deit("info --model deit3_small --recompute-gelu --json");
  REQUIRE(kept.exit_code == 0);
  REQUIRE(recomputed.exit_code == 0);
  const auto a = nlohmann::json::parse(kept.output), b = nlohmann::json::parse(recomputed.output);
  // 4 x 384 wide, one bf16 (f32) activation of fc1's width per block: 197 tokens in 11 blocks,
  // the class token alone in the last.
  const int64_t gelu_outputs = (11 * 197 + 1) * 4 * 384;
  CHECK(a["activation_bytes_per_image_bf16"].get<int64_t>() -
            b["activation_bytes_per_image_bf16"].get<int64_t>() ==
        2 * gelu_outputs);
  CHECK(a["activation_bytes_per_image_f32"].get<int64_t>() -
            b["activation_bytes_per_image_f32"].get<int64_t>() ==
        4 * gelu_outputs);
  // The text says which activations it counts.
  CHECK_THAT(run_deit("info --model deit3_small --recompute-gelu").output,
             Catch::Contains(" in fp32, GELU recomputed\n"));
}

TEST_CASE("deit info --grad-checkpointing counts two activations per block and the recompute",
          "[cli]") {
  const CliResult r = run_deit("info --model deit3_small --grad-checkpointing --json");
  REQUIRE(r.exit_code == 0);
  const auto j = nlohmann::json::parse(r.output);
  // 12 blocks keep x (197 x 384, the fp32 residual stream) and norm1(x) (bf16) and their two
  // drop-path scales (fp32); the first norm1 keeps its statistics; the patches (196 x 768) and
  // the class token before (fp32) and after (bf16) the final norm, with its statistics, stay.
  const int64_t T = 197, C = 384;
  const int64_t kept = 196 * 768 * 2 + 12 * (T * C * (4 + 2) + 2 * 4) + 2 * T * 4 +
                       (C * 4 + 2 * 4) + C * 2;
  CHECK(j["activation_bytes_per_image_bf16"] == kept);
  // The block being recomputed: 16 bf16 T x C activations, 2 of the fp32 residual stream, 2
  // LayerNorms' and 6 heads' statistics, 2 drop-path scales.
  CHECK(j["recompute_bytes_per_image_bf16"] ==
        (16 * 2 + 2 * 4) * T * C + (4 + 6) * T * 4 + 2 * 4);
  const CliResult text = run_deit("info --model deit3_small --grad-checkpointing");
  REQUIRE(text.exit_code == 0);
  CHECK_THAT(text.output, Catch::Contains("while backward recomputes a block"));
}

TEST_CASE("deit info rejects bad input with a clear message and a non-zero exit", "[cli]") {
  CliResult r = run_deit("info --model deit3_gigantic");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("unknown model 'deit3_gigantic'"));
  r = run_deit("info --model deit3_small --frobnicate");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--frobnicate"));
  r = run_deit("info --model deit3_small --depth many");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--depth"));
  r = run_deit("info --model deit3_small --heads 7");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("divisible"));
  r = run_deit("info");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--model"));
  r = run_deit("info --model deit3_small --depth 100000000000");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("depth must be at most 1024"));
}
