// A file written whole or not at all: to a temporary file beside its target (TARGET.tmp.PID),
// renamed over the target once complete, so a full disk or a killed process never leaves a
// truncated file under the target's name, nor destroys the file it replaces. Checkpoints and
// weights files (model/safetensors.cpp), PNGs (data/image_io.cpp) and shards (data/shard.cpp,
// as TARGET.partial.PID) are written so.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>

namespace deit::data {

class PendingFile {
 public:
  // Failures throw std::runtime_error "cannot write 'TARGET': ...". `kind` names the temporary
  // file: TARGET.KIND.PID (temp_path).
  explicit PendingFile(const std::string& target, const std::string& kind = "tmp");
  ~PendingFile();  // removes the temporary file unless commit() renamed it
  PendingFile(const PendingFile&) = delete;
  PendingFile& operator=(const PendingFile&) = delete;

  void open();
  void write(const void* data, size_t bytes);
  // Writes `bytes` over what the file holds from `offset`, then goes back to its end.
  void write_at(uint64_t offset, const void* data, size_t bytes);
  // Renames the file over the target. `durable`: synced to disk first, and the rename too (a
  // checkpoint must survive a crash right after it); not for the thousands of images a dataset's
  // generation writes, which would each wait for the disk.
  void commit(bool durable = true);

  // The temporary file's name: a name of this process's own (PID), so that two writers of one
  // target never write into one file.
  static std::string temp_path(const std::string& target, const std::string& kind = "tmp");

 private:
  [[noreturn]] void fail(const std::string& why) const;
  void sync_directory() const;

  std::string target_, temp_;
  std::FILE* file_ = nullptr;
  bool committed_ = false;
};

}  // namespace deit::data
