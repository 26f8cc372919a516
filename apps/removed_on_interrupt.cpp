#include "apps/removed_on_interrupt.h"

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <iterator>
#include <stdexcept>

namespace deit::apps {

namespace {

// The handler may call only async-signal-safe functions (unlink, rmdir, sigaction, raise), so the
// paths wait in fixed buffers.
constexpr size_t kMaxPaths = 4;
char g_paths[kMaxPaths][4096];
size_t g_path_count = 0;
bool g_in_use = false;  // the paths and g_previous have room for one owner
constexpr int kInterruptSignals[2] = {SIGINT, SIGTERM};
struct sigaction g_previous[std::size(kInterruptSignals)];

void restore_handlers() {
  for (size_t i = 0; i < std::size(kInterruptSignals); ++i)
    sigaction(kInterruptSignals[i], &g_previous[i], nullptr);
}

extern "C" void remove_and_reraise(int signal) {
  for (size_t i = 0; i < g_path_count; ++i)
    if (unlink(g_paths[i]) != 0) rmdir(g_paths[i]);
  restore_handlers();
  raise(signal);
}

}  // namespace

RemovedOnInterrupt::RemovedOnInterrupt(const std::vector<std::string>& paths) {
  if (g_in_use) throw std::logic_error("RemovedOnInterrupt: one at a time");
  if (paths.size() > kMaxPaths) throw std::logic_error("RemovedOnInterrupt: too many paths");
  for (size_t i = 0; i < paths.size(); ++i) {
    if (paths[i].size() >= sizeof g_paths[i])
      throw std::runtime_error("'" + paths[i] + "': path too long");
    std::snprintf(g_paths[i], sizeof g_paths[i], "%s", paths[i].c_str());
  }
  g_path_count = paths.size();
  g_in_use = true;
  struct sigaction action = {};
  action.sa_handler = remove_and_reraise;
  sigemptyset(&action.sa_mask);
  for (size_t i = 0; i < std::size(kInterruptSignals); ++i) {
    sigaction(kInterruptSignals[i], nullptr, &g_previous[i]);
    if (g_previous[i].sa_handler != SIG_IGN) sigaction(kInterruptSignals[i], &action, nullptr);
  }
}

RemovedOnInterrupt::~RemovedOnInterrupt() {
  restore_handlers();
  g_in_use = false;
}

}  // namespace deit::apps
