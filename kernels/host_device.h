// DEIT_HD marks a function that host code and CUDA kernels both call, written once for both: the
// arithmetic a CPU twin and its CUDA kernel must share (kernels/augment_arith.h), and small index
// helpers (kernels/samples.h). nvcc compiles it for both sides; a host compiler (the CPU build, the
// emulated kernels of tests/emulated/) sees a plain inline function.
#pragma once

#if defined(__CUDACC__)
#define DEIT_HD __host__ __device__ __forceinline__
#else
#define DEIT_HD inline
#endif
