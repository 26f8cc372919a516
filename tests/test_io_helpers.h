// Shared by the tests of the files deit writes: a way to make a file write fail part-way, as a
// full disk does.
#pragma once
#include <sys/resource.h>

#include <csignal>

namespace deit::test {

// While alive, this process cannot grow a file beyond `bytes` (RLIMIT_FSIZE): a write past it
// fails with EFBIG instead of raising SIGXFSZ, which is ignored meanwhile. Unlike a read-only
// directory, this also stops root, who runs the tests in containers.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    getrlimit(RLIMIT_FSIZE, &saved_);
    previous_handler_ = std::signal(SIGXFSZ, SIG_IGN);
    rlimit limit = saved_;
    limit.rlim_cur = bytes;
    setrlimit(RLIMIT_FSIZE, &limit);
  }
  ~FileSizeLimit() {
    setrlimit(RLIMIT_FSIZE, &saved_);
    std::signal(SIGXFSZ, previous_handler_);
  }
  FileSizeLimit(const FileSizeLimit&) = delete;
  FileSizeLimit& operator=(const FileSizeLimit&) = delete;

 private:
  rlimit saved_{};
  void (*previous_handler_)(int) = nullptr;
};

}  // namespace deit::test
