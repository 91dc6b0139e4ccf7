// The two device-code constructs of the CUDA kernels that have no C++
// spelling, behind functions so that tests/cuda_emu can compile the unmodified
// kernels with g++ and run them on the CPU (MDSAMPLE_CUDA_EMULATION).
#pragma once

namespace mdsample {

#if defined(MDSAMPLE_CUDA_EMULATION)
// The emulator's per-CTA buffer (cuda_emu.h).
template <class T>
inline T* dynamic_shared() {
  return static_cast<T*>(cuda_emu::dynamic_shared_memory());
}
inline void prefetch_global_l1(const void*) {}  // a hint: nothing to emulate
#else
// The launch's dynamic shared memory (the `smem` launch argument), as a T array.
template <class T>
__device__ __forceinline__ T* dynamic_shared() {
  extern __shared__ __align__(16) unsigned char dynamic_smem[];
  return reinterpret_cast<T*>(dynamic_smem);
}
// Asks L1 to fetch the 128-byte line holding global address p.
__device__ __forceinline__ void prefetch_global_l1(const void* p) {
  asm volatile("prefetch.global.L1 [%0];" ::"l"(p));
}
#endif

}  // namespace mdsample
