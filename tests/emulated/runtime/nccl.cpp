// The NCCL calls of engine/communicator_nccl.cpp, on the emulated device (emulated_device.h), for
// a communicator of one rank: a broadcast, a reduce or an all-reduce (sum or average) over one rank
// copies its input, queued on the stream like a real collective, so the [gpu][nccl] cases check
// how the engine orders collectives against the compute stream and reads their results. A group
// (ncclGroupStart/End) runs its calls as they come; an end without a start is refused. More ranks
// are refused (ncclInvalidUsage): the emulated device is one GPU of one process.
#include <nccl.h>

#include <cstdio>
#include <cstring>

#include "tests/emulated/runtime/emulated_device.h"

// A communicator of one rank holds nothing.
struct ncclComm {};

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

ncclResult_t copy_over_one_rank(const char* api, const void* send, void* recv, size_t count,
                                ncclDataType_t type, ncclComm_t comm, cudaStream_t stream) {
  const size_t bytes = count * element_bytes(type);
  if (comm == nullptr) return ncclInvalidArgument;
  const std::optional<deit_emu::Access> input = deit_emu::range_access(send, bytes, false);
  const std::optional<deit_emu::Access> output = deit_emu::range_access(recv, bytes, true);
  if (!input || !output) {
    std::fprintf(stderr, "emulated NCCL: a buffer outside every device allocation\n");
    return ncclInvalidArgument;
  }
  // In place, the copy is no work at all; the collective of several ranks would still read and
  // write the buffer, and must be ordered as such.
  const deit_emu::Footprint footprint{api, {*input, *output}, {}};
  const cudaError_t e = deit_emu::enqueue(
      stream, [=] { std::memmove(recv, send, bytes); }, footprint);
  return e == cudaSuccess ? ncclSuccess : ncclUnhandledCudaError;
}

}  // namespace

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  std::memset(id, 0, sizeof *id);
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId, int rank) {
  *comm = nullptr;
  if (nranks != 1 || rank != 0) return ncclInvalidUsage;
  *comm = new ncclComm;
  return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
  delete comm;
  return ncclSuccess;
}
ncclResult_t ncclCommDestroy(ncclComm_t comm) {
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
    case ncclInvalidArgument:
      return "invalid argument";
    case ncclInvalidUsage:
      return "invalid usage (the emulated NCCL has one rank)";
    default:
      return "NCCL error (emulated NCCL)";
  }
}
const char* ncclGetLastError(ncclComm_t) { return ""; }

ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t type,
                           int root, ncclComm_t comm, cudaStream_t stream) {
  if (root != 0) return ncclInvalidArgument;
  return copy_over_one_rank("ncclBroadcast", send, recv, count, type, comm, stream);
}

ncclResult_t ncclReduce(const void* send, void* recv, size_t count, ncclDataType_t type,
                        ncclRedOp_t op, int root, ncclComm_t comm, cudaStream_t stream) {
  if (root != 0 || (op != ncclSum && op != ncclAvg)) return ncclInvalidArgument;
  return copy_over_one_rank("ncclReduce", send, recv, count, type, comm, stream);
}

namespace {
int open_groups = 0;
}  // namespace

ncclResult_t ncclGroupStart() {
  ++open_groups;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
  if (open_groups == 0) return ncclInvalidUsage;
  --open_groups;
  return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t type,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  if (op != ncclSum && op != ncclAvg) return ncclInvalidArgument;
  return copy_over_one_rank("ncclAllReduce", send, recv, count, type, comm, stream);
}
