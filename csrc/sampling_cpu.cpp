// CPU backend of the sampling ops: sample_categorical and unmask_step.
//
// The algorithm is the two-level inverse-CDF draw specified in
// mdsample/reference/sampling.py. Each row is read from memory once, a chunk
// of kChunk tokens at a time into an L1-resident buffer; every pass over the
// buffer is a straight loop the compiler turns into SIMD (the fp32 exp is
// branch-free, csrc/include/mdsample/online.h). Only the chosen chunk is read a
// second time, from cache, to find the token inside it.
//
// This file is compiled once per instruction set (MDS_ISA = base / avx2, see
// CMakeLists.txt) and picked at run time by cpu_dispatch.cpp.
#include <math.h>
#include <omp.h>
#include <stdint.h>

#include <vector>

#include "mdsample/cpu_rows.h"
#include "mdsample/online.h"
#include "mdsample/per_row.h"
#include "sampling.h"

#ifndef MDS_ISA
#define MDS_ISA base
#endif

namespace mdsample {
namespace MDS_ISA {
namespace {

// Per-thread scratch: the chunk buffer and the per-chunk maxima and sums.
struct Scratch {
  std::vector<float> buf = std::vector<float>(kChunk);
  std::vector<float> chunk_maxima, chunk_sums;
  std::vector<double> chunk_weight;
};

// Softmax statistics of scores buf_i * scale over one chunk whose max score is gmax
// (OnlineStats: in raw-score units).
__attribute__((noinline)) OnlineStats chunk_stats(const float* buf, int64_t n, float scale, float gmax) {
  if (gmax == -INFINITY) return online_empty();
  float below = 0.0f, sx = 0.0f, second = -INFINITY;
  int ties = 0;
#pragma omp simd reduction(+ : below, sx, ties) reduction(max : second)
  for (int64_t i = 0; i < n; ++i) {
    const float d = (buf[i] - gmax) * scale;
    const float e = exp_nonpos(d);
    below += buf[i] < gmax ? e : 0.0f;
    sx += e > 0.0f ? e * d : 0.0f;
    ties += buf[i] == gmax;
    second = (buf[i] < gmax && buf[i] > second) ? buf[i] : second;
  }
  return online_slice(gmax, below, ties, sx, ties >= 2 ? gmax : second);
}

// First index whose running sum of w exceeds target; the last positive weight if
// rounding leaves the target unreached.
template <typename W>
inline int64_t first_over(const W* w, int64_t n, double target) {
  double cum = 0.0;
  int64_t last_positive = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (w[i] > 0) last_positive = i;
    cum += double(w[i]);
    if (cum > target) return i;
  }
  return last_positive;
}

inline void write_stats(float* out, const RowStats& st) {
  out[0] = st.logprob;
  out[1] = st.prob;
  out[2] = st.margin;
  out[3] = st.entropy;
}

inline void write_nan_stats(float* out) {
  for (int k = 0; k < 4; ++k) out[k] = NAN;
}

template <typename T>
void sample_row(const SampleArgs& a, int64_t r, Scratch& sc) {
  float* stats = a.stats ? a.stats + 4 * r : nullptr;
  // Which rows are drawn: the reveal coin (unmask_step) or `active`.
  const RowGate gate = row_gate(a, r);
  if (!gate.drawn) {
    a.out[r] = gate.passthrough;
    if (stats) write_nan_stats(stats);
    return;
  }

  const int64_t vocab = a.vocab;
  const RowReader<T> reader{
      static_cast<const T*>(a.logits) + per_row(a.row_offsets, r * a.row_stride, r),
      a.guidance ? static_cast<const T*>(a.guidance) + per_row(a.guidance_offsets, r * a.guidance_row_stride, r)
                 : nullptr,
      a.guidance_scale + 1.0f, a.exclude};
  const float temp = per_row(a.temperature, a.temperature_val, r);
  const bool greedy = !(temp > 0.0f);
  const bool f64 = f64_weights(temp);  // rare: an extreme finite temperature
  const float inv_t = greedy ? 0.0f : inv_temperature(temp);
  const float inv_ts = stats ? inv_temperature(per_row(a.stats_temperature, a.stats_temperature_val, r)) : 0.0f;
  const int64_t n_chunks = (vocab + kChunk - 1) / kChunk;
  float* buf = sc.buf.data();

  // Pass over the row: per-chunk max and sum of exp (or the running argmax),
  // and the softmax statistics when asked.
  int bad = 0;
  float best = -INFINITY;
  int64_t best_index = -1;
  OnlineStats st = online_empty();
  for (int64_t c = 0; c < n_chunks; ++c) {
    const int64_t lo = c * kChunk, n = vocab - lo < kChunk ? vocab - lo : kChunk;
    reader.load(lo, n, buf);
    const float gmax = chunk_max(buf, n, &bad);
    if (greedy) {
      if (gmax > best) {  // strict: ties keep the lowest index
        int64_t i = 0;
        while (buf[i] != gmax) ++i;
        best = gmax;
        best_index = lo + i;
      }
    } else {
      sc.chunk_maxima[c] = gmax;
      sc.chunk_sums[c] = gmax == -INFINITY ? 0.0f
                         : f64 ? chunk_sumexp_f64(buf, n, double(temp), gmax)
                               : chunk_sumexp(buf, n, inv_t, gmax);
    }
    if (stats) st = online_merge(st, chunk_stats(buf, n, inv_ts, gmax), inv_ts);
  }

  int64_t token = -1;
  float g_token = -INFINITY;
  if (greedy) {
    token = bad ? -1 : best_index;
    g_token = best;
  } else if (!bad) {
    // Level 1: chunk by inverse CDF of W_c = S_c exp((M_c - M) / T).
    float big_m = -INFINITY;
    for (int64_t c = 0; c < n_chunks; ++c) big_m = sc.chunk_maxima[c] > big_m ? sc.chunk_maxima[c] : big_m;
    if (big_m != -INFINITY) {
      double total = 0.0;
      for (int64_t c = 0; c < n_chunks; ++c) {
        const double w = sc.chunk_sums[c] > 0.0f
                             ? double(sc.chunk_sums[c]) * exp((double(sc.chunk_maxima[c]) - double(big_m)) / double(temp))
                             : 0.0;
        sc.chunk_weight[c] = w;
        total += w;
      }
      const Philox4 words = row_words(a, r, kDomainToken);
      const double u1 = uniform52(words.w[0], words.w[1]);
      const double u2 = uniform52(words.w[2], words.w[3]);
      // c >= 0: the maximum's chunk weighs >= 1 (its e^0), and with 1/T clamped no weight is NaN.
      const int64_t c = first_over(sc.chunk_weight.data(), n_chunks, u1 * total);
      // Level 2: token inside chunk c, its weights summed again in double so
      // the draw inside it is exact to double precision.
      const int64_t lo = c * kChunk, n = vocab - lo < kChunk ? vocab - lo : kChunk;
      reader.load(lo, n, buf);
      const float m = sc.chunk_maxima[c];
      if (f64) {
        for (int64_t i = 0; i < n; ++i) buf[i] = weight_f64(buf[i], m, double(temp));
      } else {
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) buf[i] = exp_nonpos((buf[i] - m) * inv_t);
      }
      double inner_total = 0.0;
      for (int64_t i = 0; i < n; ++i) inner_total += double(buf[i]);
      const int64_t pick = first_over(buf, n, u2 * inner_total);
      token = lo + pick;
      reader.load(token, 1, &g_token);
    }
  }
  a.out[r] = token;
  if (stats) {
    if (token < 0) {
      write_nan_stats(stats);
    } else {
      write_stats(stats, online_finish(st, g_token, inv_ts));
    }
  }
}

// Threads worth waking: one per ~1M logits. Waking an idle team costs more
// than a few small rows take, and much more on a loaded machine.
inline int worth_threads(int64_t n_rows, int64_t vocab) {
  const int64_t by_work = (n_rows * vocab) >> 20;
  const int64_t most = omp_get_max_threads();
  return int(by_work < 1 ? 1 : (by_work < most ? by_work : most));
}

template <typename T>
void sample_rows(const SampleArgs& a) {
  const int64_t n_chunks = (a.vocab + kChunk - 1) / kChunk;
  const int threads = worth_threads(a.n_rows, a.vocab);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    Scratch sc;
    sc.chunk_maxima.resize(n_chunks);
    sc.chunk_sums.resize(n_chunks);
    sc.chunk_weight.resize(n_chunks);
#pragma omp for schedule(dynamic, 4)
    for (int64_t r = 0; r < a.n_rows; ++r) sample_row<T>(a, r, sc);
  }
}

}  // namespace

void sample_cpu(const SampleArgs& a) {
  with_element_type(a.dtype, [&](auto t) { sample_rows<decltype(t)>(a); });
}

}  // namespace MDS_ISA
}  // namespace mdsample
