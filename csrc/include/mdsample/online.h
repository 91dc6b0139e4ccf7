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

// Running softmax statistics of one row (or a slice of it) for scores b_i:
//   m  = max b_i,  s = sum exp(b_i - m),  sx = sum exp(b_i - m) (b_i - m),
//   top1 / top2 = the two largest scores (top2 may equal top1 on a tie).
// logsumexp = m + log s; entropy = log s - sx / s.
struct OnlineStats {
  float m;
  float s;
  float sx;
  float top1;
  float top2;
};

MDS_HD OnlineStats online_empty() {
  return OnlineStats{-INFINITY, 0.0f, 0.0f, -INFINITY, -INFINITY};
}

MDS_HD OnlineStats online_merge(OnlineStats a, OnlineStats b) {
  OnlineStats r;
  r.m = a.m > b.m ? a.m : b.m;
  if (r.m == -INFINITY) return a;
  // Shifting a slice from its own max to the joint max multiplies its sum by
  // e^d and adds d to every (b_i - m) term.
  const float da = a.m - r.m, db = b.m - r.m;
  const float ea = a.s > 0.0f ? exp_nonpos(da) : 0.0f;
  const float eb = b.s > 0.0f ? exp_nonpos(db) : 0.0f;
  r.s = a.s * ea + b.s * eb;
  r.sx = (a.s > 0.0f ? ea * (a.sx + da * a.s) : 0.0f) +
         (b.s > 0.0f ? eb * (b.sx + db * b.s) : 0.0f);
  const float hi = a.top1 > b.top1 ? a.top1 : b.top1;
  const float lo = a.top1 > b.top1 ? b.top1 : a.top1;
  float t2 = a.top2 > b.top2 ? a.top2 : b.top2;
  r.top1 = hi;
  r.top2 = lo > t2 ? lo : t2;
  return r;
}

MDS_HD float online_logsumexp(OnlineStats a) { return a.m + logf(a.s); }
MDS_HD float online_entropy(OnlineStats a) { return logf(a.s) - a.sx / a.s; }

}  // namespace mdsample
