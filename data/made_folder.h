// A command's output folder, made where missing: deit train's --output, deit demo's --out, the
// folder of deit pack's and deit export's --out.
#pragma once
#include <filesystem>
#include <string>
#include <vector>

namespace deit::data {

// Throws std::runtime_error, as MadeFolder would, when a file stands where `dir` or one of its
// parents must be a folder: for a command that only checks its settings (deit train --dry-run).
void refuse_file_in_the_way(const std::string& dir);

// Makes a folder with the parents it lacks. Destroyed by an exception (a bad --finetune source, a
// dataset with no usable image, a write that failed), it removes again what it made, where still
// empty, so that a command that failed leaves no folder behind that it invented.
class MadeFolder {
 public:
  // Makes `dir` ("": the current folder, nothing to make). Throws std::runtime_error naming `dir`
  // and the reason when it cannot (a file in the way, no permission).
  explicit MadeFolder(const std::string& dir);
  ~MadeFolder();
  MadeFolder(const MadeFolder&) = delete;
  // The folders it made, innermost first (none when `dir` was there): what a command stopped by a
  // signal removes, where still empty (apps/removed_on_interrupt.h), as no destructor runs then.
  std::vector<std::string> made() const;
  MadeFolder& operator=(const MadeFolder&) = delete;

 private:
  std::filesystem::path dir_, outermost_;  // outermost_: "" when the folder was there
  int exceptions_;
};

}  // namespace deit::data
