// CUDA backend of the sampling ops: sample_categorical and unmask_step.
//
// The algorithm is the two-level inverse-CDF draw specified in
// mdsample/reference/sampling.py, computed as csrc/sampling_cpu.cpp computes it
// and on the same headers (Philox, uniform52, exp_nonpos, OnlineStats):
//   pass 1   every chunk c of kChunk = 2048 tokens: M_c = max g, S_c = sum
//            exp_nonpos((g - M_c) / T) in fp32, the first argmax (T = 0), the
//            bad-row flags and, when asked, the softmax statistics;
//   level 1  W_c = S_c exp((M_c - M) / T) in float64, the first chunk whose
//            running sum exceeds u1 * sum W;
//   level 2  that chunk read again, w_i = exp_nonpos((g_i - M_c) / T) summed in
//            float64, the first token whose running sum exceeds u2 * sum w.
// At the extreme temperatures of f64_weights (online.h), where the fp32 1/T is
// clamped, every exp((g - M) / T) is taken in double (struct Weights).
//
// Work layout.
//  - A warp owns one chunk at a time, in two parts of 1024 tokens (four of 512
//    for fp64): each lane holds 32 fp32 scores of the part in registers, read
//    in the logits' own dtype with 16-byte loads (4 loads of 8 bf16, 8 of 4
//    fp32, ...; rows off a 16-byte boundary take the widest loads their
//    alignment allows: mdsample/cuda_loads.h), all in flight at once. Max,
//    sums and statistics are warp shuffles; the parts merge as online max /
//    sum-exp states. No fp32 copy of the logits and no [N, V] temporary exist
//    anywhere.
//  - The warp's result is one record of its row's chunk table: [fields][C]
//    floats (M_c, S_c or the argmax, and three statistics words). Every chunk
//    is reduced the same way whatever the launch shape, and the row is finished
//    from the table in one fixed order, so tokens and statistics do not depend
//    on the batch or on how the row was split (DESIGN.md §3).
//  - Many rows: one CTA of up to 4 warps per row, table in shared memory.
//    Few rows (decode shapes, too few warps to cover the GPU): a row's chunks are
//    split across several CTAs that write their records to global scratch; the
//    last CTA to arrive (atomic counter) copies the table into shared memory and
//    finishes the row. Either way HBM is read once: the finish reads the table
//    and one chunk, which is normally still in L2.
//  - Finish (one warp): row max, argmax, bad flag and statistics merge over the
//    table; the level-1 pick (float64 scan over the lanes' blocks of chunks);
//    the level-2 pick over the chosen chunk re-read with each lane taking 64
//    consecutive tokens, so one float64 warp scan gives every running sum.
// Rows that are not drawn (active == 0, or a reveal coin that says no) return
// their carry-over token without reading a logit. Indices are int64 throughout.
// The hot loop has no __syncthreads; the CTA meets once, after pass 1.
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include <algorithm>
#include <mutex>
#include <stdexcept>
#include <string>

#include "mdsample/cuda_loads.h"
#include "mdsample/device.h"
#include "mdsample/likelihood_math.h"
#include "mdsample/online.h"
#include "mdsample/per_row.h"
#include "sampling.h"

namespace mdsample {

namespace {

using cuda_loads::alignment;
using cuda_loads::BF16;
using cuda_loads::F16;
using cuda_loads::F32;
using cuda_loads::F64;
using cuda_loads::load_vec;
using cuda_loads::vec_len;
using cuda_loads::with_load_width;

constexpr int kWarp = 32;
constexpr unsigned kAllLanes = 0xffffffffu;
constexpr int kMaxWarps = 8;  // warps per CTA, at most
// Warps of a CTA that owns a whole row. Fewer, smaller CTAs per SM keep the SM
// streaming while one of them finishes its row on a single warp.
constexpr int kRowWarps = 4;
constexpr int kMaxThreads = kMaxWarps * kWarp;
// Two CTAs of 8 warps per SM: caps the kernel at 128 registers per thread,
// which every variant fits without spilling (ptxas -v, sm_80 and sm_90).
constexpr int kMinCtasPerSm = 2;
constexpr int kPerLane = int(kChunk) / kWarp;  // 64 tokens per lane per chunk
static_assert(kChunk % (kWarp * 8) == 0, "a chunk must split into whole 16-byte loads per lane");

// Warps worth keeping busy per SM (the resident limit at 128 registers): with
// a part (2 KiB of bf16) in flight per warp they cover the HBM latency of an
// SM. Fewer warps than this over the whole grid and the rows' chunks are split
// across CTAs.
constexpr int kTargetWarpsPerSm = 16;

// Fields of a chunk record; each is a [C] float array of the row's table.
enum Field : int {
  kFieldMax = 0,    // M_c (raw score); NaN marks a bad chunk (NaN or +inf score)
  kFieldSum = 1,    // S_c at 1/T; for an argmax row (T = 0) the bits of the chunk's first argmax
  kFieldStTail = 2,  // statistics at 1/T_stats: tail, sx, top2 of csrc/include/mdsample/online.h
  kFieldStSx = 3,
  kFieldStTop2 = 4,
};
template <bool kStats>
__host__ __device__ constexpr int fields() { return kStats ? 5 : 2; }

// Pass 1 takes a chunk in parts (1024 tokens, 32 scores per lane; 512 for
// fp64, whose loads hold twice the registers): every load of a part is in
// flight at once and the registers stay under 128, for one extra exp per
// part when the parts merge.
template <class D>
__host__ __device__ constexpr int part_len() { return sizeof(typename D::Raw) == 8 ? kPerLane / 4 : kPerLane / 2; }

// Where element j of load step k of a lane sits in its chunk (element j is at
// slot + j): a warp's k-th step covers 512 consecutive bytes, fully
// coalesced, and a lane's tokens rise with (k, j), which the lowest-index
// argmax relies on.
template <class D>
__device__ __forceinline__ int slot(int k, int lane) {
  constexpr int kVec = vec_len<D>();
  return k * (kWarp * kVec) + lane * kVec;
}

// One logits row (and its guidance row) as the kernel reads it.
template <class D, bool kGuided>
struct Row {
  const typename D::Raw* logits;
  const typename D::Raw* guidance;
  float w1;         // guidance_scale + 1
  int64_t vocab;
  int64_t exclude;  // -1: none
  int align;        // largest power of two <= 16 dividing both rows' addresses (bytes)

