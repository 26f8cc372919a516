// How deit eval scores logits that do not single out a class, as torch's topk sorts them: ties
// between classes go to the lower class index (argmax's first maximum), and a NaN comes before
// every number. A model whose outputs are all equal or NaN scores at chance, where ties going to
// the label had scored it 100%; the per-class table agrees with the top-1, also for a head with
// outputs beyond the dataset's classes. The confusion matrix behind that table is counted only
// when asked for, and summed over the ranks with the other counts (a stand-in peer here; two
// real ranks: test_distributed_train.cpp).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/image_source.h"
#include "data/synthetic.h"
#include "engine/communicator.h"
#include "engine/rng.h"
#include "model/checkpoint.h"
#include "tests/cli_runner.h"
#include "tests/test_data_helpers.h"
#include "tests/test_model_helpers.h"
#include "train/data_pipeline.h"
#include "train/evaluate.h"

using namespace deit;
using deit::test::run_deit;

namespace {

constexpr int kClasses = 6, kImagesPerClass = 2;

std::string write_dataset(const test::TempDir& dir) {
  data::SyntheticOptions options;
  options.image_size = 16;
  options.num_classes = kClasses;
  options.train_per_class = 1;
  options.val_per_class = kImagesPerClass;
  return test::write_synthetic_dataset(dir, options);
}

// The eval's JSON (with --per-class) for weights whose head gives every class the score `others`
// but class `odd_class` `odd_score`; the head has `outputs` outputs, the first kClasses the
// dataset's classes.
nlohmann::json eval_with_flat_head(const test::TempDir& dir, const std::string& data, int odd_class,
                                   float odd_score, int outputs = kClasses, float others = 0.f) {
  model::ViTConfig c;
  c.name = "deit3_tiny (custom)";
  c.patch = 4;
  c.dim = 16;
  c.depth = 1;
  c.heads = 2;
  c.num_classes = outputs;
  c.input_size = 8;
  model::VisionTransformer vit(c);
  Rng rng(3);
  vit.initialize(rng);
  Tensor(vit.parameters().get("head.weight")).zero_();
  Tensor bias = vit.parameters().get("head.bias");
  for (int k = 0; k < outputs; ++k) bias.data<float>()[k] = others;
  bias.data<float>()[odd_class] = odd_score;
  const std::string weights = dir.file("flat.safetensors");
  model::save_weights(weights, vit,
                      std::vector<std::string>(data::synthetic_class_names().begin(),
                                               data::synthetic_class_names().begin() + kClasses));
  // The model the weights name (deit export's metadata), head and all.
  const test::CliResult r =
      run_deit("eval --weights " + weights + " --data " + data + " --per-class --json");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  return nlohmann::json::parse(r.output.substr(r.output.find('{')));
}

}  // namespace

