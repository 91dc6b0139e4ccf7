// Launcher interface of the samplers' own Philox uniforms (reveal coins, orders,
// first-hitting times; mdsample/ops/uniforms.py): for each position, the two
// centred 52-bit uniforms of draw (seed, offset, position, domain), words 0-1
// and words 2-3, exactly as mdsample/reference/philox.py computes them. One
// launch instead of the ~560 tensor ops of the reference on a GPU step.
#pragma once
#include <stdint.h>

namespace mdsample {

struct UniformArgs {
  const int64_t* seed;      // one value (device memory for cuda), or null: seed_val
  int64_t seed_val;
  const int64_t* offset;    // one value, or null: offset_val
  int64_t offset_val;
  const int64_t* position;  // [n]
  int64_t n;
  uint32_t domain;
  double* out;              // [2, n]: the uniform of words 0-1, then of words 2-3
};

void uniforms_cpu(const UniformArgs& args);

// On the GPU, queued on `stream` (a cudaStream_t as an integer); nothing synchronized.
void uniforms_cuda(const UniformArgs& args, int64_t stream);

}  // namespace mdsample
