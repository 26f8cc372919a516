// The lock that keeps two runs out of one output folder. Rank 0 of a run holds it from before it
// touches the folder (before it cleans up what an interrupted save left) until the run ends, so a
// second deit train or --resume into the folder is refused at once instead of interleaving its log
// lines and checkpoints with the first's, or deleting the first's half-written checkpoint.
#pragma once
#include <string>

namespace deit::train {

// An exclusive flock(2) on DIR/.lock, which holds "pid N on HOST" for the refusal's message. The
// kernel drops it when its process ends, however it ends, so a killed run never blocks its resume.
// A file rather than the folder's own descriptor: a folder opens read-only, and NFS (where clusters
// keep their runs) emulates flock with POSIX locks, which refuse an exclusive lock on a read-only
// descriptor.
class OutputLock {
 public:
  // Locks the existing folder `dir`, or throws saying which process holds it and to give another
  // `option` (the command's option that named `dir`). On a file system without locks (Lustre
  // mounted without -o flock) it warns, and holds nothing.
  OutputLock(const std::string& dir, const std::string& option);
  // Removes the lock file, then releases the lock: a run's folder ends up with its checkpoint and
  // log alone. Only a crashed run leaves the file, which the next run locks as its own.
  ~OutputLock();
  OutputLock(const OutputLock&) = delete;
  OutputLock& operator=(const OutputLock&) = delete;

 private:
  bool take(const std::string& dir);

  std::string path_, option_;
  int fd_ = -1;
};

}  // namespace deit::train