  // Score of one token (level-2 statistics): the same value the chunk loads give.
  __device__ __forceinline__ float score(int64_t i) const {
    float g = D::cvt(__ldg(logits + i));
    if (kGuided) g = guided_score(g, D::cvt(__ldg(guidance + i)), w1);
    return i == exclude ? -INFINITY : g;
  }
};

// Scores of the kLen tokens [i0, i0 + kLen) (kLen a multiple of vec_len<D>(),
// i0 too) of the chunk at token lo with n tokens: guided, -inf past the
// vocabulary. Whole runs are vector loads, all issued before any is used;
// a run crossing the end of the row is element loads, each predicated on its
// index and addressed from the run's base plus a constant.
template <class D, bool kGuided, int kLen, class Place>
__device__ __forceinline__ void load_run(const Row<D, kGuided>& row, int64_t lo, int n, Place place, bool whole,
                                         float* v) {
  constexpr int kVec = vec_len<D>();
  constexpr int kSteps = kLen / kVec;
  const typename D::Raw* l = row.logits + lo;
  const typename D::Raw* u = kGuided ? row.guidance + lo : nullptr;
  if (whole) {
    with_load_width<D>(row.align, [&](auto bytes) {
      constexpr int kBytes = decltype(bytes)::value;
#pragma unroll
      for (int k = 0; k < kSteps; ++k) load_vec<D, kBytes>(l + place(k), v + k * kVec);
      if (kGuided) {
#pragma unroll
        for (int k = 0; k < kSteps; ++k) {
          float uu[kVec];
          load_vec<D, kBytes>(u + place(k), uu);
#pragma unroll
          for (int j = 0; j < kVec; ++j) v[k * kVec + j] = guided_score(v[k * kVec + j], uu[j], row.w1);
        }
      }
    });
  } else {
#pragma unroll
    for (int k = 0; k < kSteps; ++k) {
      const int s = place(k);
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        float x = -INFINITY;
        if (s + j < n) {
          x = D::cvt(__ldg(l + s + j));
          if (kGuided) x = guided_score(x, D::cvt(__ldg(u + s + j)), row.w1);
        }
        v[k * kVec + j] = x;
      }
    }
  }
}

// Tokens of the chunk starting at token lo: min(kChunk, V - lo).
__device__ __forceinline__ int chunk_len(int64_t vocab, int64_t lo) {
  return vocab - lo < kChunk ? int(vocab - lo) : int(kChunk);
}

// Pass 1: the lane's 32 scores g of part h of the chunk starting at token lo,
// in the strided layout; -inf at `exclude` and past the vocabulary.
template <class D, bool kGuided>
__device__ __forceinline__ void load_part(const Row<D, kGuided>& row, int64_t lo, int h, int lane,
                                          float (&g)[part_len<D>()]) {
  constexpr int kVec = vec_len<D>();
  constexpr int kPartLen = part_len<D>();
  constexpr int kPartTokens = kPartLen * kWarp;
  constexpr int kSteps = kPartLen / kVec;
  const int n = chunk_len(row.vocab, lo);
  const int k0 = h * kSteps;  // the part's first load step in the chunk
  load_run<D, kGuided, kPartLen>(row, lo, n, [lane, k0](int k) { return slot<D>(k0 + k, lane); },
                                 (h + 1) * kPartTokens <= n, g);
  // The excluded token (the mask token) is -inf: only the one part holding it pays.
  const int64_t part_lo = lo + int64_t(h) * kPartTokens;
  if (row.exclude >= part_lo && row.exclude < part_lo + kPartTokens) {
    const int e = int(row.exclude - lo);
#pragma unroll
    for (int k = 0; k < kSteps; ++k)
#pragma unroll
      for (int j = 0; j < kVec; ++j)
        if (slot<D>(k0 + k, lane) + j == e) g[k * kVec + j] = -INFINITY;
  }
}

// Level 2: lane l holds tokens [64 l, 64 l + 64) of the chosen chunk, taken in
// kSegments runs so only one run's weights are live at a time.
constexpr int kSegments = 4;
constexpr int kSegment = kPerLane / kSegments;

// weight_f64 out of line, so that the double exp's registers are not the fast
// path's (inlined into the lane loop it cost the bf16 kernel spills).
__device__ __noinline__ float weight_f64_call(float g, float m, float temp) { return weight_f64(g, m, double(temp)); }

// How a sampled row weighs a score g against a max m, w = exp((g - m) / T): by
// the clamped fp32 1/T, or at the extreme temperatures of f64_weights (online.h)
// with the difference and the division in double, as the CPU kernel does. The
// choice is the row's, so the branch is the same in every lane.
struct Weights {
  float inv_t;  // inv_temperature(T); 0 for an argmax row
  float temp;   // T
  bool f64;     // f64_weights(T)
  __device__ __forceinline__ float operator()(float g, float m) const {
    return f64 ? weight_f64_call(g, m, temp) : exp_nonpos((g - m) * inv_t);
  }
};

// Level-2 weights w of the kSegment tokens from i0 of the chunk at lo (0 at
// `exclude` and past the vocabulary), as the CPU kernel computes them.
template <class D, bool kGuided>
__device__ __forceinline__ void level2_weights(const Row<D, kGuided>& row, int64_t lo, int n, int i0, float m_c,
                                               const Weights& weigh, float (&w)[kSegment]) {
  constexpr int kVec = vec_len<D>();
  load_run<D, kGuided, kSegment>(row, lo, n, [i0](int k) { return i0 + k * kVec; }, i0 + kSegment <= n, w);
#pragma unroll
  for (int i = 0; i < kSegment; ++i) {
    const float g = lo + i0 + i == row.exclude ? -INFINITY : w[i];
    w[i] = weigh(g, m_c);
  }
}

// Asks L1 for the lane's 64 level-2 tokens from i0 (those inside the chunk's n),
// so that its segments, read one after the other, wait for L2 about once.
template <class D, bool kGuided>
__device__ __forceinline__ void prefetch_l1(const Row<D, kGuided>& row, int64_t lo, int n, int i0) {
  constexpr int kLine = 128 / int(sizeof(typename D::Raw));  // elements per 128-byte line
#pragma unroll
  for (int i = 0; i < kPerLane; i += kLine) {
    if (i0 + i < n) {
      prefetch_global_l1(row.logits + lo + i0 + i);
      if (kGuided) prefetch_global_l1(row.guidance + lo + i0 + i);
    }
  }
}

// ---- warp reductions (butterflies: every lane ends with the same bits) -----

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) v = fmaxf(v, __shfl_xor_sync(kAllLanes, v, d));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) v += __shfl_xor_sync(kAllLanes, v, d);
  return v;
}
__device__ __forceinline__ int warp_sum(int v) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) v += __shfl_xor_sync(kAllLanes, v, d);
  return v;
}
__device__ __forceinline__ int warp_min(int v) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) v = min(v, __shfl_xor_sync(kAllLanes, v, d));
  return v;
}
__device__ __forceinline__ int64_t warp_max(int64_t v) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) v = max(v, (int64_t)__shfl_xor_sync(kAllLanes, (long long)v, d));
  return v;
}
// A butterfly of online_merge. Its max and top-2 are the same in every lane; its
// sums may differ by an ulp between lanes (the order of a tie's two tails, and FMA
// contraction, are not symmetric), so only lane 0's state is used (the
// stats it stores); no lane decides anything from it.
__device__ __forceinline__ OnlineStats warp_merge(OnlineStats s, float scale) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) {
    const OnlineStats o{__shfl_xor_sync(kAllLanes, s.m, d), __shfl_xor_sync(kAllLanes, s.tail, d),
                        __shfl_xor_sync(kAllLanes, s.sx, d), __shfl_xor_sync(kAllLanes, s.top1, d),
                        __shfl_xor_sync(kAllLanes, s.top2, d)};
    s = online_merge(s, o, scale);
  }
  return s;
}
// Inclusive prefix sum over the lanes, in float64.
__device__ __forceinline__ double warp_inclusive_scan(double v, int lane) {
#pragma unroll
  for (int d = 1; d < kWarp; d <<= 1) {
    const double o = __shfl_up_sync(kAllLanes, v, d);
    if (lane >= d) v += o;
  }
  return v;
}

