#include "train/output_folder.h"

#include <filesystem>
#include <stdexcept>

#include "data/image_source.h"

namespace deit::train {

namespace {

namespace fs = std::filesystem;

// What a save cut short left (a second stop signal, a killed run): checkpoint.safetensors.tmp.PID.
// Only under the folder's lock, which keeps out a live run's save.
void remove_unfinished_saves(const std::string& dir) {
  std::error_code ec;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, ec))
    if (entry.path().filename().string().rfind("checkpoint.safetensors.tmp.", 0) == 0)
      fs::remove(entry.path(), ec);
}

}  // namespace

void refuse_other_run(const std::string& dir, bool resuming_its_checkpoint) {
  if (resuming_its_checkpoint) return;
  std::error_code ec;
  const fs::path checkpoint = fs::path(dir) / "checkpoint.safetensors";
  if (fs::exists(checkpoint, ec))
    throw std::runtime_error("'" + dir + "' already holds a run (checkpoint.safetensors): " +
                             "continue it with --resume " + checkpoint.string() +
                             ", or give another --output");
  if (fs::exists(fs::path(dir) / "log.txt", ec))
    throw std::runtime_error("'" + dir + "' holds the log of a run but no checkpoint " +
                             "(log.txt): give another --output, or remove log.txt to use it");
}

bool resumes_its_checkpoint(const TrainOptions& o) {
  std::error_code ec;
  return !o.resume.empty() &&
         fs::equivalent(o.resume, fs::path(o.output_dir) / "checkpoint.safetensors", ec);
}

void refuse_output_in_splits(const TrainOptions& o) {
  if (const char* split = data::split_holding(o.output_dir, o.data_dir))
    throw std::invalid_argument("--output '" + o.output_dir + "' lies inside the " + split +
                                " split of '" + o.data_dir + "', where its files would be read " +
                                "as images: give a folder outside it");
}

OutputFolder::OutputFolder(const std::string& dir, bool resuming_its_checkpoint)
    : made_(dir), lock_(dir, "--output") {
  // Under the lock: a run that is writing the folder is refused as in use, not as finished.
  refuse_other_run(dir, resuming_its_checkpoint);
  remove_unfinished_saves(dir);
}

}  // namespace deit::train
