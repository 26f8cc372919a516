// `deit export` as a user runs it: a checkpoint becomes a weights file with the model's tensors
// only, under timm's names; bad input gets a clear message, a non-zero exit, and never costs the
// checkpoint.
#include <catch2/catch.hpp>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/synthetic.h"
#include "engine/rng.h"
#include "model/checkpoint.h"
#include "tests/cli_runner.h"
#include "tests/test_data_helpers.h"
#include "tests/test_model_helpers.h"

using namespace deit;
using namespace deit::model;
using deit::test::run_deit;
using deit::test::TempDir;
using Catch::Contains;

namespace {

VisionTransformer tiny_model() {
  ViTConfig c;
  c.name = "tiny";
  c.patch = 4;
  c.dim = 32;
  c.depth = 2;
  c.heads = 4;
  c.num_classes = 10;
  c.input_size = 16;
  VisionTransformer vit(c);
  Rng rng(11);
  vit.initialize(rng);
  return vit;
}

// 4 classes of 16 x 16 images: one to train on and `val_per_class` to evaluate on, each.
std::string four_class_dataset(const TempDir& dir, int val_per_class) {
  data::SyntheticOptions options;
  options.image_size = 16;
  options.num_classes = 4;
  options.train_per_class = 1;
  options.val_per_class = val_per_class;
  return deit::test::write_synthetic_dataset(dir, options);
}

}  // namespace

TEST_CASE("deit export writes the model's tensors under timm's names", "[io][cli]") {
  TempDir dir;
  const VisionTransformer vit = tiny_model();
  const std::string checkpoint = dir.file("checkpoint.safetensors");
  save_checkpoint(checkpoint, vit, {{"optimizer.exp_avg.head.bias", Tensor::zeros({10})}},
                  {{"epoch", 3}});
  const std::string out = dir.file("exported.safetensors");

  const auto r = run_deit("export --checkpoint " + checkpoint + " --out " + out);
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Contains("wrote " + out));
  const auto contents = read_safetensors(out);
  REQUIRE(contents.tensors.size() == vit.parameters().size());
  for (const Parameter& p : vit.parameters().all()) {
    INFO(p.name);
    const Tensor* t = find_tensor(contents.tensors, p.name);
    REQUIRE(t != nullptr);
    REQUIRE(t->shape() == p.value.shape());
    CHECK(std::memcmp(t->raw_data(), p.value.raw_data(), p.value.nbytes()) == 0);
  }
  // An earlier export is replaced.
  CHECK(run_deit("export --checkpoint " + checkpoint + " --out " + out).exit_code == 0);
  // A folder of --out that is missing is made.
  const std::string deeper = dir.file("exports/tiny/weights.safetensors");
  CHECK(run_deit("export --checkpoint " + checkpoint + " --out " + deeper).exit_code == 0);
  CHECK(read_safetensors(deeper).tensors.size() == vit.parameters().size());
  // Any name that ends in .safetensors, in either case, as deit augment takes *.PNG: the name
  // .safetensors too, which "has no extension" to std::filesystem and was refused for not ending
  // in .safetensors.
  for (const std::string name : {"upper.SafeTensors", "hidden/.safetensors"}) {
    INFO(name);
    const auto written = run_deit("export --checkpoint " + checkpoint + " --out " + dir.file(name));
    CHECK(written.exit_code == 0);
    CHECK(read_safetensors(dir.file(name)).tensors.size() == vit.parameters().size());
  }
}

