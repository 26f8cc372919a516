// deit augment: look at what the augmentation does.
//   deit augment --in IMG --out OUT.png --op OP[:ARG] [--op ...] [--seed S]
//     applies named ops in order (data/transforms.h, apply_named_op), e.g. to compare one op with
//     Pillow by eye or to reproduce a single step of the pipeline;
//   deit augment --data DIR --grid OUT.png [--n 64] [--seed S] [--input-size N] [--src] [--aa SPEC]
//     tiles random training views of DIR's training split, before normalisation, as the trainer
//     draws them (with --aa, as a fine-tune with that RandAugment spec does): the first thing to
//     look at when accuracy is off.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "apps/cli_checks.h"
#include "apps/commands.h"
#include "data/augment_params.h"
#include "data/image.h"
#include "data/image_source.h"
#include "data/made_folder.h"
#include "data/sampler.h"
#include "data/transforms.h"
#include "engine/rng.h"

namespace deit::apps {

namespace {

struct AugmentCommandOptions {
  std::string in;
  std::string out;
  std::vector<std::string> ops;
  std::string data;
  std::string grid;
  int n = 64;
  uint64_t seed = 0;
  int input_size = 224;
  bool src = false;
  std::string aa = "none";
};

// An output named *.png that is a PNG already, or nothing yet. The file a link points to is
// replaced (data/image.h write_png): a link named *.png to a checkpoint, or a JPEG named *.png,
// would be lost.
void require_png(const char* flag, const std::string& path) {
  if (!ends_with_ignoring_case(path, ".png"))
    throw std::invalid_argument(std::string(flag) + " " + path +
                                ": the output is written as PNG; name it *.png");
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return;  // new, or a folder write_png refuses
  constexpr char kSignature[8] = {'\x89', 'P', 'N', 'G', '\r', '\n', '\x1a', '\n'};
  char start[sizeof kSignature] = {};
  std::ifstream(path, std::ios::binary).read(start, sizeof start);
  if (!std::equal(start, start + sizeof start, kSignature))
    throw std::invalid_argument(std::string(flag) + " " + path +
                                ": exists and is not a PNG file; choose another file name");
}

// The error of op `i` of `ops`, which says which of them it is.
std::invalid_argument op_error(const std::vector<std::string>& ops, size_t i,
                               const std::invalid_argument& e) {
  return std::invalid_argument("--op '" + ops[i] + "' (op " + std::to_string(i + 1) + " of " +
                               std::to_string(ops.size()) + "): " + e.what());
}

void run_ops(const AugmentCommandOptions& options) {
  if (options.in.empty() || options.out.empty() || options.ops.empty())
    throw std::invalid_argument(
        "augment: give --in IMG --out OUT.png and at least one --op, or --data DIR --grid "
        "OUT.png; the ops are:\n" +
        data::named_op_usage());
  require_png("--out", options.out);
  std::error_code ec;
  if (std::filesystem::equivalent(options.in, options.out, ec))
    throw std::invalid_argument("--out '" + options.out +
                                "' is the input image itself; choose another file name");
  // Each op's name and numbers before the image is decoded, which a large image or a pipe makes
  // slow: what is wrong with the command line is said at once.
  for (size_t i = 0; i < options.ops.size(); ++i) {
    try {
      data::check_named_op(options.ops[i]);
    } catch (const std::invalid_argument& e) {
      throw op_error(options.ops, i, e);
    }
  }
  data::ImageU8 image = data::decode_image_file_or_pipe(options.in);
  Rng rng(options.seed);
  for (size_t i = 0; i < options.ops.size(); ++i) {
    try {
      image = data::apply_named_op(image, options.ops[i], rng);
    } catch (const std::invalid_argument& e) {
      throw op_error(options.ops, i, e);
    }
  }
  const data::MadeFolder out_folder(std::filesystem::path(options.out).parent_path().string());
  data::write_png(options.out, image);
  std::printf("wrote %s (%d x %d)\n", options.out.c_str(), image.width, image.height);
}

// The training views of epoch 0, 1, ... of a shuffled single-rank sampler, each augmented with the
// stream the prefetch pipeline gives that sample (data/sampler.h sample_stream).
void run_grid(const AugmentCommandOptions& options) {
  require_png("--grid", options.grid);
  // A grid written into a split would be read as one of its images from then on.
  if (const char* split = data::split_holding(options.grid, options.data))
    throw std::invalid_argument("--grid '" + options.grid + "' lies inside the " + split +
                                " split of '" + options.data + "', where it would be read " +
                                "as an image: write it elsewhere");
  const int size = options.input_size;
  constexpr int kGap = 2;
  const int columns = static_cast<int>(std::ceil(std::sqrt(static_cast<double>(options.n))));
  const int rows = (options.n + columns - 1) / columns;
  data::ImageU8 grid{rows * (size + kGap) - kGap, columns * (size + kGap) - kGap, {}};
  // Before a view is made: the grid's size is known already.
  if (!data::within_image_limits(grid.width, grid.height))
    throw std::invalid_argument("--n " + std::to_string(options.n) + " views of --input-size " +
                                std::to_string(size) + " make a " + std::to_string(grid.width) +
                                "x" + std::to_string(grid.height) + " grid, larger than an image " +
                                "deit writes (" + data::image_limits_text() +
                                "): give a smaller --n or --input-size");
  data::AugmentConfig config;
  config.input_size = options.input_size;
  config.crop = options.src ? data::CropMode::kSimpleRandom : data::CropMode::kRandomResized;
  try {
    data::use_rand_augment(config, options.aa);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument("--aa: " + std::string(e.what()));
  }
  // Once the flags are known to be right: an image folder's scan takes minutes for ImageNet.
  const std::unique_ptr<data::ImageSource> source = data::open_dataset_split(options.data, "train");
  data::SamplerOptions sampler_options;
  sampler_options.dataset_size = source->size();
  sampler_options.seed = options.seed;
  const data::Sampler sampler(sampler_options);

  grid.pixels.assign(static_cast<size_t>(grid.height) * grid.width * 3, 32);  // dark grey gaps

  int tiles = 0;
  data::SkippedImages skipped;  // each unusable file warned about and counted once
  size_t unusable_picks = 0;    // picks that met one: too many end the grid
  for (uint64_t epoch = 0; tiles < options.n; ++epoch) {
    for (const data::SamplePick& pick : sampler.epoch_picks(epoch)) {
      if (tiles == options.n) break;
      data::ImageU8 image;
      try {
        image = source->load(pick.index);
      } catch (const data::DataError& e) {
        skipped.record(source->describe(pick.index), e.what());  // the message names the file
        if (++unusable_picks > 16 + 2 * static_cast<size_t>(options.n))
          throw data::DataError(skipped.count() == source->size()
                                    ? "augment: none of the " + std::to_string(source->size()) +
                                          " images of " + options.data +
                                          "'s train split could be read"
                                    : "augment: too many unusable images in " + options.data);
        continue;
      }
      Rng rng(options.seed, data::sample_stream(epoch, pick.global_position));
      const data::AugmentParams params =
          data::sample_augment_params(config, image.height, image.width, rng);
      const data::ImageU8 view = data::augment_train(image, params);
      const int top = tiles / columns * (size + kGap);
      const int left = tiles % columns * (size + kGap);
      for (int y = 0; y < size; ++y)
        std::copy_n(view.at(y, 0), static_cast<size_t>(size) * 3, grid.at(top + y, left));
      ++tiles;
    }
  }
  const data::MadeFolder grid_folder(std::filesystem::path(options.grid).parent_path().string());
  data::write_png(options.grid, grid);
  std::printf(
      "wrote %s: %d training view%s (%d x %d tiles of %d px, %s, %s, seed %llu) from %zu images "
      "of %s",
      options.grid.c_str(), tiles, tiles == 1 ? "" : "s", columns, rows, size,
      options.src ? "simple random crop" : "random resized crop",
      config.rand_augment ? ("RandAugment " + options.aa).c_str() : "3-Augment, colour jitter",
      static_cast<unsigned long long>(options.seed), source->size(), options.data.c_str());
  if (skipped.count() > 0) std::printf("; skipped %zu unusable image(s)", skipped.count());
  std::printf("\n");
}

}  // namespace

void add_augment_command(CLI::App& app) {
  auto options = std::make_shared<AugmentCommandOptions>();
  CLI::App* command = app.add_subcommand(
      "augment", "Apply augmentation ops to one image, or tile random training views of a dataset");
  command->footer(
      "Ops (applied in the order given):\n" + data::named_op_usage() +
      "\nrrc and src are the recipe's random crops (RandomResizedCrop, Simple Random Crop), "
      "drawn from --seed.\n"
      "autocontrast to translate-y are RandAugment's ops with their argument given (timm's, as "
      "Pillow\ncomputes them): rotate turns counterclockwise about the centre; translate-x:P "
      "moves the image P pixels\nleft (the affine data (1, 0, P, 0, 1, 0) timm passes Pillow), "
      "translate-y:P up; uncovered pixels take\nthe fill colour, the ImageNet mean "
      "(124, 116, 104).\n");
  CLI::Option* in =
      command->add_option("--in", options->in, "Image to transform (- reads standard input)");
  command->add_option("--out", options->out, "Where to write the result (PNG)")->needs(in);
  command->add_option("--op", options->ops, "An op NAME or NAME:ARGS; repeat to chain")->needs(in);
  CLI::Option* data =
      command->add_option("--data", options->data, "Dataset root (DIR/train, or DIR/train.shard)")
          ->excludes(in);
  command->add_option("--grid", options->grid, "Where to write the tiled views (PNG)")->needs(data);
  command->add_option("--n", options->n, "Number of views in the grid")
      ->default_val(64)
      ->check(CLI::Range(1, 1024))
      ->needs(data);
  command->add_option("--seed", options->seed, "Seed of the random ops and views")->default_val(0);
  command->add_option("--input-size", options->input_size, "Training crop size of the grid's views")
      ->default_val(224)
      ->check(CLI::Range(8, 1024))
      ->needs(data);
  command
      ->add_flag("--src", options->src,
                 "Grid views with Simple Random Crop instead of RandomResizedCrop")
      ->needs(data);
  command
      ->add_option("--aa", options->aa,
                   "Grid views with RandAugment (timm's spec, as deit train --aa) in place of "
                   "3-Augment and colour jitter")
      ->type_name("SPEC")
      ->default_val("none")
      ->needs(data);
  command->callback([options] {
    if (!options->data.empty()) {
      if (options->grid.empty())
        throw std::invalid_argument("augment: --data needs --grid OUT.png");
      run_grid(*options);
    } else {
      run_ops(*options);
    }
  });
}

}  // namespace deit::apps