// ---- pass 1: one chunk's record ------------------------------------------

// Lane sums over one part whose max score is m: the draw sum at scale 1/T and
// the softmax statistics at 1/T_stats (chunk_stats of csrc/sampling_cpu.cpp).
// kShared: both scales are equal, so one exp serves both sums.
struct LaneSums {
  float draw = 0.0f;  // sum exp((g - m) / T)
  float s = 0.0f, sx = 0.0f, second = -INFINITY;  // s: the scores below m (online_slice)
  int ties = 0;
};

template <bool kDraw, bool kStats, bool kShared, int kLen>
__device__ __forceinline__ LaneSums lane_sums(const float (&g)[kLen], float m, float inv_t, float inv_ts) {
  LaneSums r;
  float draw[4] = {0.0f, 0.0f, 0.0f, 0.0f};  // four chains so the adds pipeline
#pragma unroll
  for (int i = 0; i < kLen; ++i) {
    // The difference is taken before scaling so a tiny temperature (huge 1/T)
    // cannot overflow the scores themselves.
    const float diff = g[i] - m;
    float e = 0.0f;
    if (kDraw) {
      e = exp_nonpos(diff * inv_t);
      draw[i % 4] += e;
    }
    if (kStats) {
      const float d = diff * inv_ts;
      const float es = kShared ? e : exp_nonpos(d);
      r.s += diff < 0.0f ? es : 0.0f;  // the maximum's 1 stays out (OnlineStats::tail)
      r.sx += es > 0.0f ? es * d : 0.0f;
      r.ties += diff == 0.0f;
      r.second = (diff < 0.0f && g[i] > r.second) ? g[i] : r.second;  // raw, as OnlineStats keeps it
    }
  }
  r.draw = (draw[0] + draw[1]) + (draw[2] + draw[3]);
  return r;
}

