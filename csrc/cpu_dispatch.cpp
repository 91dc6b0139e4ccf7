// Picks, at run time, the build of each CPU op for the instruction set this
// machine has: the wheel carries a baseline x86-64 build, an AVX2+FMA+F16C build
// and an AVX-512 (F/BW/DQ/VL, 512-bit vectors) build of every *_cpu.cpp
// (CMakeLists.txt), never -march=native. The builds compute the same formulas
// (-ffp-contract=off); only the lane count of their vector sums differs, which
// moves fp32 chunk sums by an ulp and so a token only at a near-tie.
//
// MDSAMPLE_CPU_ISA=base|avx2|avx512 (read once) or set_cpu_isa() caps the pick,
// for tests and for bitwise reproducibility across machines.
#include <stdlib.h>
#include <string.h>

#include <atomic>

#include "likelihood.h"
#include "sampling.h"

namespace mdsample {

#define MDS_CPU_OPS(ISA)                                   \
  namespace ISA {                                          \
  void sample_cpu(const SampleArgs& args);                 \
  void lowdisc_timesteps_cpu(const TimestepArgs& args);    \
  void forward_mask_cpu(const ForwardMaskArgs& args);      \
  void masked_nll_cpu(const MaskedNllArgs& args);          \
  }
MDS_CPU_OPS(base)
#if defined(MDS_HAVE_AVX2)
MDS_CPU_OPS(avx2)
#endif
#if defined(MDS_HAVE_AVX512)
MDS_CPU_OPS(avx512)
#endif
#undef MDS_CPU_OPS

namespace {

enum Isa : int { kBase = 0, kAvx2 = 1, kAvx512 = 2 };
const char* const kIsaNames[] = {"base", "avx2", "avx512"};

// The best build this binary has and this CPU (and OS) runs.
int supported() {
  static const int best = [] {
    int isa = kBase;
#if defined(MDS_HAVE_AVX2)
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) isa = kAvx2;
#endif
#if defined(MDS_HAVE_AVX512)
    if (isa == kAvx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
      isa = kAvx512;
#endif
    return isa;
  }();
  return best;
}

int isa_code(const char* name) {
  for (int i = 0; i < 3; ++i)
    if (name && strcmp(name, kIsaNames[i]) == 0) return i;
  return -1;
}

// A requested build, capped at what runs here; unknown (-1) means the best.
int capped(int want) { return want >= 0 && want < supported() ? want : supported(); }

std::atomic<int>& chosen() {
  static std::atomic<int> isa{capped(isa_code(getenv("MDSAMPLE_CPU_ISA")))};
  return isa;
}

}  // namespace

const char* cpu_isa() { return kIsaNames[chosen().load(std::memory_order_relaxed)]; }

const char* set_cpu_isa(const char* name) {
  const int want = isa_code(name);
  if (want < 0) return nullptr;
  chosen().store(capped(want), std::memory_order_relaxed);
  return cpu_isa();
}

// Each op: the chosen build's entry point.
#if defined(MDS_HAVE_AVX512)
#define MDS_PICK_AVX512(op) \
  if (isa == kAvx512) return avx512::op(args);
#else
#define MDS_PICK_AVX512(op)
#endif
#if defined(MDS_HAVE_AVX2)
#define MDS_PICK_AVX2(op) \
  if (isa == kAvx2) return avx2::op(args);
#else
#define MDS_PICK_AVX2(op)
#endif
#define MDS_DISPATCH(op, Args)                             \
  void op(const Args& args) {                              \
    const int isa = chosen().load(std::memory_order_relaxed); \
    (void)isa;                                             \
    MDS_PICK_AVX512(op)                                    \
    MDS_PICK_AVX2(op)                                      \
    base::op(args);                                        \
  }
MDS_DISPATCH(sample_cpu, SampleArgs)
MDS_DISPATCH(lowdisc_timesteps_cpu, TimestepArgs)
MDS_DISPATCH(forward_mask_cpu, ForwardMaskArgs)
MDS_DISPATCH(masked_nll_cpu, MaskedNllArgs)

}  // namespace mdsample
