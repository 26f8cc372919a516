// Temporary files that a command removes itself when SIGINT (Ctrl-C) or SIGTERM (kill) ends it
// before it is done: deit pack's partial shard, deit bench data's shard and its folder. Without
// this, a stopped command leaves them behind (a shard is easily gigabytes). deit train needs none:
// it saves on a stop signal instead (train/stop_request.h).
#pragma once
#include <string>
#include <vector>

namespace deit::apps {

// While one lives, the first SIGINT or SIGTERM removes `paths` in order (each as a file, else as
// an empty folder), then ends the process as that signal would have. Removing them on the normal
// way out is the owner's job. One at a time; a signal ignored when it is made stays ignored.
class RemovedOnInterrupt {
 public:
  explicit RemovedOnInterrupt(const std::vector<std::string>& paths);
  ~RemovedOnInterrupt();  // restores the handlers there were
  RemovedOnInterrupt(const RemovedOnInterrupt&) = delete;
  RemovedOnInterrupt& operator=(const RemovedOnInterrupt&) = delete;
};

}  // namespace deit::apps
