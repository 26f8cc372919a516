// The NCCL calls of engine/communicator_nccl.cpp, on the emulated device (emulated_device.h). Each
// collective is queued on its stream like a real one, so the [gpu][nccl] cases check how the engine
// orders collectives against the compute stream and reads their results:
//  - a communicator of one rank: a broadcast, a reduce or an all-reduce (sum or average) copies its
//    input;
//  - several ranks, one process each (each its own emulated device): the job must be launched by
//    mpirun, and a collective runs as the MPI collective over the host memory that the emulated
//    device's buffers are, when its stream runs it (f32 and f64 only, what the engine reduces).
//    Every rank runs its collectives in the order it queued them on its one communication stream,
//    so the ranks meet in the same order, whenever each stream runs its work.
// A group (ncclGroupStart/End) runs its calls as they come; an end without a start is refused.
// Over several ranks, making a communicator waits for every rank (an MPI_Comm_dup), and so does
// ncclCommDestroy, which NCCL's documentation calls a collective of the ranks of a node: it runs
// the device's queued work, then passes a barrier. ncclCommAbort waits for nobody. For the cases
// that make a rank hang on purpose, DEIT_EMULATED_NCCL_STOP_IN_INIT=<rank> stops that rank
// (SIGSTOP) in ncclCommInitRank, as a peer whose GPU or network hangs there would.
#include <cuda_runtime.h>
#include <nccl.h>

#include <climits>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "tests/emulated/runtime/emulated_device.h"

#if DEIT_HAVE_MPI
#include <mpi.h>
#endif

struct ncclComm {
  int rank = 0;
  int size = 1;
#if DEIT_HAVE_MPI
  MPI_Comm mpi = MPI_COMM_NULL;  // several ranks: a duplicate of MPI_COMM_WORLD
#endif
};

namespace {

size_t element_bytes(ncclDataType_t type) {
  switch (type) {
    case ncclInt8:
    case ncclUint8:
      return 1;
    case ncclFloat16:
    case ncclBfloat16:
      return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32:
      return 4;
    default:
      return 8;
  }
}

enum class Collective { all_reduce, reduce, broadcast };

#if DEIT_HAVE_MPI
// One collective over the ranks, run by the stream: the ranks that end with the result (all of
// them, or the root) start from their input in `recv`, and the MPI call works there in place.
void run_over_mpi(Collective kind, const void* send, void* recv, size_t count, ncclDataType_t type,
                  ncclRedOp_t op, int root, const ncclComm& comm) {
  const bool is_double = type == ncclFloat64;
  const MPI_Datatype mpi_type = is_double ? MPI_DOUBLE : MPI_FLOAT;
  const int n = static_cast<int>(count);
  const bool holds_result = kind == Collective::all_reduce || comm.rank == root;
  if (holds_result && send != recv) std::memmove(recv, send, count * element_bytes(type));
  int rc = MPI_SUCCESS;
  switch (kind) {
    case Collective::all_reduce:
      rc = MPI_Allreduce(MPI_IN_PLACE, recv, n, mpi_type, MPI_SUM, comm.mpi);
      break;
    case Collective::reduce:
      rc = comm.rank == root ? MPI_Reduce(MPI_IN_PLACE, recv, n, mpi_type, MPI_SUM, root, comm.mpi)
                             : MPI_Reduce(send, nullptr, n, mpi_type, MPI_SUM, root, comm.mpi);
      break;
    case Collective::broadcast:
      rc = MPI_Bcast(recv, n, mpi_type, root, comm.mpi);
      break;
  }
  if (rc != MPI_SUCCESS) {
    // The stream cannot report an error to anyone: end the process, and mpirun the job.
    std::fprintf(stderr, "emulated NCCL: rank %d's MPI collective failed (MPI error %d)\n",
                 comm.rank, rc);
    std::abort();
  }
  if (op != ncclAvg || kind == Collective::broadcast || !holds_result) return;
  for (size_t i = 0; i < count; ++i) {
    if (is_double)
      static_cast<double*>(recv)[i] *= 1.0 / comm.size;
    else
      static_cast<float*>(recv)[i] *= 1.0f / comm.size;
  }
}
#endif

ncclResult_t queue_collective(const char* api, Collective kind, const void* send, void* recv,
                              size_t count, ncclDataType_t type, ncclRedOp_t op, int root,
                              ncclComm_t comm, cudaStream_t stream) {
  if (comm == nullptr || root < 0 || root >= comm->size) return ncclInvalidArgument;
  if (kind != Collective::broadcast && op != ncclSum && op != ncclAvg) return ncclInvalidArgument;
  const size_t bytes = count * element_bytes(type);
  const std::optional<deit_emu::Access> input = deit_emu::range_access(send, bytes, false);
  const std::optional<deit_emu::Access> output = deit_emu::range_access(recv, bytes, true);
  if (!input || !output) {
    std::fprintf(stderr, "emulated NCCL: a buffer outside every device allocation\n");
    return ncclInvalidArgument;
  }
  deit_emu::Work work = [=] { std::memmove(recv, send, bytes); };
  if (comm->size > 1) {
#if DEIT_HAVE_MPI
    if ((type != ncclFloat32 && type != ncclFloat64) || count > INT_MAX) {
      std::fprintf(stderr,
                   "emulated NCCL: %s of %zu elements of NCCL type %d over several ranks "
                   "(f32 and f64, at most INT_MAX elements)\n",
                   api, count, int(type));
      return ncclInvalidArgument;
    }
    work = [=, ranks = *comm] { run_over_mpi(kind, send, recv, count, type, op, root, ranks); };
#endif
  }
  // In place over one rank, the copy is no work at all; the collective of several ranks would
  // still read and write the buffer, and must be ordered as such.
  const deit_emu::Footprint footprint{api, {*input, *output}, {}};
  const cudaError_t e = deit_emu::enqueue(stream, std::move(work), footprint);
  return e == cudaSuccess ? ncclSuccess : ncclUnhandledCudaError;
}

int open_groups = 0;

}  // namespace

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  std::memset(id, 0, sizeof *id);
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId, int rank) {
  *comm = nullptr;
  if (nranks < 1 || rank < 0 || rank >= nranks) return ncclInvalidArgument;
  if (nranks == 1) {
    *comm = new ncclComm;
    return ncclSuccess;
  }
#if DEIT_HAVE_MPI
  int initialized = 0, world_rank = 0, world_size = 0;
  MPI_Initialized(&initialized);
  if (initialized) {
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  }
  if (!initialized || world_rank != rank || world_size != nranks) {
    std::fprintf(stderr, "emulated NCCL: rank %d of %d runs over MPI, which %s\n", rank, nranks,
                 initialized ? "sees another rank or size: launch with mpirun alone"
                             : "is not initialised: launch with mpirun");
    return ncclInvalidUsage;
  }
  if (const char* stopped = std::getenv("DEIT_EMULATED_NCCL_STOP_IN_INIT");
      stopped && std::to_string(rank) == stopped)
    std::raise(SIGSTOP);
  auto made = new ncclComm{rank, nranks};
  if (MPI_Comm_dup(MPI_COMM_WORLD, &made->mpi) != MPI_SUCCESS) {
    delete made;
    return ncclSystemError;
  }
  *comm = made;
  return ncclSuccess;
#else
  std::fprintf(stderr, "emulated NCCL: several ranks run over MPI, which this build lacks\n");
  return ncclInvalidUsage;
#endif
}

