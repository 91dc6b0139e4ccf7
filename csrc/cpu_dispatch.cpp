// Picks, at run time, the build of each CPU op for the instruction set this
// machine has: the wheel carries a baseline x86-64 build and an AVX2+FMA+F16C
// build of every *_cpu.cpp (CMakeLists.txt), never -march=native.
#include "likelihood.h"
#include "sampling.h"

namespace mdsample {

namespace base {
void sample_cpu(const SampleArgs& args);
void lowdisc_timesteps_cpu(const TimestepArgs& args);
void forward_mask_cpu(const ForwardMaskArgs& args);
void masked_nll_cpu(const MaskedNllArgs& args);
}
#if defined(MDS_HAVE_AVX2)
namespace avx2 {
void sample_cpu(const SampleArgs& args);
void lowdisc_timesteps_cpu(const TimestepArgs& args);
void forward_mask_cpu(const ForwardMaskArgs& args);
void masked_nll_cpu(const MaskedNllArgs& args);
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

void lowdisc_timesteps_cpu(const TimestepArgs& args) {
#if defined(MDS_HAVE_AVX2)
  if (has_avx2()) return avx2::lowdisc_timesteps_cpu(args);
#endif
  base::lowdisc_timesteps_cpu(args);
}

void forward_mask_cpu(const ForwardMaskArgs& args) {
#if defined(MDS_HAVE_AVX2)
  if (has_avx2()) return avx2::forward_mask_cpu(args);
#endif
  base::forward_mask_cpu(args);
}

void masked_nll_cpu(const MaskedNllArgs& args) {
#if defined(MDS_HAVE_AVX2)
  if (has_avx2()) return avx2::masked_nll_cpu(args);
#endif
  base::masked_nll_cpu(args);
}

}  // namespace mdsample