TEST_CASE("deit export rejects bad input with a clear message and a non-zero exit", "[io][cli]") {
  TempDir dir;
  const std::string checkpoint = dir.file("checkpoint.safetensors");
  save_checkpoint(checkpoint, tiny_model(), {}, {{"epoch", 3}});
  const std::vector<uint8_t> good = deit::test::read_bytes(checkpoint);
  const std::string out = dir.file("out.safetensors");

  auto r = run_deit("export --out " + out);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Contains("--checkpoint"));

  const std::string missing = dir.path() + "/no_such.safetensors";
  r = run_deit("export --checkpoint " + missing + " --out " + out);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Contains("cannot read '" + missing + "'") && Contains("No such file"));

  const std::string garbage = dir.file("garbage.safetensors");
  deit::test::write_bytes(garbage, {'n', 'o', 't', ' ', 'a', ' ', 'c', 'h', 'e', 'c', 'k'});
  r = run_deit("export --checkpoint " + garbage + " --out " + out);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Contains("'" + garbage + "' is not a valid safetensors file"));

  const std::string weights = dir.file("weights.safetensors");
  save_weights(weights, tiny_model());
  r = run_deit("export --checkpoint " + weights + " --out " + out);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Contains("'" + weights + "': not a deit checkpoint"));

  const std::string under_a_file = checkpoint + "/out.safetensors";  // its folder cannot be made
  r = run_deit("export --checkpoint " + checkpoint + " --out " + under_a_file);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Contains("cannot create the folder '" + checkpoint + "': '" + checkpoint +
                                "' is a file, not a folder"));

  // Over the checkpoint itself, or over another run's: refused.
  const std::string other_run = dir.file("other_run.safetensors");
  save_checkpoint(other_run, tiny_model(), {}, {{"epoch", 9}});
  const std::vector<uint8_t> other_good = deit::test::read_bytes(other_run);
  for (const std::string& target : {checkpoint, other_run}) {
    r = run_deit("export --checkpoint " + checkpoint + " --out " + target);
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.output, Contains("'" + target + "' is a training checkpoint"));
  }
  CHECK(deit::test::read_bytes(other_run) == other_good);
  // Over anything else but a weights file (a run's log, a dataset's shard): refused, untouched.
  const std::string log = dir.file("log.txt"), shard = dir.file("train.safetensors");
  deit::test::write_bytes(log, {'{', '}', '\n'});
  deit::test::write_bytes(shard, {'D', 'E', 'I', 'T', 0, 0, 0, 0, 1, 2, 3, 4});
  r = run_deit("export --checkpoint " + checkpoint + " --out " + log);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Contains("'" + log + "' does not end in .safetensors"));
  r = run_deit("export --checkpoint " + checkpoint + " --out " + shard);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Contains("'" + shard + "' exists and is not a safetensors file"));
  // A folder of that name: said so.
  const std::string folder = dir.file("exp/dir.safetensors");
  std::filesystem::create_directories(folder);
  r = run_deit("export --checkpoint " + checkpoint + " --out " + folder);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Contains("--out '" + folder + "' is a folder; give a file name"));
  CHECK(std::filesystem::is_empty(folder));
  // And whatever its name ends in.
  r = run_deit("export --checkpoint " + checkpoint + " --out " + dir.path() + "/exp");
  CHECK_THAT(r.output, Contains("--out '" + dir.path() + "/exp' is a folder"));
  CHECK(deit::test::read_bytes(log) == std::vector<uint8_t>{'{', '}', '\n'});
  CHECK(deit::test::read_bytes(shard).size() == 12);

  CHECK_FALSE(std::filesystem::exists(out));
  CHECK(deit::test::read_bytes(checkpoint) == good);
}

