#include "train/stop_request.h"

#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>
#include <iterator>
#include <vector>

namespace deit::train {

namespace {

// SIGHUP: the terminal a run was started from has closed (a dropped ssh session).
constexpr int kStopSignals[] = {SIGINT, SIGTERM, SIGUSR1, SIGHUP};

// Written by a signal handler: a lock-free atomic is safe to store from one.
std::atomic<int> g_signal{0};
// What the first signal prints (rank 0; null: nothing): a string literal, which the handler may
// read.
std::atomic<const char*> g_announcement{nullptr};
static_assert(std::atomic<int>::is_always_lock_free &&
              std::atomic<const char*>::is_always_lock_free);

struct sigaction g_previous[std::size(kStopSignals)];
struct sigaction g_previous_pipe;

void on_stop_signal(int signal) {
  int none = 0;
  if (!g_signal.compare_exchange_strong(none, signal)) {
    // A hangup is no one asking again: a terminal's end often sends it twice (bash passes the one
    // it gets on to its jobs, and the kernel sends another to the terminal's last foreground job
    // as bash exits), which would otherwise end the run before it saves.
    if (signal == SIGHUP) return;
    // The second: what the signal would have done without us.
    std::signal(signal, SIG_DFL);
    std::raise(signal);
    return;
  }
  // write(2) is async-signal-safe; stdio is not.
  if (const char* announcement = g_announcement.load()) {
    [[maybe_unused]] const ssize_t written =
        write(STDERR_FILENO, announcement, std::strlen(announcement));
  }
}

}  // namespace

StopSignals::StopSignals(Announce announce) {
  // A run of several processes saves only with every process: one that died (a kill -9, a lost
  // node) leaves the others' collectives waiting until the launcher ends them.
  static const char kOneProcess[] =
      "\ndeit: stopping once this optimizer step (or evaluation) is done, to save a checkpoint "
      "there (send the signal again to stop at once, losing what the last checkpoint does not "
      "hold)\n";
  static const char kSeveralProcesses[] =
      "\ndeit: stopping once this optimizer step (or evaluation) is done, to save a checkpoint "
      "there with every process of the run (if one has died, the run ends without it; send the "
      "signal again to stop at once, losing what the last checkpoint does not hold)\n";
  g_announcement = announce == Announce::kNothing      ? nullptr
                   : announce == Announce::kOneProcess ? kOneProcess
                                                       : kSeveralProcesses;
  struct sigaction action = {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // reads and waits go on; the trainer looks at the flag itself
  for (size_t i = 0; i < std::size(kStopSignals); ++i) {
    sigaction(kStopSignals[i], nullptr, &g_previous[i]);
    // An ignored signal stays ignored: a shell starts background jobs with SIGINT ignored, so
    // that a Ctrl-C meant for the script does not reach them.
    if (g_previous[i].sa_handler != SIG_IGN) sigaction(kStopSignals[i], &action, nullptr);
  }
  // A stop signal sent to a pipeline's process group (Ctrl-C) also ends the process that reads
  // deit's output: the announcement or the next progress line would raise SIGPIPE, whose default
  // ends the run without its checkpoint.
  struct sigaction ignore = {};
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  sigaction(SIGPIPE, &ignore, &g_previous_pipe);
}

StopSignals::~StopSignals() {
  for (size_t i = 0; i < std::size(kStopSignals); ++i)
    sigaction(kStopSignals[i], &g_previous[i], nullptr);
  sigaction(SIGPIPE, &g_previous_pipe, nullptr);
  g_signal = 0;
}

void request_stop(int signal) { g_signal = signal; }

AfterStep after_step(Communicator& comm, bool lead_saves) {
  const int local = g_signal.load();
  if (comm.world_size() == 1) return {local, 0, lead_saves};
  // Each rank's signal in its own slot, so that every rank learns which ranks were signalled;
  // rank 0's wish to save in the last.
  const auto world = static_cast<size_t>(comm.world_size());
  std::vector<double> slots(world + 1, 0.0);
  slots[static_cast<size_t>(comm.rank())] = local;
  if (comm.rank() == 0) slots[world] = lead_saves ? 1 : 0;
  comm.all_reduce_sum(slots);
  AfterStep after;
  after.save = slots[world] != 0;
  for (size_t r = 0; r < world; ++r)
    if (slots[r] != 0) {
      after.signal = static_cast<int>(slots[r]);
      after.rank = static_cast<int>(r);
      break;
    }
  return after;
}

std::string signal_name(int signal) {
  switch (signal) {
    case SIGINT:
      return "SIGINT";
    case SIGTERM:
      return "SIGTERM";
    case SIGUSR1:
      return "SIGUSR1";
    case SIGHUP:
      return "SIGHUP";
    default:
      return "signal " + std::to_string(signal);
  }
}

}  // namespace deit::train
