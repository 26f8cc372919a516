// A deadline for a blocking call that can be neither polled nor cancelled. MPI_Init is one (Open
// MPI's waits for every rank to start), and so are NCCL's communicator calls in the blocking mode
// deit uses: ncclCommInitRank waits for every rank to join, and ncclCommDestroy and ncclCommAbort
// may wait for the other ranks of the node before they free memory those ranks might still touch. A
// peer that hangs (stopped, stuck on a dead file system) would hold this rank in them for ever, and
// the launcher ends a job only when a rank exits.
#pragma once
#include <chrono>
#include <functional>
#include <string>

namespace deit {

// Runs `call` on this thread. If it has not returned within `limit`, a watching thread writes
// "deit: error: <message>" to stderr and ends the process with a failed status, std::_Exit:
// nothing can unwind a thread blocked inside a library, and the failed exit is what makes the
// launcher (mpirun, torchrun, srun) end the other ranks, the hung one too. An exception from
// `call` leaves as it came.
void exit_unless_returns_within(std::chrono::milliseconds limit, const std::string& message,
                                const std::function<void()>& call);

}  // namespace deit
