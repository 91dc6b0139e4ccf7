// Kernels with one deliberate bug each (and one correct twin), so that
// tests/test_cuda_emulated.py can check the emulator reports every kind of
// bug it claims to catch (cuda_emu.h).
#include <cuda_runtime.h>
#include <stdio.h>

#include <stdexcept>

#include "mdsample/device.h"

namespace {

constexpr unsigned kAll = 0xffffffffu;

// Half the warp shuffles at one line, half at another.
__global__ void divergent_shuffle(float* out) {
  float v = float(threadIdx.x);
  if (threadIdx.x % 32 < 16) {
    v = __shfl_xor_sync(kAll, v, 1);
  } else {
    v = __shfl_xor_sync(kAll, v, 2);
  }
  out[threadIdx.x] = v;
}

// Lane 3 leaves before the full-mask shuffle its warp still does.
__global__ void exited_lane(float* out) {
  if (threadIdx.x == 3) return;
  out[threadIdx.x] = __shfl_xor_sync(kAll, 1.0f, 1);
}

// The two warps meet at different barriers.
__global__ void divergent_barrier(float* out) {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 0.0f;
}

__global__ void partial_mask(float* out) { out[threadIdx.x] = __shfl_sync(0x0000ffffu, 1.0f, 0); }

// Thread 31 reads one element past the end of its input.
__global__ void out_of_bounds(const float* in, float* out) { out[threadIdx.x] = __ldg(in + threadIdx.x + 1); }

// A 16-byte load from an address 4 bytes past a 16-byte boundary.
__global__ void misaligned(const float* in, float* out) { out[threadIdx.x] = float(__ldg(reinterpret_cast<const uint4*>(in + 1)).x); }

// Every thread reads the slot the mirror thread wrote: without the barrier
// the result depends on which thread ran first.
template <bool kBarrier>
__global__ void mirror(float* out) {
  float* const slot = mdsample::dynamic_shared<float>();  // 64 floats
  slot[threadIdx.x] = float(threadIdx.x);
  if (kBarrier) __syncthreads();
  out[threadIdx.x] = slot[63 - threadIdx.x];
}

template <class... P, class... A>
cudaError_t run(void (*kernel)(P...), unsigned threads, A... args) {
  void* params[] = {&args...};
  return cudaLaunchKernel(kernel, dim3(1), dim3(threads), params, 64 * sizeof(float), nullptr);
}

}  // namespace

// Runs self-test kernel `which` on one CTA of 64 threads (32 for the loads),
// threads picked by `policy` (as cuda_emu::set_schedule takes it):
// 0 divergent shuffle, 1 exited lane, 2 partial mask, 3 out-of-bounds __ldg,
// 4 misaligned __ldg, 5 mirror without barrier, 6 mirror with it, 7 divergent
// barrier. out holds 64 floats. Returns 0, or 1 with the emulator's report in
// error[error_len].
extern "C" int mdsample_emu_selftest(int which, int policy, float* out, char* error, size_t error_len) {
  alignas(16) static float in[64];
  for (int i = 0; i < 64; ++i) in[i] = float(i);
  try {
    cuda_emu::clear_readable();
    cuda_emu::add_readable(in, 32 * sizeof(float));
    cuda_emu::set_schedule(policy, 0);
    cudaError_t err = cudaSuccess;
    switch (which) {
      case 0: err = run(divergent_shuffle, 64, out); break;
      case 1: err = run(exited_lane, 64, out); break;
      case 2: err = run(partial_mask, 64, out); break;
      case 3: err = run(out_of_bounds, 32, static_cast<const float*>(in), out); break;
      case 4: err = run(misaligned, 32, static_cast<const float*>(in), out); break;
      case 5: err = run(mirror<false>, 64, out); break;
      case 6: err = run(mirror<true>, 64, out); break;
      case 7: err = run(divergent_barrier, 64, out); break;
    }
    if (err != cudaSuccess) throw std::runtime_error(cudaGetErrorString(err));
    return 0;
  } catch (const std::exception& e) {
    snprintf(error, error_len, "%s", e.what());
    return 1;
  }
}
