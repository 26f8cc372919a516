#include "train/output_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include "engine/errno_text.h"

namespace deit::train {

namespace {

// Who holds the lock, as its holder wrote it ("" before it has).
std::string holder_of(int fd) {
  char text[HOST_NAME_MAX + 64] = {};
  const ssize_t n = ::pread(fd, text, sizeof text - 1, 0);
  if (n <= 0) return "";  // the message goes without it
  const std::string holder(text, static_cast<size_t>(n));
  return holder.substr(0, holder.find('\n'));
}

// Writes "pid N on HOST" into the lock file for the message of a run it refuses. Also what shows
// that the run can write to its folder, before it computes anything it could not save.
void record_holder(int fd, const std::string& path) {
  std::string holder = "pid " + std::to_string(::getpid());
  char host[HOST_NAME_MAX + 1] = {};
  if (::gethostname(host, sizeof host - 1) == 0) holder += std::string(" on ") + host;
  holder += "\n";
  if (::ftruncate(fd, 0) != 0 ||
      ::pwrite(fd, holder.data(), holder.size(), 0) != static_cast<ssize_t>(holder.size()))
    throw std::runtime_error("cannot write the lock file '" + path + "': " + errno_text() +
                             ": give a folder this user can write to");
}

bool same_file(const struct stat& a, const struct stat& b) {
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

// Whether the open file is still the one at `path`: its holder removes it as it ends, perhaps
// between this process's open and its lock.
bool is_file_at(int fd, const std::string& path) {
  struct stat opened = {};
  struct stat named = {};
  if (::fstat(fd, &opened) != 0)
    throw std::runtime_error("cannot stat the lock file '" + path + "': " + errno_text());
  if (::stat(path.c_str(), &named) != 0) {
    if (errno == ENOENT) return false;
    throw std::runtime_error("cannot stat the lock file '" + path + "': " + errno_text());
  }
  return same_file(opened, named);
}

// Errors of a file system that has no locks, where the run goes on without one.
bool locks_unsupported(int error) {
  return error == ENOLCK || error == ENOSYS || error == EOPNOTSUPP;
}

}  // namespace

OutputLock::OutputLock(const std::string& dir, const std::string& option)
    : path_((std::filesystem::path(dir) / ".lock").string()), option_(option) {
  do {
    if (fd_ >= 0) ::close(fd_);  // a lock file its holder removed: lock the one there now
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0 && errno == ENOTDIR)
      throw std::runtime_error("'" + dir + "' is not a folder (a file of that name is in the " +
                               "way): give another " + option_ + ", or move the file");
    if (fd_ < 0)
      throw std::runtime_error("cannot create the lock file '" + path_ + "': " + errno_text() +
                               ": give an " + option_ + " this user can write to");
  } while (!take(dir));
}

OutputLock::~OutputLock() {
  // Removed while still held, so that no run can lock it in between and go on in a folder this run
  // still writes; only if it is still this run's (the folder may have been removed, or moved and
  // made again). A failure leaves a file that the next run locks as its own.
  struct stat opened = {};
  struct stat named = {};
  if (::fstat(fd_, &opened) == 0 && ::stat(path_.c_str(), &named) == 0 && same_file(opened, named))
    ::unlink(path_.c_str());
  ::close(fd_);
}

// Locks the open lock file of `dir`: false when it is no longer the folder's lock file.
bool OutputLock::take(const std::string& dir) {
  try {
    if (::flock(fd_, LOCK_EX | LOCK_NB) == 0) {
      if (!is_file_at(fd_, path_)) return false;
    } else if (errno == EWOULDBLOCK) {
      const std::string holder = holder_of(fd_);
      throw std::runtime_error("'" + dir + "' is in use by another deit process" +
                               (holder.empty() ? "" : " (" + holder + ")") +
                               ": wait for it to end, or give another " + option_);
    } else if (locks_unsupported(errno)) {
      std::fprintf(stderr,
                   "warning: cannot lock '%s' (%s): a second deit train into '%s' at the same "
                   "time would not be refused\n",
                   path_.c_str(), errno_text().c_str(), dir.c_str());
    } else {
      throw std::runtime_error("cannot lock '" + path_ + "': " + errno_text());
    }
    record_holder(fd_, path_);
    return true;
  } catch (...) {
    ::close(fd_);
    throw;
  }
}

}  // namespace deit::train
