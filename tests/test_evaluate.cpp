// How deit eval scores logits that do not single out a class, as torch's topk sorts them: ties
// between classes go to the lower class index (argmax's first maximum), and a NaN comes before
// every number. A model whose outputs are all equal or NaN scores at chance, where ties going to
// the label had scored it 100%; the per-class table agrees with the top-1.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <string>

#include <nlohmann/json.hpp>

#include "data/synthetic.h"
#include "engine/rng.h"
#include "model/checkpoint.h"
#include "tests/cli_runner.h"
#include "tests/test_data_helpers.h"

using namespace deit;
using deit::test::run_deit;

namespace {

constexpr int kClasses = 6, kImagesPerClass = 2;

// The eval's JSON (with --per-class) for weights whose head gives every class the score 0 but
// class `odd_class` `odd_score`.
nlohmann::json eval_with_flat_head(const test::TempDir& dir, const std::string& data, int odd_class,
                                   float odd_score) {
  model::ViTConfig c;
  c.name = "deit3_tiny";
  c.patch = 4;
  c.dim = 16;
  c.depth = 1;
  c.heads = 2;
  c.num_classes = kClasses;
  c.input_size = 8;
  model::VisionTransformer vit(c);
  Rng rng(3);
  vit.initialize(rng);
  Tensor(vit.parameters().get("head.weight")).zero_();
  Tensor bias = vit.parameters().get("head.bias");
  bias.zero_();
  bias.data<float>()[odd_class] = odd_score;
  const std::string weights = dir.file("flat.safetensors");
  model::save_weights(weights, vit,
                      std::vector<std::string>(data::synthetic_class_names().begin(),
                                               data::synthetic_class_names().begin() + kClasses));
  const test::CliResult r = run_deit(
      "eval --model deit3_tiny --patch 4 --dim 16 --depth 1 --heads 2 --input-size 8 "
      "--weights " +
      weights + " --data " + data + " --per-class --json");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  return nlohmann::json::parse(r.output.substr(r.output.find('{')));
}

}  // namespace

TEST_CASE("deit eval scores tied and NaN logits as misses, not hits", "[train][cli]") {
  test::TempDir dir;
  data::SyntheticOptions options;
  options.image_size = 16;
  options.num_classes = kClasses;
  options.train_per_class = 1;
  options.val_per_class = kImagesPerClass;
  const std::string data = test::write_synthetic_dataset(dir, options);
  const double per_class = 100.0 / kClasses;

  // All six scores equal: top-1 is class 0 for every image, top-5 classes 0 to 4.
  nlohmann::json j = eval_with_flat_head(dir, data, 0, 0.f);
  CHECK(j["images"] == kClasses * kImagesPerClass);
  CHECK(j["acc1"].get<double>() == Approx(per_class));
  CHECK(j["acc5"].get<double>() == Approx(5 * per_class));

  // Class 3's score NaN: it comes first for every image, then the tie among the rest in class
  // order, so class l (l != 3) is at rank l + 1 below 3 and l above: classes 0 to 4 make the top 5.
  j = eval_with_flat_head(dir, data, 3, std::numeric_limits<float>::quiet_NaN());
  CHECK(j["acc1"].get<double>() == Approx(per_class));
  CHECK(j["acc5"].get<double>() == Approx(5 * per_class));
  for (const auto& row : j["per_class"]) {
    INFO(row.dump());
    CHECK(row["acc1"].get<double>() ==
          (row["class"] == data::synthetic_class_names()[3] ? 100 : 0));
  }
}
