#include "apps/removed_on_interrupt.h"

#include <signal.h>
#include <unistd.h>

#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

namespace deit::apps {

namespace {

// The handler may call only async-signal-safe functions (unlink, rmdir, sigaction, raise): the
// paths are copied in before it is installed and cleared after it is removed, so that it only
// reads them, however many they are (deit pack: its shard and each folder it made for it).
std::vector<std::string> g_paths;
bool g_in_use = false;  // the paths and g_previous have room for one owner
constexpr int kInterruptSignals[2] = {SIGINT, SIGTERM};
struct sigaction g_previous[std::size(kInterruptSignals)];

void restore_handlers() {
  for (size_t i = 0; i < std::size(kInterruptSignals); ++i)
    sigaction(kInterruptSignals[i], &g_previous[i], nullptr);
}

extern "C" void remove_and_reraise(int signal) {
  for (const std::string& path : g_paths)
    if (unlink(path.c_str()) != 0) rmdir(path.c_str());
  restore_handlers();
  raise(signal);
}

}  // namespace

RemovedOnInterrupt::RemovedOnInterrupt(const std::vector<std::string>& paths) {
  if (g_in_use) throw std::logic_error("RemovedOnInterrupt: one at a time");
  g_paths = paths;
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
  g_paths.clear();
  g_in_use = false;
}

}  // namespace deit::apps