// The draw sum of lane_sums for a row weighed in double: summed in double, as
// chunk_sumexp_f64 of the CPU kernel.
template <int kLen>
__device__ __forceinline__ float lane_draw_f64(const float (&g)[kLen], float m, float temp) {
  double s = 0.0;
#pragma unroll
  for (int i = 0; i < kLen; ++i) s += double(weight_f64_call(g[i], m, temp));
  return float(s);
}

// What pass 1 keeps of a part, and of a chunk as its parts merge (the same in
// every lane of the warp).
struct Summary {
  float m = -INFINITY;  // max score
  bool bad = false;     // a NaN or +inf score
  int first = 0;        // T = 0: first index of the max in the chunk
  float sum = 0.0f;     // T > 0: sum exp((g - m) / T)
  OnlineStats st = online_empty();  // statistics at 1/T_stats (kStats)
};

// Reduces part h of a chunk (scores g, the lane's share) across the warp.
template <class D, bool kStats>
__device__ __forceinline__ Summary reduce_part(const float (&g)[part_len<D>()], int h, int lane, bool greedy,
                                               const Weights& weigh, float inv_ts) {
  const float inv_t = weigh.inv_t;
  constexpr int kVec = vec_len<D>();
  constexpr int kPartLen = part_len<D>();
  Summary r;
  // Max. fmaxf skips NaN, as the CPU's max does; NaN is caught below.
  float m = -INFINITY;
#pragma unroll
  for (int i = 0; i < kPartLen; ++i) m = fmaxf(m, g[i]);
  m = warp_max(m);
  r.m = m;
  r.bad = m == INFINITY;

  LaneSums ls;
  if (greedy) {
    // First index of the max (a lane's tokens rise with i, so the last hit of a
    // downward scan is its lowest), and an explicit NaN scan.
    bool nan = false;
    int first = int(kChunk);
#pragma unroll
    for (int i = kPartLen - 1; i >= 0; --i) {
      nan |= g[i] != g[i];
      if (g[i] == m) first = slot<D>(h * (kPartLen / kVec) + i / kVec, lane) + i % kVec;
    }
    r.bad |= __any_sync(kAllLanes, nan) != 0;
    r.first = warp_min(first);
    if (kStats && !r.bad && m > -INFINITY) ls = lane_sums<false, kStats, false>(g, m, inv_t, inv_ts);
  } else if (!r.bad && m > -INFINITY) {
    // A NaN score turns its exp_nonpos, hence the sum, into NaN: that is the
    // NaN check of a sampled part, at no cost per token.
    if (weigh.f64) {  // rare: the statistics alone at 1/T_stats, the draw sum in double
      if (kStats) ls = lane_sums<false, kStats, false>(g, m, inv_t, inv_ts);
      ls.draw = lane_draw_f64(g, m, weigh.temp);
    } else {
      ls = kStats && inv_t == inv_ts ? lane_sums<true, kStats, true>(g, m, inv_t, inv_ts)
                                     : lane_sums<true, kStats, false>(g, m, inv_t, inv_ts);
    }
    r.sum = warp_sum(ls.draw);
    r.bad |= r.sum != r.sum;
  } else if (!r.bad) {
    // No finite score in the part (m = -inf): only an explicit scan sees a NaN.
    bool nan = false;
#pragma unroll
    for (int i = 0; i < kPartLen; ++i) nan |= g[i] != g[i];
    r.bad |= __any_sync(kAllLanes, nan) != 0;
  }
  if (kStats && !r.bad && m > -INFINITY) {
    // chunk_stats of the CPU kernel: top2 is the max again on a tie.
    const int ties = warp_sum(ls.ties);
    r.st = online_slice(m, warp_sum(ls.s), ties, warp_sum(ls.sx), ties >= 2 ? m : warp_max(ls.second));
  }
  return r;
}