TEST_CASE("deit eval --weights takes the model a deit export names, and refuses another",
          "[io][cli]") {
  TempDir dir;
  const std::string data = four_class_dataset(dir, 4);
  const std::vector<std::string> classes(data::synthetic_class_names().begin(),
                                         data::synthetic_class_names().begin() + 4);
  const std::string weights = dir.file("w.safetensors");
  save_checkpoint(dir.file("run/checkpoint.safetensors"), deit::test::tiny_cli_model(4, 8, 3), {},
                  {{"epoch", 0}}, classes);
  const std::string run = dir.file("run");
  REQUIRE(run_deit("export --checkpoint " + run + " --out " + weights).exit_code == 0);

  // The file says its model: --model may be left out, and the scores are those of the checkpoint.
  auto r = run_deit("eval --checkpoint " + run + " --data " + data + " --json");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  const double checkpoint_loss = nlohmann::json::parse(r.output)["loss"];
  r = run_deit("eval --weights " + weights + " --data " + data + " --json");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK(nlohmann::json::parse(r.output)["loss"].get<double>() == checkpoint_loss);
  const std::string model = "--model deit3_tiny --patch 4 --dim 16 --depth 2 ";
  r = run_deit("eval " + model + "--heads 2 --weights " + weights + " --data " + data + " --json");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK(nlohmann::json::parse(r.output)["loss"].get<double>() == checkpoint_loss);
  // A wrong --heads fits every tensor's shape, but not the model the file names: refused.
  r = run_deit("eval " + model + "--heads 4 --weights " + weights + " --data " + data);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Contains("weights file '" + weights + "' is for deit3_tiny (custom) " +
                                "(heads 2) but the model is deit3_tiny (custom) (heads 4)"));
  r = run_deit("eval --heads 4 --weights " + weights + " --data " + data);  // without --model too
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Contains("(heads 2) but the model is deit3_tiny (custom) (heads 4)"));
  // With other sizes, a model whose name describes it (the demo's) is named after it, without the
  // description that no longer holds.
  model::ViTConfig described = deit::test::tiny_cli_model(4, 8, 3).config();
  described.name = "demo (deit3, patch 4, dim 16, depth 2, heads 2)";
  save_checkpoint(dir.file("demo/checkpoint.safetensors"), model::VisionTransformer(described), {},
                  {{"epoch", 0}}, classes);
  r = run_deit("eval --patch 2 --checkpoint " + dir.file("demo") + " --data " + data);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Contains("is for demo (deit3, patch 4, dim 16, depth 2, heads 2) (patch 4) "
                                "but the model is demo (custom) (patch 2)"));
  // A saved crop ratio that is no number is refused naming the checkpoint (an unnamed JSON type
  // error before).
  save_checkpoint(dir.file("wide/checkpoint.safetensors"), deit::test::tiny_cli_model(4, 8, 3), {},
                  {{"epoch", 0}, {"options", {{"eval_crop_ratio", "wide"}}}}, classes);
  r = run_deit("eval --checkpoint " + dir.file("wide") + " --data " + data);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Contains("checkpoint '" + dir.file("wide/checkpoint.safetensors") +
                                "': its saved option 'eval_crop_ratio' is \"wide\", not a value " +
                                "of that option"));
  r = run_deit("eval --model deit3_small --input-size 32 --weights " + weights + " --data " + data);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Contains("is for deit3_tiny (custom) (patch 4, dim 16, depth 2, heads 2, "
                                "mlp 64) but the model is deit3_small (patch 16, dim 384, "
                                "depth 12, heads 6, mlp 1536)"));
  // Without --input-size, the file's 8 px were taken for deit3_small's 16-pixel patches: refused
  // as "input size 8 is smaller than one 16-pixel patch", naming no field of the file's model.
  for (const std::string& file : {"--weights " + weights, "--checkpoint " + run}) {
    r = run_deit("eval --model deit3_small " + file + " --data " + data);
    INFO(r.output);
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.output, Contains("is for deit3_tiny (custom) (patch 4, dim 16, depth 2, heads 2, "
                                  "mlp 64) but the model is deit3_small (patch 16, dim 384, "
                                  "depth 12, heads 6, mlp 1536)"));
  }

  // A file that does not say (timm's, an older export of deit) needs --model, as before, and
  // cannot be checked beyond its shapes.
  const std::string bare = dir.file("bare.safetensors");
  write_safetensors(bare, read_safetensors(weights).tensors,
                    {{"format", "pt"}, {"deit_classes", nlohmann::json(classes).dump()}});
  r = run_deit("eval --weights " + bare + " --data " + data);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Contains("--model is required with --weights '" + bare + "'"));
  r = run_deit("eval " + model + "--heads 2 --weights " + bare + " --data " + data + " --json");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK(nlohmann::json::parse(r.output)["loss"].get<double>() == checkpoint_loss);

  // Its head says its classes: those, not the split's, unless --num-classes says otherwise.
  for (const int64_t head : {6, 3}) {
    const std::string timm = dir.file("timm" + std::to_string(head) + ".safetensors");
    write_safetensors(timm, deit::test::parameters_of(deit::test::tiny_cli_model(head, 8, 3)),
                      {{"format", "pt"}});
    r = run_deit("eval " + model + "--heads 2 --weights " + timm + " --data " + data + " --json");
    INFO(r.output);
    if (head == 6) {
      CHECK(r.exit_code == 0);
    } else {
      CHECK(r.exit_code != 0);
      CHECK_THAT(r.output, Contains("holds a model of 3 classes, fewer than the 4 classes"));
    }
    r = run_deit("eval " + model + "--heads 2 --num-classes 4 --weights " + timm + " --data " +
                 data);
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.output, Contains("is for a ViT (" + std::to_string(head) + " classes) but the " +
                                  "model is deit3_tiny (custom) (4 classes)"));
  }

  // A run folder given as --weights: pointed to --checkpoint.
  r = run_deit("eval --weights " + run + " --data " + data);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Contains("--weights '" + run + "' is a folder") &&
                           Contains("read with --checkpoint '" + run + "'"));

  // Progress on stderr unless --quiet, as for deit train; the scores either way.
  r = run_deit("eval --weights " + weights + " --data " + data);
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Contains("eval  1/1") && Contains("top-1"));
  r = run_deit("eval --quiet --weights " + weights + " --data " + data);
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, !Contains("eval  1/1") && Contains("top-1"));
}

TEST_CASE("deit eval --weights refuses a pos_embed of no position, naming the file", "[io][cli]") {
  TempDir dir;
  const std::string data = four_class_dataset(dir, 1);
  const VisionTransformer vit = deit::test::tiny_cli_model(4, 8, 3);
  NamedTensors tensors;
  for (const Parameter& p : vit.parameters().all())
    tensors.emplace_back(p.name, p.name == "pos_embed" ? Tensor::zeros({1, 0, 16}) : p.value);
  const std::string weights = dir.file("w.safetensors");
  write_safetensors(weights, tensors);

  // Its resolution is not taken from a grid of no patch (input size 0), and the embedding is not
  // resized from one (which read out of bounds).
  const std::string model = "eval --model deit3_tiny --patch 4 --dim 16 --depth 2 --heads 2 ";
  for (const std::string size : {"", "--input-size 8 "}) {
    INFO(size);
    const auto r = run_deit(model + size + "--weights " + weights + " --data " + data);
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output, Contains("weights file '" + weights + "': pos_embed") &&
                             Contains("is not a square patch grid"));
  }
}
