#include "data/pending_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <stdexcept>

#include "data/file_error.h"

namespace deit::data {

std::string PendingFile::temp_path(const std::string& target, const std::string& kind) {
  return target + "." + kind + "." + std::to_string(::getpid());
}

PendingFile::PendingFile(const std::string& target, const std::string& kind)
    : target_(target), temp_(temp_path(target, kind)) {}

PendingFile::~PendingFile() {
  if (file_) std::fclose(file_);
  if (!committed_) std::remove(temp_.c_str());
}

void PendingFile::open() {
  file_ = std::fopen(temp_.c_str(), "wb");
  if (!file_) fail("cannot create the temporary file '" + temp_ + "': " + errno_text());
}

void PendingFile::write(const void* data, size_t bytes) {
  if (bytes > 0 && std::fwrite(data, 1, bytes, file_) != bytes)
    fail("writing '" + temp_ + "' failed: " + errno_text());
}

void PendingFile::write_at(uint64_t offset, const void* data, size_t bytes) {
  if (::fseeko(file_, static_cast<off_t>(offset), SEEK_SET) != 0)
    fail("seeking in '" + temp_ + "' failed: " + errno_text());
  write(data, bytes);
  if (::fseeko(file_, 0, SEEK_END) != 0) fail("seeking in '" + temp_ + "' failed: " + errno_text());
}

void PendingFile::commit(bool durable) {
  std::FILE* f = file_;
  file_ = nullptr;
  // A full disk often shows only at the flush.
  if (std::fflush(f) != 0 || (durable && ::fsync(::fileno(f)) != 0)) {
    const std::string why = errno_text();
    std::fclose(f);
    fail("writing '" + temp_ + "' failed: " + why);
  }
  if (std::fclose(f) != 0) fail("closing '" + temp_ + "' failed: " + errno_text());
  if (std::rename(temp_.c_str(), target_.c_str()) != 0)
    fail("renaming '" + temp_ + "' to it failed: " + errno_text());
  committed_ = true;
  if (durable) sync_directory();
}

void PendingFile::fail(const std::string& why) const {
  throw std::runtime_error("cannot write '" + target_ + "': " + why);
}

// Makes the rename itself durable. Best effort: the data is already safe in the file, and some
// file systems cannot sync a directory.
void PendingFile::sync_directory() const {
  const size_t slash = target_.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : target_.substr(0, slash + 1);
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

}  // namespace deit::data
