// The CUDA streams of a device.
//   compute        all engine work: ops, optimizer, copies. One stream keeps the caching
//                  allocator's reuse safe (engine/allocator.h: a block freed on the host is handed
//                  out again at once, which is only safe for work ordered after its last use) and
//                  lets a whole step be captured as a graph.
//   communication  the NCCL communicator's collectives (engine/communicator_nccl.cpp), so that a
//                  gradient bucket's all-reduce runs while backward's remaining kernels do. Work
//                  crosses between the two streams only through events: the communication stream
//                  waits for the compute stream's work on the tensors it reads, and the compute
//                  stream waits for the collective before anything reads its result or the host
//                  frees a tensor it touched (engine/communicator.h's start_bucket_mean and
//                  finish_buckets), which keeps the allocator's rule above true.
#pragma once

#if DEIT_HAVE_CUDA
#include <cuda_runtime.h>

namespace deit {
cudaStream_t compute_stream(int device);
cudaStream_t communication_stream(int device);
}  // namespace deit
#endif
