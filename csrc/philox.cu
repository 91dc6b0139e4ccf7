// Philox4x32-10 on the GPU, from the same header the CPU kernels use: the
// known-answer tests run it on the device so the header is checked where the
// CUDA kernels will use it, and the samplers' uniforms (uniforms.h) come from
// here on CUDA tensors. Plain C++ reads it too (tests/cuda_emu).
#include <cuda_runtime.h>

#include "mdsample/cuda_launch.h"
#include "mdsample/per_row.h"
#include "mdsample/philox.h"
#include "uniforms.h"

#ifndef MDS_CUDA_ARCHS
#define MDS_CUDA_ARCHS ""  // set by CMakeLists.txt; absent in the emulator's build
#endif

namespace mdsample {

namespace {

__global__ void philox_kernel(uint32_t* out, int64_t n, const uint32_t* counters, const uint32_t* keys) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const uint32_t* c = counters + 4 * i;
  const uint32_t* k = keys + 2 * i;
  const Philox4 w = philox4x32_10(c[0], c[1], c[2], c[3], k[0], k[1]);
  for (int j = 0; j < 4; ++j) out[4 * i + j] = w.w[j];
}

__global__ void uniforms_kernel(const UniformArgs a) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < a.n) write_uniform_pair(a, i);
}

}  // namespace

bool cuda_compiled() { return true; }

const char* cuda_archs() { return MDS_CUDA_ARCHS; }

void philox_cuda(uint64_t out, int64_t n, uint64_t counters, uint64_t keys, int64_t stream) {
  if (n <= 0) return;
  constexpr int kThreads = 256;
  cuda_launch::launch(philox_kernel, cuda_launch::blocks_for(n, kThreads, "philox_cuda"), kThreads,
                      reinterpret_cast<cudaStream_t>(stream), "philox_cuda", reinterpret_cast<uint32_t*>(out), n,
                      reinterpret_cast<const uint32_t*>(counters), reinterpret_cast<const uint32_t*>(keys));
}

void uniforms_cuda(const UniformArgs& a, int64_t stream) {
  if (a.n <= 0) return;
  constexpr int kThreads = 256;
  cuda_launch::launch(uniforms_kernel, cuda_launch::blocks_for(a.n, kThreads, "uniforms_cuda"), kThreads,
                      reinterpret_cast<cudaStream_t>(stream), "uniforms_cuda", a);
}

}  // namespace mdsample
