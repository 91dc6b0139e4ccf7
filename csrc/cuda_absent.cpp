// Built instead of the .cu files when nvcc is absent: the CPU part of the
// extension still builds and says plainly that it has no CUDA code.
#include <stdint.h>

#include <stdexcept>

#include "likelihood.h"
#include "sampling.h"
#include "uniforms.h"

namespace mdsample {

bool cuda_compiled() { return false; }

const char* cuda_archs() { return ""; }

void philox_cuda(uint64_t, int64_t, uint64_t, uint64_t, int64_t) {
  throw std::runtime_error("mdsample._C was built without CUDA (no nvcc at build time)");
}

void uniforms_cuda(const UniformArgs&, int64_t) {
  throw std::runtime_error("mdsample._C was built without CUDA (no nvcc at build time)");
}

void sample_cuda(const SampleArgs&, int64_t, int) {
  throw std::runtime_error("mdsample._C was built without CUDA (no nvcc at build time)");
}

void lowdisc_timesteps_cuda(const TimestepArgs&, int64_t) {
  throw std::runtime_error("mdsample._C was built without CUDA (no nvcc at build time)");
}

void forward_mask_cuda(const ForwardMaskArgs&, int64_t) {
  throw std::runtime_error("mdsample._C was built without CUDA (no nvcc at build time)");
}

void masked_nll_cuda(const MaskedNllArgs&, float*, int64_t) {
  throw std::runtime_error("mdsample._C was built without CUDA (no nvcc at build time)");
}

}  // namespace mdsample