TEST_CASE("deit eval scores tied and NaN logits as misses, not hits", "[train][cli]") {
  test::TempDir dir;
  const std::string data = write_dataset(dir);
  const double per_class = 100.0 / kClasses;

  // All six scores equal: top-1 is class 0 for every image, top-5 classes 0 to 4.
  nlohmann::json j = eval_with_flat_head(dir, data, 0, 0.f);
  CHECK(j["images"] == kClasses * kImagesPerClass);
  CHECK(j["acc1"].get<double>() == Approx(per_class));
  CHECK(j["acc5"].get<double>() == Approx(5 * per_class));
  // The tie goes to class 0, the lowest index, not the highest: the same accuracy either way,
  // which only the per-class table tells apart.
  for (const auto& row : j["per_class"]) {
    INFO(row.dump());
    const bool first = row["class"] == data::synthetic_class_names()[0];
    CHECK(row["acc1"].get<double>() == (first ? 100 : 0));
    if (!first) CHECK(row["most_confused_with"] == data::synthetic_class_names()[0]);
  }

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

TEST_CASE("deit eval --per-class of a head with outputs beyond the dataset's classes",
          "[train][cli]") {
  // Two outputs more than classes (deit train --num-classes): every image goes to output 7.
  test::TempDir dir;
  const std::string data = write_dataset(dir);
  const nlohmann::json j = eval_with_flat_head(dir, data, kClasses + 1, 1.f, kClasses + 2);
  CHECK(j["acc1"] == 0.0);
  REQUIRE(j["per_class"].size() == kClasses);
  for (int k = 0; k < kClasses; ++k) {
    const nlohmann::json& row = j["per_class"][k];
    INFO(row.dump());
    CHECK(row["class"] == data::synthetic_class_names()[k]);
    CHECK(row["images"] == kImagesPerClass);
    CHECK(row["acc1"] == 0.0);
    CHECK(row["most_confused_with"] == "output 7 (no class)");
    CHECK(row["most_confused_images"] == kImagesPerClass);
  }
}

TEST_CASE("an evaluation counts its K x K confusion matrix only when asked", "[train]") {
  // The trainer evaluates after every epoch without it: at ImageNet-21k's classes it is gigabytes.
  test::TempDir dir;
  const std::string data = write_dataset(dir);
  const model::VisionTransformer vit = test::tiny_cli_model(kClasses, 8, 5);
  const std::shared_ptr<const data::ImageSource> val(data::open_dataset_split(data, "val", false));
  const auto loader = train::make_eval_loader(val, 8, 1.0, 4, 1);
  const train::EvalResult plain = train::evaluate(vit, *loader, false);
  CHECK(plain.images == kClasses * kImagesPerClass);
  CHECK(plain.confusion.empty());
  CHECK_THROWS_AS(plain.per_class_json(val->class_names()), std::logic_error);

  const train::EvalResult counted = train::evaluate(vit, *loader, false, nullptr, true);
  REQUIRE(counted.confusion.size() == kClasses * kClasses);
  int64_t images = 0;
  for (const int64_t n : counted.confusion) images += n;
  CHECK(images == counted.images);
  CHECK(counted.acc1 == plain.acc1);
  CHECK(counted.loss == plain.loss);
}

TEST_CASE("deit eval refuses a split with more classes than the head has outputs", "[train][cli]") {
  // Weights that do not name their classes (timm's) cannot be compared with the split's by name:
  // labels past the head's outputs had been scored against logits that are not there (acc5 100%
  // with 4 outputs), and --per-class counted them outside its matrix (a corrupted heap).
  test::TempDir dir;
  const std::string data = write_dataset(dir);
  const model::VisionTransformer vit = test::tiny_cli_model(kClasses - 2, 8, 5);
  const std::string weights = dir.file("unnamed.safetensors");
  model::save_weights(weights, vit, {});
  const std::string refusal = "weights file '" + weights +
                              "' holds a model of 4 classes, fewer than the 6 classes of split "
                              "'val' of '" +
                              data + "'";
  for (const char* per_class : {"", " --per-class"}) {
    const test::CliResult r =
        run_deit("eval --weights " + weights + " --data " + data + per_class + " --json");
    INFO(r.output);
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output, Catch::Contains(refusal));
  }
}

TEST_CASE("deit eval --split takes a split inside --data and refuses a path out of it",
          "[train][cli]") {
  // --data DATA/train --split ../val read DATA/val: a split outside the root --data names.
  test::TempDir dir;
  const std::string data = write_dataset(dir);
  const std::string weights = dir.file("weights.safetensors");
  model::save_weights(weights, test::tiny_cli_model(kClasses, 8, 5), {});
  const std::string eval = "eval --weights " + weights + " --json ";
  for (const std::string& split : {std::string("../val"), data + "/val", std::string(".")}) {
    const test::CliResult r = run_deit(eval + "--data " + data + "/train --split " + split);
    INFO(r.output);
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output, Catch::Contains("--split: '" + split + "' is not a split inside --data") &&
                             Catch::Contains("--split val"));
  }
  // A relative path that stays inside is a split's.
  const test::CliResult inside = run_deit(eval + "--data " + data + " --split train/../val");
  INFO(inside.output);
  CHECK(inside.exit_code == 0);
}

TEST_CASE("deit eval's loss is the mean cross-entropy of the softmax over every output",
          "[train][cli]") {
  // Class 0 scores 2 and the other five 0 for every image: class 0 is every image's top-1, and
  // classes 0 to 4 its top 5 (ties in class order). The loss is exact: -log softmax(label), so
  // log(e^2 + 5) - 2 for the 2 images of class 0 and log(e^2 + 5) for the other 10. A loss that
  // left out the largest logit it subtracts for stability, or averaged otherwise, is off by far.
  test::TempDir dir;
  const std::string data = write_dataset(dir);
  const nlohmann::json j = eval_with_flat_head(dir, data, 0, 2.f);
  const double images = kClasses * kImagesPerClass;
  REQUIRE(j["images"] == images);
  const double log_sum = std::log(std::exp(2.0) + (kClasses - 1));
  CHECK(j["loss"].get<double>() == Approx(log_sum - 2.0 * kImagesPerClass / images).epsilon(1e-5));
  CHECK(j["acc1"].get<double>() == Approx(100.0 / kClasses));
  CHECK(j["acc5"].get<double>() == Approx(500.0 / kClasses));
  for (const auto& row : j["per_class"]) {
    INFO(row.dump());
    const bool first = row["class"] == data::synthetic_class_names()[0];
    CHECK(row["images"] == kImagesPerClass);
    CHECK(row["acc1"].get<double>() == (first ? 100 : 0));
    if (!first) {
      CHECK(row["most_confused_with"] == data::synthetic_class_names()[0]);
      CHECK(row["most_confused_images"] == kImagesPerClass);
    }
  }
}