// Merges part b (the later tokens) into a. The sums move to the joint max
// (a sum with nothing in it stays out: its max may be -inf); ties keep a's index.
template <bool kStats>
__device__ __forceinline__ Summary merge_parts(Summary a, const Summary& b, const Weights& weigh, float inv_ts) {
  Summary r;
  r.m = fmaxf(a.m, b.m);
  r.bad = a.bad || b.bad;
  r.first = b.m > a.m ? b.first : a.first;
  r.sum = (a.sum > 0.0f ? a.sum * weigh(a.m, r.m) : 0.0f) + (b.sum > 0.0f ? b.sum * weigh(b.m, r.m) : 0.0f);
  if (kStats) r.st = online_merge(a.st, b.st, inv_ts);
  return r;
}

// Pass 1 over chunk c: its parts one after the other, then its record in
// `rec` ([fields][C], shared or global memory; lane 0 stores).
template <class D, bool kGuided, bool kStats>
__device__ __forceinline__ void reduce_chunk(const Row<D, kGuided>& row, int64_t c, int lane, bool greedy,
                                             const Weights& weigh, float inv_ts, float* rec, int64_t n_chunks) {
  Summary chunk;
#pragma unroll 1
  for (int h = 0; h < kPerLane / part_len<D>(); ++h) {
    float g[part_len<D>()];
    load_part<D, kGuided>(row, c * kChunk, h, lane, g);
    const Summary part = reduce_part<D, kStats>(g, h, lane, greedy, weigh, inv_ts);
    chunk = h == 0 ? part : merge_parts<kStats>(chunk, part, weigh, inv_ts);
  }
  if (lane == 0) {
    rec[kFieldMax * n_chunks + c] = chunk.bad ? NAN : chunk.m;
    rec[kFieldSum * n_chunks + c] = greedy ? __int_as_float(chunk.first) : chunk.sum;
    if (kStats) {
      rec[kFieldStTail * n_chunks + c] = chunk.st.tail;
      rec[kFieldStSx * n_chunks + c] = chunk.st.sx;
      rec[kFieldStTop2 * n_chunks + c] = chunk.st.top2;
    }
  }
}

// Online statistics of chunk c from its record (chunk_stats of the CPU kernel).
__device__ __forceinline__ OnlineStats chunk_online(const float* table, int64_t n_chunks, int64_t c) {
  const float m = table[kFieldMax * n_chunks + c];
  if (!(m > -INFINITY)) return online_empty();  // no finite score (or a bad chunk: the row is NaN anyway)
  return OnlineStats{m, table[kFieldStTail * n_chunks + c], table[kFieldStSx * n_chunks + c], m,
                     table[kFieldStTop2 * n_chunks + c]};
}

// Level-1 weight W_c = S_c exp((M_c - M) / T), in float64 as the CPU computes it.
__device__ __forceinline__ double chunk_weight(const float* table, int64_t n_chunks, int64_t c, double big_m,
                                               double temp) {
  const float s = table[kFieldSum * n_chunks + c];
  return s > 0.0f ? double(s) * exp((double(table[kFieldMax * n_chunks + c]) - big_m) / temp) : 0.0;
}

// ---- the kernel -----------------------------------------------------------

struct Plan {
  int64_t n_chunks;          // C = ceil(V / kChunk)
  int64_t chunks_per_split;  // chunks one CTA reduces
  int splits;                // CTAs per row; 1: the table lives in shared memory only
  float* scratch;            // [N, fields, C] chunk records (splits > 1)
  unsigned* arrivals;        // [N] CTAs of the row done, zeroed before launch (splits > 1)
};

