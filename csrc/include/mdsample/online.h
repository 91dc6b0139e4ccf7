// Element-level float math shared by the CPU and CUDA kernels: an fp32 exp that
// vectorizes (no calls, no branches), and the online max / logsumexp / entropy
// state with its merge, so a row may be reduced in any chunking and combined.
#pragma once
#include <math.h>
#include <stdint.h>

#include "mdsample/philox.h"

namespace mdsample {

MDS_HD float bits_to_float(int32_t b) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(b);
#else
  return __builtin_bit_cast(float, b);  // memcpy here would stop GCC vectorizing
#endif
}

MDS_HD int32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_int(f);
#else
  return __builtin_bit_cast(int32_t, f);
#endif
}

// exp(x) for x <= 0 in fp32, within 2 ulp, exp(x) = 0 below -87 (p < 1e-37 is
// far under any probability we promise) and for x = -inf. Cody-Waite reduction
// x = n ln2 + r, |r| <= ln2/2, then a degree-7 Taylor polynomial (truncation
// 6e-9 relative). Straight-line code so compilers emit SIMD for it.
MDS_HD float exp_nonpos(float x) {
  const float xc = x < -87.0f ? -87.0f : (x > 0.0f ? 0.0f : x);
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float kf = xc * 1.44269504088896341f + shifter;
  const int32_t n = float_to_bits(kf) - float_to_bits(shifter);
  const float nf = kf - shifter;
  float r = xc - nf * 0.693145751953125f;  // ln2 high part, exact times n
  r = r - nf * 1.42860682030941723e-06f;   // ln2 low part
  float p = 1.98412698e-4f;
  p = p * r + 1.38888889e-3f;
  p = p * r + 8.33333333e-3f;
  p = p * r + 4.16666667e-2f;
  p = p * r + 1.66666667e-1f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const float scale = bits_to_float((n + 127) << 23);
  return x < -87.0f ? 0.0f : p * scale;
}

// Classifier-free guidance score l_u + (w + 1)(l_c - l_u), with -inf on either
// side staying -inf: a token masked out of either pass stays out (the formula
// alone gives NaN or +inf there). w1 = w + 1.
MDS_HD float guided_score(float c, float u, float w1) {
  return (c == -INFINITY || u == -INFINITY) ? -INFINITY : u + w1 * (c - u);
}

// Running softmax statistics of one row (or a slice of it) for scores b_i = g_i / T_s
// (scale = 1 / T_s), kept in units of the raw scores g so that no score is ever scaled
// on its own: at a tiny T_s, g / T_s is huge and its fp32 rounding (an ulp of 1e6 is
// 0.06) would swamp the differences that make the probabilities.
//   m = max g_i,  s = sum exp((g_i - m) scale) = 1 + tail,  sx = sum exp((g_i - m) scale) (g_i - m) scale,
//   top1 / top2 = the two largest g_i (top2 equals top1 on a tie).
// The maximum's own 1 stays out of the sum: tail adds the other tokens (a tie of the max
// adds its 1), so log s = log1p(tail) keeps a tail far under fp32's ulp of 1 (a token of
// p = 1 - 1e-6 has log p = -1e-6, not 0). A slice with no finite score has m = -inf.
// logsumexp of b = m scale + log s; entropy = log s - sx / s.
struct OnlineStats {
  float m;
  float tail;
  float sx;
  float top1;
  float top2;
};

MDS_HD OnlineStats online_empty() {
  return OnlineStats{-INFINITY, 0.0f, 0.0f, -INFINITY, -INFINITY};
}

// The state of a slice from its max m, the sum of exp((g_i - m) scale) over its scores
// below m, the number of its scores equal to m (>= 1), sx and top2.
MDS_HD OnlineStats online_slice(float m, float below, int ties, float sx, float top2) {
  return OnlineStats{m, below + float(ties - 1), sx, m, top2};
}

MDS_HD OnlineStats online_merge(OnlineStats a, OnlineStats b, float scale) {
  if (b.m == -INFINITY) return a;
  if (a.m == -INFINITY) return b;
  // Shifting a slice from its own max to the joint max multiplies its sum 1 + tail by
  // e^d and adds d to every scaled (g_i - m) term; the slice that holds the joint max
  // keeps its tail, the other's whole sum joins it.
  // (Field by field: selecting whole structs by reference put them in local memory on CUDA.)
  const bool a_top = a.m >= b.m;
  const float hi_m = a_top ? a.m : b.m, lo_m = a_top ? b.m : a.m;
  const float hi_tail = a_top ? a.tail : b.tail, lo_tail = a_top ? b.tail : a.tail;
  const float hi_sx = a_top ? a.sx : b.sx, lo_sx = a_top ? b.sx : a.sx;
  const float hi_top2 = a_top ? a.top2 : b.top2;
  const float d = (lo_m - hi_m) * scale;
  const float e = exp_nonpos(d);
  OnlineStats r;
  r.m = hi_m;
  r.tail = hi_tail + e * (1.0f + lo_tail);
  // e = 0 drops a slice whole: at a huge scale d may be -inf, and 0 * -inf is NaN.
  r.sx = hi_sx + (e > 0.0f ? e * (lo_sx + d * (1.0f + lo_tail)) : 0.0f);
  r.top1 = hi_m;
  r.top2 = lo_m > hi_top2 ? lo_m : hi_top2;  // top1 = m in every slice
  return r;
}

// What the ops report for the drawn token of raw score g: log p, p, p1 - p2, entropy.
struct RowStats {
  float logprob, prob, margin, entropy;
};

MDS_HD RowStats online_finish(OnlineStats a, float g, float scale) {
  const float log_s = log1pf(a.tail);
  const float s = 1.0f + a.tail;
  const float logprob = (g - a.m) * scale - log_s;
  // p1 - p2 = -expm1((top2 - top1) scale) / s, top1 = m: at a near-tie 1 - e^gap would cancel
  // (a gap of 1e-7 came out 19% off); expm1f(-inf) = -1.
  const float margin = -expm1f((a.top2 - a.m) * scale) / s;
  return RowStats{logprob, expf(logprob), margin, log_s - a.sx / s};
}

// 1 / T in the kernels' fp32, for T > 0: clamped to the normal range, so that a subnormal T
// gives 0 * inv = 0 at the maximum (not 0 * inf = NaN) and a T near the fp32 maximum keeps
// -inf * inv = -inf (not -inf * 0 = NaN, where denormals flush to zero).
MDS_HD float inv_temperature(float t) {
  const float inv = 1.0f / t;
  return inv > 3.0e38f ? 3.0e38f : (inv < 1.17549435e-38f ? 1.17549435e-38f : inv);
}

// Whether a sampled row's weights exp((g - m) / T) need weight_f64: at a finite T below 2^-127
// the fp32 1/T nears inv_temperature's clamp, and above 2^120 a gap g - m past fp32's range
// (-inf in fp32) still matters after dividing by T (e^(-3.4e38 / T) > e^-87, exp_nonpos's floor).
// T = +inf keeps the clamped scale (-inf / inf would be NaN). Powers of two, so the Triton
// kernel's comparison in float64 draws the same line.
MDS_HD bool f64_weights(float t) { return t > 0.0f && isfinite(t) && !(t >= 0x1p-127f && t <= 0x1p120f); }

// exp((g - m) / T) with the difference and the division in double: the weights of such rows.
MDS_HD float weight_f64(float g, float m, double t) { return float(exp((double(g) - double(m)) / t)); }

}  // namespace mdsample
