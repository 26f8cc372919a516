// Internals shared by the communicator backends (engine/communicator.h): the checks every MPI and
// NCCL call goes through (a failure throws with the call, file and line, as kernels/check.h does
// for CUDA), MPI's process-wide lifetime, and the backend factories make_communicator picks from.
#pragma once
#include <chrono>
#include <memory>
#include <string>

#include "engine/communicator.h"

namespace deit::detail {

// How each wait for the other ranks that gives up says so: "rank R of N: <what>; a peer may have
// died or hung (DEIT_COMM_TIMEOUT sets the wait, now T s)".
inline std::string lost_peers_message(int rank, int world_size, const std::string& what,
                                      std::chrono::seconds timeout) {
  return "rank " + std::to_string(rank) + " of " + std::to_string(world_size) + ": " + what +
         "; a peer may have died or hung (DEIT_COMM_TIMEOUT sets the wait, now " +
         std::to_string(timeout.count()) + " s)";
}

}  // namespace deit::detail

#if DEIT_HAVE_MPI
#include <mpi.h>

namespace deit::detail {

// Records the failure (see mpi_init) and throws std::runtime_error.
[[noreturn]] void mpi_call_failed(int code, const char* call, const char* file, int line);

// Initialises MPI once per process (for calls from one thread) and checks that MPI's world is the
// one the launcher described. MPI is finalised at exit unless a failure was recorded: Open MPI's
// MPI_Finalize waits for every rank, so a rank that fails while the others sit in a collective
// must exit without it; mpirun then ends the job. A rank whose peers do not reach the exit within
// the rendezvous's comm_timeout also leaves without it, with a failed status, and so does one
// that waits longer than that in MPI_Init for peers that hung before it.
void mpi_init(const Rendezvous& rendezvous);
void mpi_record_failure();
// Waits for a non-blocking MPI call's `request` for at most `timeout` (the rendezvous's
// comm_timeout); past it, records the failure and throws naming `call` and the rank.
void mpi_wait(MPI_Request& request, const char* call, int rank, int world_size,
              std::chrono::seconds timeout);

std::unique_ptr<Communicator> make_mpi_communicator(Device device, const Rendezvous& rendezvous);

}  // namespace deit::detail

#define DEIT_MPI_CHECK(call)                                                    \
  do {                                                                          \
    const int deit_mpi_rc_ = (call);                                            \
    if (deit_mpi_rc_ != MPI_SUCCESS)                                            \
      ::deit::detail::mpi_call_failed(deit_mpi_rc_, #call, __FILE__, __LINE__); \
  } while (0)
#endif

#if DEIT_HAVE_NCCL
#include <nccl.h>

#include "kernels/check.h"

// ncclAvg, the averaging reduction, arrived in NCCL 2.10; ncclGetLastError in 2.13.
#if NCCL_VERSION_CODE < NCCL_VERSION(2, 13, 0)
#error "deit needs NCCL 2.13 or newer"
#endif

namespace deit::detail {
std::unique_ptr<Communicator> make_nccl_communicator(Device device, const Rendezvous& rendezvous);

// NCCL's error string names only the kind of failure ("unhandled system error"); its last error
// message says which one (the socket, the peer, the CUDA call), as NCCL_DEBUG=WARN would.
[[noreturn]] inline void nccl_call_failed(ncclResult_t result, const char* call, const char* file,
                                          int line) {
  std::string what = ncclGetErrorString(result);
  const char* last_error = ncclGetLastError(nullptr);
  if (last_error && *last_error) what += std::string(": ") + last_error;
  throw_call_error(what.c_str(), call, file, line);
}
}  // namespace deit::detail

#define DEIT_NCCL_CHECK(call)                                                             \
  do {                                                                                    \
    const ncclResult_t deit_nccl_rc_ = (call);                                            \
    if (deit_nccl_rc_ != ncclSuccess)                                                     \
      ::deit::detail::nccl_call_failed(deit_nccl_rc_, #call, __FILE__, __LINE__);         \
  } while (0)
#endif