template <class D, bool kGuided, bool kStats>
__global__ void __launch_bounds__(kMaxThreads, kMinCtasPerSm) sample_kernel(const SampleArgs a, const Plan p) {
  float* const table = dynamic_shared<float>();  // [fields][C] records of this CTA's row
  __shared__ int finishing;
  constexpr int kFields = fields<kStats>();
  const int64_t r = blockIdx.x / unsigned(p.splits);
  const int split = int(blockIdx.x % unsigned(p.splits));
  const int warp = int(threadIdx.x) / kWarp, lane = int(threadIdx.x) % kWarp;
  const int n_warps = int(blockDim.x) / kWarp;
  const int64_t n_chunks = p.n_chunks;

  // ---- load: is the row drawn? (the reveal coin of unmask_step, or `active`)
  const RowGate gate = row_gate(a, r);
  if (!gate.drawn) {  // its logits are never read
    if (split == 0 && threadIdx.x == 0) {
      a.out[r] = gate.passthrough;
      if (kStats)
        for (int k = 0; k < 4; ++k) a.stats[4 * r + k] = NAN;
    }
    return;
  }

  const float temp = per_row(a.temperature, a.temperature_val, r);
  const bool greedy = !(temp > 0.0f);
  const Weights weigh{greedy ? 0.0f : inv_temperature(temp), temp, f64_weights(temp)};
  const float inv_ts = kStats ? inv_temperature(per_row(a.stats_temperature, a.stats_temperature_val, r)) : 0.0f;
  Row<D, kGuided> row;
  row.logits = static_cast<const typename D::Raw*>(a.logits) + per_row(a.row_offsets, r * a.row_stride, r);
  row.guidance = kGuided ? static_cast<const typename D::Raw*>(a.guidance) +
                               per_row(a.guidance_offsets, r * a.guidance_row_stride, r)
                         : nullptr;
  row.w1 = a.guidance_scale + 1.0f;
  row.vocab = a.vocab;
  row.exclude = a.exclude;
  row.align = kGuided ? min(alignment(row.logits), alignment(row.guidance)) : alignment(row.logits);

  // ---- compute: pass 1, a warp per chunk of this CTA's share of the row
  float* rec = p.splits == 1 ? table : p.scratch + r * kFields * n_chunks;
  const int64_t c_begin = split * p.chunks_per_split;
  const int64_t c_end = min(n_chunks, c_begin + p.chunks_per_split);
  for (int64_t c = c_begin + warp; c < c_end; c += n_warps)
    reduce_chunk<D, kGuided, kStats>(row, c, lane, greedy, weigh, inv_ts, rec, n_chunks);

  // ---- reduce: gather the row's table in this CTA's shared memory
  if (p.splits > 1) {
    // Threadfence reduction: records visible GPU-wide before the CTA is
    // counted; the last CTA of the row to arrive finishes it.
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) finishing = atomicAdd(p.arrivals + r, 1u) == unsigned(p.splits - 1);
    __syncthreads();
    if (!finishing) return;
    __threadfence();
    for (int64_t i = threadIdx.x; i < kFields * n_chunks; i += blockDim.x) table[i] = __ldcg(rec + i);
  }
  __syncthreads();
  if (warp != 0) return;

  // ---- finish (one warp): row summary over the table in a fixed order
  bool bad = false;
  float big_m = -INFINITY;
  int64_t best_c = -1;
  OnlineStats st = online_empty();
  for (int64_t c = lane; c < n_chunks; c += kWarp) {  // ascending: strict > keeps the lowest chunk
    const float m = table[kFieldMax * n_chunks + c];
    bad |= m != m;
    if (m > big_m) {
      big_m = m;
      best_c = c;
    }
    if (kStats) st = online_merge(st, chunk_online(table, n_chunks, c), inv_ts);
  }
  bad = __any_sync(kAllLanes, bad) != 0;
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) {
    const float om = __shfl_xor_sync(kAllLanes, big_m, d);
    const int64_t oc = (int64_t)__shfl_xor_sync(kAllLanes, (long long)best_c, d);
    if (om > big_m || (om == big_m && oc < best_c)) {
      big_m = om;
      best_c = oc;
    }
  }
  if (kStats) st = warp_merge(st, inv_ts);

  int64_t token = -1;
  float g_token = -INFINITY;
  if (bad || big_m == -INFINITY) {
    token = -1;  // NaN / +inf score, or no finite allowed score
  } else if (greedy) {
    token = best_c * kChunk + __float_as_int(table[kFieldSum * n_chunks + best_c]);
    g_token = big_m;
  } else {
    const Philox4 words = row_words(a, r, kDomainToken);
    const double u1 = uniform52(words.w[0], words.w[1]);
    const double u2 = uniform52(words.w[2], words.w[3]);

    // Level 1: lane l walks the block of chunks [l K, l K + K); a float64 scan
    // of the block sums gives each block's starting running sum.
    const double temp64 = double(temp), big_m64 = double(big_m);
    const int64_t per_lane = (n_chunks + kWarp - 1) / kWarp;
    const int64_t c0 = min(n_chunks, lane * per_lane), c1 = min(n_chunks, c0 + per_lane);
    double block = 0.0;
    int64_t last_positive = -1;
    for (int64_t c = c0; c < c1; ++c) {
      const double w = chunk_weight(table, n_chunks, c, big_m64, temp64);
      block += w;
      if (w > 0.0) last_positive = c;
    }
    const double inclusive = warp_inclusive_scan(block, lane);
    const double total = __shfl_sync(kAllLanes, inclusive, kWarp - 1);
    double cum = __shfl_up_sync(kAllLanes, inclusive, 1);
    if (lane == 0) cum = 0.0;
    const double target = u1 * total;
    int64_t hit = -1;
    for (int64_t c = c0; c < c1 && hit < 0; ++c) {
      const double w = chunk_weight(table, n_chunks, c, big_m64, temp64);
      cum += w;
      if (w > 0.0 && cum > target) hit = c;  // a chunk without mass is never picked
    }
    // First lane with a hit; when rounding leaves u1 * total unreached, the last chunk with mass.
    const unsigned hits = __ballot_sync(kAllLanes, hit >= 0);
    // (W of the maximum's chunk is >= 1, so some chunk always has mass.)
    const int64_t chosen = hits ? (int64_t)__shfl_sync(kAllLanes, (long long)hit, __ffs(hits) - 1)
                                : max(int64_t(0), warp_max(last_positive));

    // Level 2: the chosen chunk again (from L2), lane l taking tokens
    // [64 l, 64 l + 64) in order: its float64 sum, one warp scan for where its
    // running sum starts, then its walk over the same tokens (from L1).
    const int64_t lo = chosen * kChunk;
    const int n = chunk_len(row.vocab, lo);
    const float m_c = table[kFieldMax * n_chunks + chosen];
    const int first = lane * kPerLane;
    prefetch_l1(row, lo, n, first);
    double lane_total = 0.0;
    int last_pos = -1;
#pragma unroll 1
    for (int i0 = first; i0 < first + kPerLane; i0 += kSegment) {
      float w[kSegment];
      level2_weights<D, kGuided>(row, lo, n, i0, m_c, weigh, w);
#pragma unroll
      for (int i = 0; i < kSegment; ++i) {
        lane_total += double(w[i]);
        if (w[i] > 0.0f) last_pos = i0 + i;
      }
    }
    const double inner_inclusive = warp_inclusive_scan(lane_total, lane);
    const double inner_total = __shfl_sync(kAllLanes, inner_inclusive, kWarp - 1);
    double inner_cum = __shfl_up_sync(kAllLanes, inner_inclusive, 1);
    if (lane == 0) inner_cum = 0.0;
    const double inner_target = u2 * inner_total;
    int pick = -1;
#pragma unroll 1
    for (int i0 = first; i0 < first + kPerLane && pick < 0; i0 += kSegment) {
      float w[kSegment];
      level2_weights<D, kGuided>(row, lo, n, i0, m_c, weigh, w);
#pragma unroll
      for (int i = 0; i < kSegment; ++i) {
        inner_cum += double(w[i]);
        // A hit needs weight: a lane whose start the scan rounded past the
        // target must not return a token of probability 0.
        if (pick < 0 && w[i] > 0.0f && inner_cum > inner_target) pick = i0 + i;
      }
    }
    // First lane with a hit; when rounding leaves u2 * total unreached, the last
    // token with weight (the chunk's maximum has w = 1, so there is one).
    const unsigned picks = __ballot_sync(kAllLanes, pick >= 0);
    const int inner = picks ? __shfl_sync(kAllLanes, pick, __ffs(picks) - 1)
                            : int(warp_max(int64_t(last_pos)));
    token = lo + inner;
    if (kStats) g_token = row.score(token);
  }

  // ---- store
  if (lane == 0) {
    a.out[r] = token;
    if (kStats) {
      float* out = a.stats + 4 * r;
      if (token < 0) {
        for (int k = 0; k < 4; ++k) out[k] = NAN;
      } else {
        const RowStats fin = online_finish(st, g_token, inv_ts);
        out[0] = fin.logprob;
        out[1] = fin.prob;
        out[2] = fin.margin;
        out[3] = fin.entropy;
      }
    }
  }
}

