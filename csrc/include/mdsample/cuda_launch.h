// Kernel launches spelled as calls, for the .cu files whose launches need no
// more than a grid, a block and a stream: `kernel<<<grid, threads, 0, stream>>>(args...)`
// becomes launch(kernel, grid, threads, stream, what, args...), which plain C++
// compilers read too (tests/cuda_emu runs these files on the CPU). Errors
// throw std::runtime_error naming `what`.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

#include <stdexcept>
#include <string>

namespace mdsample {
namespace cuda_launch {

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

// CTAs of `threads` for one thread per item.
inline unsigned blocks_for(int64_t items, int threads, const char* what) {
  const int64_t blocks = (items + threads - 1) / threads;
  if (blocks > 0x7fffffffLL) throw std::runtime_error(std::string(what) + ": too many elements for one launch");
  return unsigned(blocks);
}

template <class... P>
void launch(void (*kernel)(P...), unsigned grid, int threads, cudaStream_t stream, const char* what, P... args) {
  void* params[] = {&args...};
  check(cudaLaunchKernel(kernel, dim3(grid), dim3(unsigned(threads)), params, 0, stream), what);
}

}  // namespace cuda_launch
}  // namespace mdsample
