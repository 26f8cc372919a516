// The CUDA stream all engine work of a device is issued on. One stream per device keeps the
// caching allocator's reuse safe (engine/allocator.h) and lets a whole step be captured as a graph.
#pragma once

#if DEIT_HAVE_CUDA
#include <cuda_runtime.h>

namespace deit {
cudaStream_t compute_stream(int device);
}  // namespace deit
#endif