// A communicator's MPI duplicate is never freed: collectives queued on a stream that has not run
// them yet hold a copy of it (and, aborted, its peers may never free theirs).
ncclResult_t ncclCommAbort(ncclComm_t comm) {
  delete comm;
  return ncclSuccess;
}
ncclResult_t ncclCommDestroy(ncclComm_t comm) {
#if DEIT_HAVE_MPI
  if (comm && comm->size > 1) {
    if (cudaDeviceSynchronize() != cudaSuccess) return ncclUnhandledCudaError;
    if (MPI_Barrier(comm->mpi) != MPI_SUCCESS) return ncclSystemError;
  }
#endif
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t, ncclResult_t* error) {
  *error = ncclSuccess;
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess:
      return "no error";
    case ncclUnhandledCudaError:
      return "unhandled cuda error";
    case ncclSystemError:
      return "system error";
    case ncclInvalidArgument:
      return "invalid argument";
    case ncclInvalidUsage:
      return "invalid usage (the emulated NCCL's message above says what)";
    default:
      return "NCCL error (emulated NCCL)";
  }
}
const char* ncclGetLastError(ncclComm_t) { return ""; }

ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t type,
                           int root, ncclComm_t comm, cudaStream_t stream) {
  return queue_collective("ncclBroadcast", Collective::broadcast, send, recv, count, type, ncclSum,
                          root, comm, stream);
}

ncclResult_t ncclReduce(const void* send, void* recv, size_t count, ncclDataType_t type,
                        ncclRedOp_t op, int root, ncclComm_t comm, cudaStream_t stream) {
  return queue_collective("ncclReduce", Collective::reduce, send, recv, count, type, op, root, comm,
                          stream);
}

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t type,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  return queue_collective("ncclAllReduce", Collective::all_reduce, send, recv, count, type, op, 0,
                          comm, stream);
}

ncclResult_t ncclGroupStart() {
  ++open_groups;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
  if (open_groups == 0) return ncclInvalidUsage;
  --open_groups;
  return ncclSuccess;
}
