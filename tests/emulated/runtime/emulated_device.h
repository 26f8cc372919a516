// The emulated CUDA device behind the emulated build of the [gpu] tests (tests/emulated/runtime/):
// the CUDA runtime API (cudart.cpp), cuBLASLt (cublaslt.cpp) and NCCL (nccl.cpp: one rank, or
// several over MPI) rewritten for the host, with the real kernel source of kernels/cuda/*.cu
// running on tests/emulated/cuda_emulator.h. This header is what those files share.
//
// What the emulated device does as a GPU would, so that host code (engine, model, trainer) that
// is wrong for a GPU fails here too:
//  - Work is asynchronous. Kernels, copies, memsets, host functions and GEMMs queue on their
//    stream, each stream runs in order, after the work on other streams that it was made to wait
//    for (cudaStreamWaitEvent, the legacy default stream), and a stream runs its work either as
//    late as CUDA allows (when the host waits for it: a stream or event synchronisation, an event
//    query, a synchronous copy, cudaFree) or as early (as soon as it is queued). Streams alternate
//    between the two in the order they are made: the 2nd, 4th, ... run early, or with
//    DEIT_EMULATED_EAGER=even the 1st, 3rd, ... (the legacy stream always runs late). So a host
//    that reads a result it did not wait for reads the buffer as it was; a host that rewrites an
//    input before the copy that reads it has run changes what the device sees; and a stream that
//    does not wait for another's work (a copy into a buffer that kernels on a late stream have not
//    read yet) gets it in the wrong order.
//  - Whatever order the streams run in, work on two streams that touches the same device memory
//    (one of them writing) must be ordered by the program: by events, the legacy stream's
//    implicit waits, or the host waiting for one before queuing the other. Work that is not fails
//    the emulation when it is queued, with both pieces of work and the host code that queued them
//    (stream_order.h). What a kernel touches is every allocation its pointer arguments point
//    into (read only through a pointer to const), so memory reached through a table of pointers
//    in device memory is not seen.
//  - Device memory comes from the emulator's guarded regions: guard pages and canaries catch an
//    access past an allocation, by a kernel or by a copy, which must lie inside one allocation.
//  - Graph capture records the work instead of running it (and a graph launch replays it, with the
//    kernel arguments of the capture), joins the streams that wait for a captured event, and
//    refuses what CUDA refuses during a capture: work on the legacy stream, synchronisation,
//    allocation, synchronous copies (cudaErrorStreamCaptureUnsupported, and the capture is then
//    invalidated), per thread capture mode included.
//  - A launch checks its configuration (block and grid sizes, dynamic shared memory above 48 KiB
//    only after cudaFuncSetAttribute allows it); errors are returned or left for
//    cudaGetLastError, per thread, as the runtime does. cudaEventQuery answers "not ready" once
//    for work still queued, then runs it.
// One device per process, sm_90 with an H200's sizes: device 0, or in an mpirun job the one its
// local rank picks (cudart.cpp), so that the ranks of `mpirun -np 2` are two GPUs of one node.
// Every API call holds one lock, so host threads take turns; kernels run on the thread that waits
// for them.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <functional>
#include <optional>
#include <string>

#include "tests/emulated/runtime/stream_order.h"

namespace deit_emu {

using Work = std::function<void()>;

// Queues `work`, which touches `footprint`, on `stream` (or records it into the stream's
// capture). Returns the error CUDA would give for enqueuing there now, without queuing anything.
// Fails the emulation if the work races with work on another stream (stream_order.h).
cudaError_t enqueue(cudaStream_t stream, Work work, Footprint footprint = {});

// An access to all of the device allocation that `p` points into, or nothing if it points into
// none: what a kernel may touch through a pointer argument.
std::optional<Access> allocation_access(const void* p, bool writes);

// An access to [p, p + bytes), or nothing if that is not inside one device allocation.
std::optional<Access> range_access(const void* p, size_t bytes, bool writes);

// Leaves `error` as this thread's last error (what cudaGetLastError returns) and returns it.
cudaError_t record_error(cudaError_t error);

// Queues a kernel: checks the launch configuration, then enqueues run (which calls emu::launch).
cudaError_t launch_kernel(const void* kernel, dim3 grid, dim3 block, size_t shared_bytes,
                          cudaStream_t stream, Work run, Footprint footprint);

}  // namespace deit_emu
