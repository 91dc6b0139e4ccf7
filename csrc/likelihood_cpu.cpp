// CPU backend of the likelihood ops: lowdisc_timesteps, forward_mask, masked_nll.
//
// The algorithms are specified in mdsample/reference/likelihood.py; the element
// math is shared with the CUDA kernels through mdsample/likelihood_math.h.
//
// masked_nll reads each masked row of logits once, kChunk tokens at a time into
// an L1-resident buffer, and folds every chunk into an online max and sum of exp
// of the scores other than the target's, which joins at the end (nll_from_rest,
// mdsample/likelihood_math.h); unmasked rows are never read and nothing of size
// [B, L, V] is allocated. Per-row values go to an [N] buffer that is then summed
// per sequence in double, in row order, so the result does not depend on the
// thread count.
//
// This file is compiled once per instruction set (MDS_ISA = base / avx2, see
// CMakeLists.txt) and picked at run time by cpu_dispatch.cpp.
#include <math.h>
#include <stdint.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "likelihood.h"
#include "mdsample/cpu_rows.h"
#include "mdsample/likelihood_math.h"
#include "mdsample/online.h"
#include "mdsample/philox.h"

#ifndef MDS_ISA
#define MDS_ISA base
#endif

namespace mdsample {
namespace MDS_ISA {
namespace {

// ---- lowdisc_timesteps ----

void timesteps(const TimestepArgs& a) {
  for (int64_t g = 0; g < a.n_lattices; ++g) {
    const uint64_t off = uint64_t(a.offset[g]);
    // The shifted lattice shares one uniform (position 0); the others draw one per point.
    const double shared = timestep_uniform(uint64_t(a.seed), off, 0);
    for (int64_t i = 0; i < a.n; ++i) {
      const double u = a.mode == kShifted ? shared : timestep_uniform(uint64_t(a.seed), off, uint64_t(i));
      a.out[g * a.n + i] = eps_map(lattice_point(a.mode, u, i, a.n), a.eps);
    }
  }
}

// ---- forward_mask ----

inline uint64_t position_of(const ForwardMaskArgs& a, int64_t r) {
  return a.position ? uint64_t(a.position[r]) : uint64_t(r);
}

inline bool maskable(const ForwardMaskArgs& a, int64_t r) { return !a.maskable || a.maskable[r]; }

void mask_row_bernoulli(const ForwardMaskArgs& a, int64_t b) {
  const uint64_t seed = uint64_t(a.seed[b]), off = uint64_t(a.offset[b]);
  const double p = a.prob[b];
  for (int64_t r = b * a.length; r < (b + 1) * a.length; ++r) {
    const bool hit = maskable(a, r) && forward_mask_uniform(seed, off, position_of(a, r)) < p;
    a.out[r] = hit ? a.mask_id : a.x0[r];
  }
}

// Masks the count[b] maskable tokens of smallest (uniform, index): a uniformly
// random subset of that size, since the uniforms are i.i.d.
void mask_row_count(const ForwardMaskArgs& a, int64_t b, std::vector<std::pair<double, int64_t>>& keys) {
  const uint64_t seed = uint64_t(a.seed[b]), off = uint64_t(a.offset[b]);
  const int64_t lo = b * a.length, hi = lo + a.length;
  keys.clear();
  for (int64_t r = lo; r < hi; ++r) {
    a.out[r] = a.x0[r];
    if (maskable(a, r)) keys.emplace_back(forward_mask_uniform(seed, off, position_of(a, r)), r);
  }
  const int64_t k = std::min<int64_t>(a.count[b], int64_t(keys.size()));
  if (k <= 0) return;
  // Pairs compare by key, then index: the tie rule of every backend.
  std::nth_element(keys.begin(), keys.begin() + (k - 1), keys.end());
  const std::pair<double, int64_t> kth = keys[k - 1];
  for (const auto& kr : keys)
    if (kr <= kth) a.out[kr.second] = a.mask_id;
}

// ---- masked_nll ----

// -log softmax(g)[target] of one row in one read: the other scores' chunk max and
// sum of exp, merged online, then nll_from_rest; NaN for a NaN / +inf score or a row
// with no finite score.
template <typename T>
float row_nll(const RowReader<T>& row, int64_t vocab, int64_t target, float* buf) {
  if (target < 0 || target >= vocab) return NAN;
  float m = -INFINITY, s = 0.0f;  // of the scores other than the target's
  float target_score = -INFINITY;
  int bad = 0;
  for (int64_t lo = 0; lo < vocab; lo += kChunk) {
    const int64_t n = std::min(kChunk, vocab - lo);
    row.load(lo, n, buf);
    if (target >= lo && target < lo + n) {
      target_score = buf[target - lo];
      buf[target - lo] = -INFINITY;
    }
    const float m_c = chunk_max(buf, n, &bad);
    if (m_c == -INFINITY) continue;
    const float s_c = chunk_sumexp(buf, n, 1.0f, m_c);
    const float joint = m_c > m ? m_c : m;
    s = (s > 0.0f ? s * exp_nonpos(m - joint) : 0.0f) + s_c * exp_nonpos(m_c - joint);
    m = joint;
  }
  if (bad) return NAN;
  return nll_from_rest(target_score, m, s);
}

template <typename T>
void masked_nll_rows(const MaskedNllArgs& a) {
  const int64_t n_rows = a.n_seqs * a.length;
  std::vector<float> row_value(n_rows);
#pragma omp parallel
  {
    std::vector<float> buf(kChunk);
#pragma omp for schedule(dynamic, 16)
    for (int64_t r = 0; r < n_rows; ++r) {
      const float w = a.weight ? a.weight[r] : 1.0f;
      if (a.xt[r] != a.mask_id || w == 0.0f) {
        row_value[r] = 0.0f;
        continue;
      }
      const RowReader<T> row{
          static_cast<const T*>(a.logits) + a.row_offsets[r],
          a.guidance ? static_cast<const T*>(a.guidance) + a.guidance_offsets[r] : nullptr,
          a.guidance_scale + 1.0f, a.exclude};
      row_value[r] = w * row_nll(row, a.vocab, a.target[r], buf.data());
    }
  }
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < a.n_seqs; ++b) {
    double acc = 0.0;
    for (int64_t i = 0; i < a.length; ++i) acc += double(row_value[b * a.length + i]);
    a.out[b] = float(acc);
  }
}

}  // namespace

void lowdisc_timesteps_cpu(const TimestepArgs& a) { timesteps(a); }

void forward_mask_cpu(const ForwardMaskArgs& a) {
#pragma omp parallel
  {
    std::vector<std::pair<double, int64_t>> keys;
#pragma omp for schedule(dynamic, 4)
    for (int64_t b = 0; b < a.batch; ++b) {
      if (a.count)
        mask_row_count(a, b, keys);
      else
        mask_row_bernoulli(a, b);
    }
  }
}

void masked_nll_cpu(const MaskedNllArgs& a) {
  with_element_type(a.dtype, [&](auto t) { masked_nll_rows<decltype(t)>(a); });
}

}  // namespace MDS_ISA
}  // namespace mdsample