TEST_CASE("an evaluation's loss stays finite when every logit is far below zero", "[train][cli]") {
  // The scores of the loss test less 1000: the softmax, and so the loss, is the same. exp(-998)
  // is 0 in a double: the largest logit must be subtracted, not 0 or any fixed value.
  test::TempDir dir;
  const std::string data = write_dataset(dir);
  const nlohmann::json j = eval_with_flat_head(dir, data, 0, -998.f, kClasses, -1000.f);
  const double images = kClasses * kImagesPerClass;
  const double log_sum = std::log(std::exp(2.0) + (kClasses - 1));
  CHECK(j["loss"].get<double>() == Approx(log_sum - 2.0 * kImagesPerClass / images).epsilon(1e-5));
  CHECK(j["acc1"].get<double>() == Approx(100.0 / kClasses));
}

namespace {

// Rank 0 of two whose peer scored exactly what it did: every sum is twice this rank's count.
class MirroredPeer final : public Communicator {
 public:
  MirroredPeer() : Communicator(Device::cpu(), 0, 2, 0) {}
  const char* backend() const override { return "mirrored"; }
  void barrier() override {}

 protected:
  void all_reduce_flat(const Tensor& flat, ReduceOp op) override {
    REQUIRE(op == ReduceOp::sum);
    REQUIRE(flat.dtype() == DType::f64);
    for (int64_t i = 0; i < flat.numel(); ++i) flat.data<double>()[i] *= 2;
  }
  void broadcast_flat(const Tensor&, int) override { FAIL("broadcast"); }
  void reduce_scatter_flat(const Tensor&, const std::vector<int64_t>&, ReduceOp) override {
    FAIL("reduce_scatter");
  }
  void all_gather_flat(const Tensor&, const std::vector<int64_t>&) override { FAIL("all_gather"); }
};

}  // namespace

TEST_CASE("evaluate sums its counts over the ranks, the confusion matrix and the skipped too",
          "[train]") {
  // Each rank scores its share of the split: the images, the unusable files and every cell of
  // --per-class's matrix are the whole split's only once summed; the rates are the same.
  test::TempDir dir;
  const std::string data = write_dataset(dir);
  test::write_bytes(data + "/val/" + data::synthetic_class_names()[0] + "/zz_broken.png",
                    std::vector<uint8_t>(64, 7));
  const model::VisionTransformer vit = test::tiny_cli_model(kClasses, 8, 5);
  const std::shared_ptr<const data::ImageSource> val(data::open_dataset_split(data, "val", false));
  const auto loader = train::make_eval_loader(val, 8, 1.0, 4, 1);
  const train::EvalResult alone = train::evaluate(vit, *loader, false, nullptr, true);
  REQUIRE(alone.images == kClasses * kImagesPerClass);
  REQUIRE(alone.skipped == 1);
  MirroredPeer peer;
  const train::EvalResult both = train::evaluate(vit, *loader, false, &peer, true);
  CHECK(both.images == 2 * alone.images);
  CHECK(both.skipped == 2 * alone.skipped);
  CHECK(both.acc1 == Approx(alone.acc1));
  CHECK(both.acc5 == Approx(alone.acc5));
  CHECK(both.loss == Approx(alone.loss));
  REQUIRE(both.confusion.size() == alone.confusion.size());
  for (size_t i = 0; i < both.confusion.size(); ++i) {
    INFO(i);
    CHECK(both.confusion[i] == 2 * alone.confusion[i]);
  }
}

TEST_CASE("per_class_json names the most confused class, the lower on a tie, within the outputs",
          "[train]") {
  // As the top-1 breaks a tie between scores, a tie between the classes an image is mistaken for
  // goes to the lower class: the same table from the same matrix on every run.
  train::EvalResult result;
  result.outputs = 3;
  result.confusion = {1, 2, 2,  // class a: 2 each as b and c
                      0, 3, 0,  // class b: never mistaken
                      1, 0, 4};
  const nlohmann::json rows = result.per_class_json({"a", "b", "c"});
  REQUIRE(rows.size() == 3);
  CHECK(rows[0]["most_confused_with"] == "b");
  CHECK(rows[0]["most_confused_images"] == 2);
  CHECK(rows[1]["most_confused_with"] == nullptr);
  CHECK(rows[2]["most_confused_with"] == "a");
  // More classes than outputs: rows past the matrix's, which is a caller's mistake.
  CHECK_THROWS_AS(result.per_class_json({"a", "b", "c", "d"}), std::logic_error);
}
