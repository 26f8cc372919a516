// Stopping a run on request without losing its work: SIGINT (Ctrl-C), SIGTERM (what `kill`, a
// cluster's preemption and Slurm's time limit send), SIGUSR1 (the early warning Slurm sends with
// `#SBATCH --signal=USR1@90`) and SIGHUP (the terminal it was started from has closed: a dropped
// ssh session; nohup ignores it). While a StopSignals lives, the first such signal is recorded and
// the trainer stops at the end of the optimizer step it is in, saves a checkpoint there and
// returns (deit then ends as the signal would have); a second one ends the process at once, as
// without a handler, unless it is SIGHUP (a terminal's end may send two). A signal ignored when the
// run starts stays ignored. SIGPIPE is ignored while it lives: Ctrl-C on `deit train ... | tee
// run.txt` ends tee too, and a write to the pipe it read would otherwise end the run before it
// saves (the writes fail instead, unseen).
//
// Every rank must stop after the same step, whichever received the signal (a cluster signals
// each process at its own moment): after_step() is a collective, called once per optimizer step
// when there are several ranks. It also carries rank 0's decision to save a checkpoint of the
// step (--save-every), which every rank must take part in.
#pragma once
#include <string>

#include "engine/communicator.h"

namespace deit::train {

class StopSignals {
 public:
  // Whether the first signal prints what happens next (rank 0 alone), and for how many processes.
  enum class Announce { kNothing, kOneProcess, kSeveralProcesses };
  // Installs the handlers.
  explicit StopSignals(Announce announce);
  // Restores the handlers there were, and forgets a recorded signal.
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
};

// Records `signal` as the handler does: how a test stops a run in the middle.
void request_stop(int signal);

// What every rank does after an optimizer step: the signal this rank, or the lowest rank that has
// one, recorded (0: none), and whether to save a checkpoint there (`lead_saves`, rank 0's wish);
// the same on every rank. Collective when `comm` has several ranks.
struct AfterStep {
  int signal = 0;
  int rank = 0;  // where the signal was received
  bool save = false;
};
AfterStep after_step(Communicator& comm, bool lead_saves);

// "SIGTERM", "SIGINT", "SIGUSR1", "SIGHUP", else "signal N".
std::string signal_name(int signal);

}  // namespace deit::train
