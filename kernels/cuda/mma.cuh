// PTX wrappers of the tensor-core kernels (kernels/cuda/attention_kernels.cuh): cp.async (16- and
// 4-byte global -> shared copies that bypass the registers, with zero-fill), ldmatrix (a warp loads
// 8x8 bf16 matrices from shared memory straight into mma fragments), mma.sync m16n8k16 (bf16 x bf16
// -> fp32 on the tensor cores; common_device.cuh's bf16x2_bits packs fragments of bf16 pairs), and
// dynamic_smem(), the block's dynamic shared memory; and the bare special-function instructions
// (2^x and 1/x) that the softmax and GELU (kernels/cuda/gelu_kernels.cuh) compute with.
//
// Why a header of its own: inline PTX and the extern __shared__ array are what a host compiler
// cannot build. The emulated tests (tests/emulated/attention_emulated.cpp, ops_emulated.cpp)
// include the real kernel headers after their own definitions, in deit::kernels::ptx, of the names
// the kernels call from here: lane-exact emulations (tests/emulated/cuda_emulator.h). So the
// kernels nvcc compiles are also checked on machines without a GPU. A wrapper added here needs its
// emulated twin there.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

namespace deit::kernels::ptx {

// PTX wrappers: cp.async, ldmatrix, mma.sync (sm_80 and later).

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Copies 16 bytes global -> shared, or writes 16 zero bytes when !valid (src-size 0: src is not
// read, but must still be a valid address).
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
// The same for 4 bytes (one float), through L1 (.ca: the only cache mode that takes 4 bytes); both
// addresses 4-byte aligned.
__device__ __forceinline__ void cp_async_4(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Four 8x8 bf16 matrices; lane l supplies the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const __nv_bfloat16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const __nv_bfloat16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// c (16x8, fp32) += a (16x16, bf16, row-major) * b (16x8, bf16, column-major). With g = lane / 4
// and t = lane % 4: a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..], a[2] = A[g][2t+8..],
// a[3] = A[g+8][2t+8..]; b[0] = B[2t..2t+1][g], b[1] = B[2t+8..][g]; c[0..1] = C[g][2t..2t+1],
// c[2..3] = C[g+8][2t..2t+1].
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x on the special-function unit, denormal results flushed to zero: one MUFU.EX2. exp2f
// without --use_fast_math wraps the same instruction in a rescaling for results below 2^-126
// (compare, two conditional multiplies), which a probability that small does not need.
__device__ __forceinline__ float exp2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// 1/x on the special-function unit (within 1 ulp), subnormals flushed to zero: one MUFU.RCP.
// 1.f / x is the IEEE division, a dozen instructions, and __fdividef(1.f, x) guards the same
// MUFU.RCP with a compare, a select and two multiplies for |x| outside [2^-126, 2^126].
__device__ __forceinline__ float rcp_ftz(float x) {
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// The block's dynamic shared memory (the bytes given at launch), 16-byte aligned. Kernels take it
// from here instead of declaring the extern array themselves, so the emulator can hand them its
// own buffer.
__device__ __forceinline__ unsigned char* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char smem[];
  return smem;
}

}  // namespace deit::kernels::ptx