// ---- launcher -------------------------------------------------------------

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("sample_cuda: ") + what + ": " + cudaGetErrorString(err));
}

struct DeviceInfo {
  int sms = 0;
  int smem_optin = 0;  // largest dynamic + static shared memory a CTA may ask for
};

// Per-device constants, queried once. Also raises the release threshold of the
// device's default memory pool so the split path's stream-ordered scratch is
// reused from call to call instead of being unmapped at every synchronization
// (torch's cudaMallocAsync backend sets the same).
const DeviceInfo& device_info(int dev) {
  constexpr int kMaxDevices = 64;
  static std::mutex mutex;
  static DeviceInfo info[kMaxDevices];
  if (dev < 0 || dev >= kMaxDevices) throw std::runtime_error("sample_cuda: device index out of range");
  std::lock_guard<std::mutex> lock(mutex);
  DeviceInfo& d = info[dev];
  if (d.sms == 0) {
    check(cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "device attribute");
    cudaMemPool_t pool;
    check(cudaDeviceGetDefaultMemPool(&pool, dev), "default memory pool");
    uint64_t threshold = UINT64_MAX;
    check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold), "memory pool threshold");
    int sms = 0;
    check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "device attribute");
    d.sms = sms;  // last: marks the entry filled
  }
  return d;
}

// Makes the tensors' device current for the launch and restores the caller's.
struct DeviceGuard {
  int previous = -1;
  explicit DeviceGuard(int dev) {
    int current = 0;
    check(cudaGetDevice(&current), "current device");
    if (current != dev) {
      check(cudaSetDevice(dev), "set device");
      previous = current;
    }
  }
  ~DeviceGuard() {
    if (previous >= 0) cudaSetDevice(previous);
  }
};

// How the rows' chunks map to CTAs. Enough rows to keep every SM busy: a CTA
// per row, min(4, C) warps. Otherwise each row gets up to one warp per chunk,
// spread over about one CTA of up to 8 warps per SM, its chunks split evenly
// across `splits` CTAs. (The constants are first guesses, to be tuned on the GPU.)
Plan plan_rows(int64_t n_rows, int64_t vocab, int sms, int* warps) {
  Plan p{};
  p.n_chunks = (vocab + kChunk - 1) / kChunk;
  const int64_t target = int64_t(sms) * kTargetWarpsPerSm;
  const int64_t row_warps = std::min<int64_t>(kRowWarps, p.n_chunks);
  if (n_rows * row_warps >= target) {
    p.splits = 1;
    p.chunks_per_split = p.n_chunks;
    *warps = int(row_warps);
    return p;
  }
  const int64_t per_row = std::min<int64_t>(p.n_chunks, (target + n_rows - 1) / n_rows);  // warps a row gets
  int64_t w = (n_rows * per_row + sms - 1) / sms;
  w = std::max<int64_t>(1, std::min<int64_t>(kMaxWarps, w));
  int64_t splits = (per_row + w - 1) / w;
  p.chunks_per_split = (p.n_chunks + splits - 1) / splits;
  splits = (p.n_chunks + p.chunks_per_split - 1) / p.chunks_per_split;  // no CTA without a chunk
  p.splits = int(splits);
  *warps = int(std::min<int64_t>(w, p.chunks_per_split));
  return p;
}

