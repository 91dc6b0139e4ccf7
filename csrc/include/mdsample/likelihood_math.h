// Element-level math of the likelihood ops (lowdisc_timesteps, forward_mask,
// masked_nll), shared by the CPU and CUDA kernels and mirrored line for line by
// mdsample/reference/likelihood.py and mdsample/triton/likelihood.py.
#pragma once
#include <math.h>
#include <stdint.h>

#include "mdsample/philox.h"

namespace mdsample {

enum TimestepMode : int { kStratified = 0, kShifted = 1, kIid = 2 };

// Point i of an n-point lattice on [0, 1) before the eps map, from the uniform u
// of its draw (position i for stratified / iid, position 0 for shifted):
//   stratified  (u_i + i) / n      one uniform per stratum [i/n, (i+1)/n)
//   shifted     (u_0 + i/n) mod 1  one shared shift of the regular lattice
//   iid         u_i
// The sums are written in this order everywhere so every backend rounds alike.
MDS_HD double lattice_point(int mode, double u, int64_t i, int64_t n) {
  if (mode == kStratified) return (u + double(i)) / double(n);
  if (mode == kShifted) {
    const double x = u + double(i) / double(n);
    return x >= 1.0 ? x - 1.0 : x;  // x < 2, so one subtraction is the mod (and exact)
  }
  return u;
}

// t = (1 - eps) t~ + eps (MDLM _sample_t), as a product then a sum: no FMA, so
// the CPU build (-ffp-contract=off), the CUDA kernels (__dmul_rn / __dadd_rn:
// nvcc would otherwise contract the expression into one FMA) and the float64
// reference agree bitwise.
MDS_HD double eps_map(double unit, double eps) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(__dmul_rn(1.0 - eps, unit), eps);
#else
  return (1.0 - eps) * unit + eps;
#endif
}

// A token's forward-mask uniform: the centred uniform of words 0-1 of its
// (seed, offset, position) draw in domain FORWARD_MASK. The Bernoulli variant
// masks iff u < p; the exact-count variant masks the k smallest u (ties, which
// need two equal 52-bit draws, go to the lowest index), so both mask "the
// tokens with the smallest uniforms".
MDS_HD double forward_mask_uniform(uint64_t seed, uint64_t offset, uint64_t position) {
  const Philox4 w = draw_words(seed, offset, position, kDomainForwardMask);
  return uniform52(w.w[0], w.w[1]);
}

// The 52-bit integer k of that uniform, u = (k + 0.5) 2^-52: u's order in an
// integer, for the exact-count variant's radix select on the GPU.
MDS_HD uint64_t forward_mask_key(uint64_t seed, uint64_t offset, uint64_t position) {
  const Philox4 w = draw_words(seed, offset, position, kDomainForwardMask);
  return uniform52_bits(w.w[0], w.w[1]);
}

// The uniform of point i of a timestep lattice (the shifted lattice passes i = 0).
MDS_HD double timestep_uniform(uint64_t seed, uint64_t offset, uint64_t position) {
  const Philox4 w = draw_words(seed, offset, position, kDomainTimestep);
  return uniform52(w.w[0], w.w[1]);
}

// masked_nll's -log softmax(g)[t] from the target's score g_t and (m, s): the max and the
// sum of exp(g - m) over the row's other scores (-inf and 0 when there are none). The
// target stays out of s, so that a target of p = 1 - 1e-6 gives 1e-6 (log1p of the rest);
// a sum holding the target's own 1 would round the rest away in fp32. NaN for a NaN or
// +inf score (in s or g_t) and for a row with no finite score.
MDS_HD float nll_from_rest(float g_t, float m, float s) {
  if (g_t == INFINITY || (g_t == -INFINITY && m == -INFINITY)) return NAN;
  if (g_t >= m) return log1pf(s * expf(m - g_t));
  return (m - g_t) + logf(s + expf(g_t - m));  // g_t = -inf: +inf, the target's p = 0
}

}  // namespace mdsample
