// Philox4x32-10 of the shared header on the host: the known-answer tests
// (tests/test_philox.py) and the samplers' uniforms on CPU tensors (uniforms.h);
// philox.cu runs the same header on the device.
#include <stdint.h>

#include "mdsample/per_row.h"
#include "mdsample/philox.h"
#include "uniforms.h"

namespace mdsample {

void philox_host(uint32_t* out, int64_t n, const uint32_t* counters, const uint32_t* keys) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t* c = counters + 4 * i;
    const uint32_t* k = keys + 2 * i;
    const Philox4 w = philox4x32_10(c[0], c[1], c[2], c[3], k[0], k[1]);
    for (int j = 0; j < 4; ++j) out[4 * i + j] = w.w[j];
  }
}

void uniforms_cpu(const UniformArgs& a) {
  // Threads only where the work outweighs waking them (~20 ns a position).
#pragma omp parallel for schedule(static) if (a.n >= (1 << 16))
  for (int64_t i = 0; i < a.n; ++i) write_uniform_pair(a, i);
}

}  // namespace mdsample
