// deit pack: an image folder -> one packed shard file (data/shard.h) that trains without decoding.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>

#include "apps/commands.h"
#include "apps/removed_on_interrupt.h"
#include "data/made_folder.h"
#include "data/pack.h"
#include "data/prefetch.h"
#include "data/shard.h"

namespace deit::apps {

namespace {

struct PackCommandOptions {
  std::string src;
  std::string out;
  data::PackOptions pack;
};

// On a terminal one line rewritten in place; otherwise a line per 10% for logs.
class PackProgressLine {
 public:
  PackProgressLine() : interactive_(isatty(fileno(stderr))), start_(Clock::now()) {}

  void update(uint64_t done, uint64_t total) {
    const int percent = total ? static_cast<int>(100 * done / total) : 100;
    if (!interactive_ && percent < next_logged_percent_ && done < total) return;
    next_logged_percent_ = percent / 10 * 10 + 10;
    const double seconds = std::chrono::duration<double>(Clock::now() - start_).count();
    std::fprintf(stderr, "%spacking: %llu/%llu images (%d%%), %.0f images/s%s",
                 interactive_ ? "\r" : "", static_cast<unsigned long long>(done),
                 static_cast<unsigned long long>(total), percent,
                 seconds > 0 ? done / seconds : 0.0, interactive_ ? "" : "\n");
    if (interactive_ && done == total) std::fprintf(stderr, "\n");
  }

 private:
  using Clock = std::chrono::steady_clock;
  bool interactive_;
  Clock::time_point start_;
  int next_logged_percent_ = 0;
};

// Partial shards of `out` that other packs left: a pack killed by SIGKILL, or one still running
// (each process writes its own, so this pack does not touch them).
void note_other_partial_shards(const std::string& out) {
  const std::filesystem::path path(out);
  const std::filesystem::path folder = path.parent_path().empty() ? "." : path.parent_path();
  const std::string prefix = path.filename().string() + ".partial.";
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(folder, error)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(prefix, 0) == 0)
      std::fprintf(stderr,
                   "note: %s is the partial shard of another pack of %s, killed or still "
                   "running: delete it once no such pack runs\n",
                   entry.path().c_str(), out.c_str());
  }
}

// A dataset root given where a split belongs: its class folders are the splits (train/, val/,
// maybe test/), and packing it would spend the whole pass making a shard of 2 or 3 "classes".
// Refused before anything is read; a root that also has other folders is only warned about, as
// those could be classes of that name.
void check_not_a_dataset_root(const std::filesystem::path& src) {
  std::error_code error;
  if (!std::filesystem::is_directory(src / "train", error) ||
      !std::filesystem::is_directory(src / "val", error))
    return;
  bool only_splits = true;
  for (const auto& entry : std::filesystem::directory_iterator(src, error)) {
    const std::string name = entry.path().filename().string();
    std::error_code entry_error;
    if (name.rfind('.', 0) == 0 || !entry.is_directory(entry_error)) continue;
    if (name != "train" && name != "val" && name != "test") only_splits = false;
  }
  const std::string advice = "a dataset packs a split at a time: --src " +
                             (src / "train").string() + " --out " + (src / "train.shard").string() +
                             ", then the same for val";
  if (only_splits)
    throw std::runtime_error("'" + src.string() +
                             "' is a dataset's root (its folders are the splits train/ and val/), "
                             "not a split: " +
                             advice);
  std::fprintf(stderr,
               "warning: '%s' holds train/ and val/, which become 2 of the shard's classes; %s\n",
               src.c_str(), advice.c_str());
}

void run_pack(const PackCommandOptions& options) {
  check_not_a_dataset_root(options.src);
  note_other_partial_shards(options.out);
  // Stopped, the pack leaves nothing: its shard is written whole or not at all, and the folders
  // made for it are removed again.
  const data::MadeFolder out_folder(std::filesystem::path(options.out).parent_path().string());
  std::vector<std::string> removed = {data::ShardWriter::partial_path(options.out)};
  for (const std::string& folder : out_folder.made()) removed.push_back(folder);
  const RemovedOnInterrupt interrupted(removed);
  PackProgressLine progress;
  const data::PackSummary summary = data::pack_image_folder(
      options.src, options.out, options.pack,
      [&progress](uint64_t done, uint64_t total) { progress.update(done, total); });
  std::printf("wrote %s: %llu images, %.1f MiB", options.out.c_str(),
              static_cast<unsigned long long>(summary.images), summary.bytes / (1024.0 * 1024.0));
  if (summary.skipped > 0) {
    std::printf("; skipped %llu unusable file(s) (see the warnings above)",
                static_cast<unsigned long long>(summary.skipped));
  }
  std::printf("\n");
}

}  // namespace

void add_pack_command(CLI::App& app) {
  auto options = std::make_shared<PackCommandOptions>();
  CLI::App* command = app.add_subcommand(
      "pack", "Pack an image folder (SRC/<class>/<images>) into one shard file of resized pixels");
  command->add_option("--src", options->src, "Image folder: one subfolder per class")->required();
  command
      ->add_option("--out", options->out,
                   "Shard file to write (written whole, or not at all; its folder is created if "
                   "missing)")
      ->required();
  command
      ->add_option("--short-side", options->pack.short_side,
                   "Shrink images so their shorter side is N pixels (0: keep sizes, as the "
                   "reference, which crops from the original files)")
      ->default_val(256)
      ->check(CLI::Range(0, 65536));
  command->add_option("--threads", options->pack.threads, "Decoding threads (0: all cores)")
      ->default_val(0)
      ->check(CLI::Range(0, data::kMaxWorkers));
  command->callback([options] { run_pack(*options); });
}

}  // namespace deit::apps