// Bytes of static shared memory the sampling kernel may use beside its dynamic chunk table
// (it declares one int): both count against a CTA's shared-memory limits.
constexpr size_t kStaticSmemBound = 64;

// Errors are returned, not thrown, so the caller frees the scratch first.
template <class D, bool kGuided, bool kStats>
cudaError_t launch(const SampleArgs& a, const Plan& p, int warps, size_t smem, cudaStream_t stream) {
  auto kernel = sample_kernel<D, kGuided, kStats>;
  if (smem + kStaticSmemBound > 48 * 1024) {  // past the default: the launch must opt in
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
  }
  SampleArgs args = a;
  Plan plan = p;
  void* params[] = {&args, &plan};
  return cudaLaunchKernel(kernel, dim3(unsigned(a.n_rows * p.splits)), dim3(unsigned(warps * kWarp)), params, smem,
                          stream);
}

template <class D>
cudaError_t launch_dtype(const SampleArgs& a, const Plan& p, int warps, size_t smem, cudaStream_t stream) {
  const bool guided = a.guidance != nullptr, stats = a.stats != nullptr;
  if (guided && stats) return launch<D, true, true>(a, p, warps, smem, stream);
  if (guided) return launch<D, true, false>(a, p, warps, smem, stream);
  if (stats) return launch<D, false, true>(a, p, warps, smem, stream);
  return launch<D, false, false>(a, p, warps, smem, stream);
}

}  // namespace

void sample_cuda(const SampleArgs& a, int64_t stream_handle, int dev) {
  if (a.n_rows <= 0) return;
  if (a.vocab <= 0) throw std::runtime_error("sample_cuda: vocab must be positive");
  if (a.dtype < kFloat32 || a.dtype > kFloat64) throw std::runtime_error("sample_cuda: unknown dtype code");
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  // The device comes from the caller, not from cudaStreamGetDevice: torch names a device's
  // default stream 0, which that query resolves to the current device, and some drivers
  // refuse the query while the stream is capturing a CUDA graph (invalidating the capture).
  DeviceGuard guard(dev);
  const DeviceInfo& info = device_info(dev);

  int warps = 1;
  Plan p = plan_rows(a.n_rows, a.vocab, info.sms, &warps);
  const int n_fields = a.stats ? fields<true>() : fields<false>();
  const size_t smem = size_t(n_fields) * size_t(p.n_chunks) * sizeof(float);
  if (smem + kStaticSmemBound > size_t(info.smem_optin)) {
    throw std::runtime_error("sample_cuda: a vocabulary of " + std::to_string(a.vocab) + " tokens needs " +
                             std::to_string(smem) + " bytes of shared memory per row for its chunk table; this GPU "
                             "allows " + std::to_string(info.smem_optin) + " (use backend=\"triton\")");
  }
  if (a.n_rows * p.splits > 0x7fffffffLL) throw std::runtime_error("sample_cuda: more than 2^31 - 1 CTAs");

  void* scratch = nullptr;
  if (p.splits > 1) {
    // Stream-ordered (and CUDA-graph capturable) scratch: the chunk records,
    // then the arrival counters, which must start at zero.
    const size_t records = size_t(a.n_rows) * size_t(n_fields) * size_t(p.n_chunks) * sizeof(float);
    const size_t counters_at = (records + 255) / 256 * 256;
    check(cudaMallocAsync(&scratch, counters_at + size_t(a.n_rows) * sizeof(unsigned), stream), "scratch alloc");
    p.scratch = static_cast<float*>(scratch);
    p.arrivals = reinterpret_cast<unsigned*>(static_cast<char*>(scratch) + counters_at);
    const cudaError_t zeroed = cudaMemsetAsync(p.arrivals, 0, size_t(a.n_rows) * sizeof(unsigned), stream);
    if (zeroed != cudaSuccess) {
      cudaFreeAsync(scratch, stream);
      check(zeroed, "scratch memset");
    }
  }
  cudaError_t launched = cudaSuccess;
  switch (a.dtype) {
    case kFloat32: launched = launch_dtype<F32>(a, p, warps, smem, stream); break;
    case kFloat16: launched = launch_dtype<F16>(a, p, warps, smem, stream); break;
    case kBFloat16: launched = launch_dtype<BF16>(a, p, warps, smem, stream); break;
    case kFloat64: launched = launch_dtype<F64>(a, p, warps, smem, stream); break;
  }
  if (scratch) check(cudaFreeAsync(scratch, stream), "scratch free");
  check(launched, "kernel launch");
}

}  // namespace mdsample
