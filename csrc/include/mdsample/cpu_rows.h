// Reading logits rows on the CPU, a chunk at a time, and the chunk reductions
// every *_cpu.cpp op shares. Included only by the per-ISA CPU files (it lives in
// their MDS_ISA namespace), so each instruction-set build vectorizes it anew.
#pragma once
#include <math.h>
#include <stdint.h>

#include "mdsample/online.h"
#include "sampling.h"

#ifndef MDS_ISA
#error "cpu_rows.h is for the per-ISA CPU builds (MDS_ISA unset)"
#endif

namespace mdsample {
namespace MDS_ISA {

inline float to_float(float v) { return v; }
inline float to_float(double v) { return float(v); }
inline float to_float(_Float16 v) { return float(v); }
struct BF16 {
  uint16_t bits;
};
inline float to_float(BF16 v) { return bits_to_float(int32_t(v.bits) << 16); }

// Calls f(T{}) with T the element type of a DType code: each op's one switch
// from the launch's dtype to its row template.
template <class F>
void with_element_type(int dtype, F&& f) {
  switch (dtype) {
    case kFloat32: return f(float{});
    case kFloat16: return f(_Float16{});
    case kBFloat16: return f(BF16{});
    case kFloat64: return f(double{});
  }
}

// One row of logits (and, with CFG, the unconditional row) as fp32 scores.
template <typename T>
struct RowReader {
  const T* logits;
  const T* guidance;  // null: no CFG
  float w1;           // guidance_scale + 1
  int64_t exclude;    // token whose score is -inf; -1: none

  // Load: scores of tokens [lo, lo + n) into buf.
  void load(int64_t lo, int64_t n, float* buf) const {
    const T* l = logits + lo;
    if (guidance) {
      const T* u = guidance + lo;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) buf[i] = guided_score(to_float(l[i]), to_float(u[i]), w1);
    } else {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) buf[i] = to_float(l[i]);
    }
    if (exclude >= lo && exclude < lo + n) buf[exclude - lo] = -INFINITY;
  }
};

// The chunk reductions are kept out of line: inlined into the row loop of a
// parallel region, GCC 12 leaves their omp simd loops scalar (measured 2-4x
// slower); one call per chunk costs nothing.

// max of buf; sets *bad when buf holds NaN or +inf.
__attribute__((noinline)) inline float chunk_max(const float* buf, int64_t n, int* bad) {
  float m = -INFINITY;
  int flag = 0;
#pragma omp simd reduction(max : m) reduction(| : flag)
  for (int64_t i = 0; i < n; ++i) {
    const float v = buf[i];
    flag |= (v != v) | (v == INFINITY);
    m = v > m ? v : m;
  }
  *bad |= flag;
  return m;
}

// sum exp((buf_i - gmax) * scale). The difference is taken before scaling so a
// tiny temperature (huge scale) cannot overflow the scores themselves.
__attribute__((noinline)) inline float chunk_sumexp(const float* buf, int64_t n, float scale, float gmax) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += exp_nonpos((buf[i] - gmax) * scale);
  return s;
}

// sum weight_f64 (online.h): chunk_sumexp of a row at an extreme temperature.
inline float chunk_sumexp_f64(const float* buf, int64_t n, double t, float gmax) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += double(weight_f64(buf[i], gmax, t));
  return float(s);
}

}  // namespace MDS_ISA
}  // namespace mdsample
