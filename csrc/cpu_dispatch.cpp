// Picks, at run time, the build of each CPU op for the instruction set this
// machine has: the wheel carries a baseline x86-64 build and an AVX2+FMA+F16C
// build of every *_cpu.cpp (CMakeLists.txt), never -march=native.
#include "sampling.h"

namespace mdsample {

namespace base {
void sample_cpu(const SampleArgs& args);
}
#if defined(MDS_HAVE_AVX2)
namespace avx2 {
void sample_cpu(const SampleArgs& args);
}
#endif

static bool has_avx2() {
#if defined(MDS_HAVE_AVX2)
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                         __builtin_cpu_supports("f16c");
  return ok;
#else
  return false;
#endif
}

const char* cpu_isa() { return has_avx2() ? "avx2" : "base"; }

void sample_cpu(const SampleArgs& args) {
#if defined(MDS_HAVE_AVX2)
  if (has_avx2()) return avx2::sample_cpu(args);
#endif
  base::sample_cpu(args);
}

}  // namespace mdsample
