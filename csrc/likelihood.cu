// CUDA backend of the likelihood ops: lowdisc_timesteps, forward_mask, masked_nll.
//
// The algorithms are specified in mdsample/reference/likelihood.py and computed
// as csrc/likelihood_cpu.cpp computes them, on the same headers (philox.h,
// likelihood_math.h, online.h):
//  - lowdisc_timesteps: one thread per lattice point, the CPU's float64 steps
//    (eps_map keeps nvcc from contracting them into an FMA): bitwise the CPU's.
//  - forward_mask, Bernoulli: one thread per token, u < p on the same 52-bit
//    uniform: bitwise the CPU's.
//  - forward_mask, exact count: one CTA per row finds the k-th smallest key
//    (the 52-bit integer of a token's uniform, forward_mask_key) by radix
//    select, 8 bits a pass (7 passes, shared-memory histograms), then one pass
//    in index order masks the keys below it and, of the keys equal to it, the
//    lowest-index ones until k are masked: the set the CPU's nth_element on
//    (u, index) picks. Keys are recomputed from Philox each pass (about 100
//    integer ops a token) instead of stored: no scratch, any L.
//  - masked_nll: one CTA of kThreads per row. An unmasked or zero-weight row
//    stores 0 without reading logits. A masked row is streamed once, in tiles
//    of kLoads 16-byte loads per thread (per operand with CFG), all issued
//    before any is used; each tile folds into the thread's online (max, sum of
//    exp): its max first, then one exp per score. The target's score stays out
//    of the fold (set to -inf in its tile, as the excluded token's is) and joins
//    at the end, so a target of p near 1 keeps its small -log p (nll_from_rest).
//    The CTA merges the threads' states in a fixed tree and thread 0 stores
//    w (logsumexp - g[target]).
//    Per-sequence sums: one CTA per sequence, in double, in a fixed tree.
//    The exp is the hardware one (__expf: ex2.approx of x log2 e, about 2 ulp)
//    and not the CPU's exp_nonpos: that polynomial costs ~20 fp32 ops a score,
//    more than an SM issues per score at HBM rate (H100: ~7 bf16 scores per SM
//    cycle against 128 fp32 lanes), while ex2 leaves ~5 ops and one MUFU op a
//    score. So masked_nll agrees with the CPU to fp32 rounding, not bitwise.
// Every reduction has a fixed shape set by V and L alone, so no result depends
// on the batch, the grid or a row's address (misaligned rows take narrower
// loads into the same registers, mdsample/cuda_loads.h). Indices are int64.
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include <stdexcept>
#include <string>

#include "likelihood.h"
#include "mdsample/cuda_launch.h"
#include "mdsample/cuda_loads.h"
#include "mdsample/likelihood_math.h"
#include "mdsample/online.h"
#include "mdsample/philox.h"

namespace mdsample {

namespace {

using namespace cuda_loads;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kAllLanes = 0xffffffffu;

// CTAs of kThreads for one thread per item.
unsigned blocks_for(int64_t items, const char* what) { return cuda_launch::blocks_for(items, kThreads, what); }

template <class... P>
void launch(void (*kernel)(P...), unsigned grid, cudaStream_t stream, const char* what, P... args) {
  cuda_launch::launch(kernel, grid, kThreads, stream, what, args...);
}

// ---- lowdisc_timesteps ---------------------------------------------------------

__global__ void __launch_bounds__(kThreads) timesteps_kernel(TimestepArgs a) {
  const int64_t j = int64_t(blockIdx.x) * kThreads + threadIdx.x;  // point i of lattice g
  if (j >= a.n * a.n_lattices) return;
  const int64_t g = j / a.n, i = j % a.n;
  // The shifted lattice shares the uniform of position 0; the others draw one per point.
  const double u = timestep_uniform(uint64_t(a.seed), uint64_t(a.offset[g]), a.mode == kShifted ? 0 : uint64_t(i));
  a.out[j] = eps_map(lattice_point(a.mode, u, i, a.n), a.eps);
}

// ---- forward_mask ----------------------------------------------------------------

__device__ __forceinline__ uint64_t position_of(const ForwardMaskArgs& a, int64_t r) {
  return a.position ? uint64_t(a.position[r]) : uint64_t(r);
}

__device__ __forceinline__ bool maskable(const ForwardMaskArgs& a, int64_t r) { return !a.maskable || a.maskable[r]; }

__global__ void __launch_bounds__(kThreads) mask_bernoulli_kernel(ForwardMaskArgs a) {
  const int64_t r = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (r >= a.batch * a.length) return;
  const int64_t b = r / a.length;
  const bool hit = maskable(a, r) &&
                   forward_mask_uniform(uint64_t(a.seed[b]), uint64_t(a.offset[b]), position_of(a, r)) < a.prob[b];
  a.out[r] = hit ? a.mask_id : a.x0[r];
}

constexpr int kDigitBits = 8;
constexpr int kBins = 1 << kDigitBits;
constexpr int kTopShift = 48;  // the top digit holds key bits 48-51
constexpr uint64_t kNoKey = ~uint64_t(0);  // a token that may not be masked: above every 52-bit key

__device__ __forceinline__ uint64_t mask_key(const ForwardMaskArgs& a, uint64_t seed, uint64_t offset, int64_t r) {
  return maskable(a, r) ? forward_mask_key(seed, offset, position_of(a, r)) : kNoKey;
}

// Warp 0 after a histogram pass: the bin d holding the rank-th smallest
// (1-based) counted key, and how many counted keys lie in lower bins. Lane l
// owns bins [8 l, 8 l + 8); exactly one lane's range holds the rank.
__device__ __forceinline__ bool pick_bin(const unsigned* hist, int64_t rank, int lane, int* bin, int64_t* below) {
  constexpr int kPer = kBins / 32;
  unsigned c[kPer];
  unsigned own = 0;
#pragma unroll
  for (int q = 0; q < kPer; ++q) {
    c[q] = hist[lane * kPer + q];
    own += c[q];
  }
  unsigned incl = own;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const unsigned o = __shfl_up_sync(kAllLanes, incl, d);
    if (lane >= d) incl += o;
  }
  int64_t before = incl - own;
  if (!(before < rank && rank <= int64_t(incl))) return false;
  // The first bin whose running count reaches rank (unrolled, so c stays in registers).
  int q = 0;
  bool found = false;
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    if (!found && before + c[j] >= rank) {
      q = j;
      found = true;
    }
    if (!found) before += c[j];
  }
  *bin = lane * kPer + q;
  *below = before;
  return true;
}

__global__ void __launch_bounds__(kThreads) mask_count_kernel(ForwardMaskArgs a) {
  const int64_t b = blockIdx.x, lo = b * a.length;
  const uint64_t seed = uint64_t(a.seed[b]), off = uint64_t(a.offset[b]);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __shared__ unsigned hist[kBins];
  __shared__ unsigned warp_ties[kWarps];
  // The rule being built: mask keys < threshold, and the first `ties` keys
  // equal to it in index order. During the passes: the digits found so far and
  // the rank of the k-th key among the keys that share them.
  __shared__ uint64_t threshold;
  __shared__ int64_t ties;
  __shared__ int done;
  if (threadIdx.x == 0) {
    threshold = 0;
    ties = a.count[b];
    done = 0;
  }

  // Reduce: the k-th smallest key, one 8-bit digit a pass from the top.
  for (int shift = kTopShift; shift >= 0; shift -= kDigitBits) {
    for (int i = threadIdx.x; i < kBins; i += kThreads) hist[i] = 0;
    __syncthreads();
    const uint64_t prefix = threshold;
    const uint64_t above = ~((uint64_t(1) << (shift + kDigitBits)) - 1);  // key bits above this digit
    for (int64_t i = threadIdx.x; i < a.length; i += kThreads) {
      const uint64_t key = mask_key(a, seed, off, lo + i);
      if (key != kNoKey && (key & above) == prefix) atomicAdd(&hist[(key >> shift) & (kBins - 1)], 1u);
    }
    __syncthreads();
    if (warp == 0) {
      const int64_t rank = ties;
      if (shift == kTopShift) {
        // The first pass counts every maskable token: k <= 0 masks none, k >= their number masks all.
        unsigned n = 0;
        for (int i = lane; i < kBins; i += 32) n += hist[i];
        for (int d = 16; d > 0; d >>= 1) n += __shfl_xor_sync(kAllLanes, n, d);
        __syncwarp();
        if (lane == 0 && (rank <= 0 || rank >= int64_t(n))) {
          threshold = rank <= 0 ? 0 : kNoKey;
          ties = 0;
          done = 1;
        }
        __syncwarp();
      }
      if (!done) {
        int bin;
        int64_t below;
        const bool mine = pick_bin(hist, rank, lane, &bin, &below);
        __syncwarp();
        if (mine) {
          threshold = prefix | (uint64_t(bin) << shift);
          ties = rank - below;
        }
      }
    }
    __syncthreads();
    if (done) break;
  }

  // Compute and store, in index order kThreads tokens at a time: a tie's rank
  // is the number of ties before it (ballots, then the warps' counts).
  const uint64_t t_key = threshold;
  const int64_t t_ties = ties;
  int64_t ties_before = 0;
  for (int64_t base = 0; base < a.length; base += kThreads) {
    const int64_t i = base + threadIdx.x;
    const bool live = i < a.length;
    const uint64_t key = live ? mask_key(a, seed, off, lo + i) : kNoKey;
    const bool tie = key == t_key && key != kNoKey;
    const unsigned ballot = __ballot_sync(kAllLanes, tie);
    if (lane == 0) warp_ties[warp] = __popc(ballot);
    __syncthreads();
    int64_t rank = ties_before + __popc(ballot & ((1u << lane) - 1u));
    int64_t in_step = 0;
    for (int w = 0; w < kWarps; ++w) {
      if (w < warp) rank += warp_ties[w];
      in_step += warp_ties[w];
    }
    __syncthreads();  // warp_ties is rewritten by the next step
    if (live) a.out[lo + i] = (key < t_key || (tie && rank < t_ties)) ? a.mask_id : a.x0[lo + i];
    ties_before += in_step;
  }
}

// ---- masked_nll ------------------------------------------------------------------

constexpr int kLoads = 4;  // 16-byte loads per thread per tile and operand
// At least two CTAs per SM: caps the row kernel at 128 registers, which every
// variant fits without spilling (ptxas -v, sm_80 and sm_90; left to itself,
// ptxas picks 64 for bf16 and spills).
constexpr int kMinCtasPerSm = 2;

template <class D>
__host__ __device__ constexpr int tile_len() { return kLoads * vec_len<D>(); }  // scores per thread per tile

// One logits row (and its guidance row) as the kernel reads it.
template <class D, bool kGuided>
struct NllRow {
  const typename D::Raw* logits;
  const typename D::Raw* guidance;  // kGuided only
  float w1;                         // guidance_scale + 1
  int64_t vocab;
  int64_t exclude;                  // -1: none
  int64_t target;                   // its score stays out of the fold (nll_from_rest)

  __device__ __forceinline__ float score(int64_t i) const {
    float g = D::cvt(__ldg(logits + i));
    if (kGuided) g = guided_score(g, D::cvt(__ldg(guidance + i)), w1);
    return i == exclude ? -INFINITY : g;
  }
};

// Online (max m, sum s of exp(g - m)) of a set of scores; empty: (-inf, 0).
// A NaN or +inf score makes s NaN (exp(NaN), exp(inf - inf)) and NaN survives
// every fold and merge, so no bad-row flag is kept.
struct MaxSum {
  float m;
  float s;
};

// The shift of the exponents for max m: 0 stands in for an empty state's -inf
// so that -inf scores give exp(-inf) = 0, not NaN.
__device__ __forceinline__ float shift_of(float m) { return m == -INFINITY ? 0.0f : m; }

// Symmetric in a and b bit for bit (products rounded before the sum, no FMA),
// so a butterfly of it leaves the same state in every lane.
__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  const float base = shift_of(m);
  return MaxSum{m, __fadd_rn(__fmul_rn(a.s, __expf(a.m - base)), __fmul_rn(b.s, __expf(b.m - base)))};
}

// Folds a thread's tile of scores into its state.
template <int kLen>
__device__ __forceinline__ MaxSum fold(MaxSum acc, const float (&g)[kLen]) {
  float m = acc.m;
#pragma unroll
  for (int i = 0; i < kLen; ++i) m = fmaxf(m, g[i]);  // skips NaN; the sum below catches it
  const float base = shift_of(m);
  float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};  // four chains so the adds pipeline
#pragma unroll
  for (int i = 0; i < kLen; ++i) s[i % 4] += __expf(g[i] - base);
  return MaxSum{m, acc.s * __expf(acc.m - base) + ((s[0] + s[1]) + (s[2] + s[3]))};
}

// Sets the score of token i to -inf if it lies in the tile at lo.
template <class D>
__device__ __forceinline__ void drop_token(int64_t i, int64_t lo, int t, float (&g)[tile_len<D>()]) {
  constexpr int kVec = vec_len<D>();
  if (i < lo || i >= lo + int64_t(kLoads) * kThreads * kVec) return;
#pragma unroll
  for (int q = 0; q < kLoads; ++q)
#pragma unroll
    for (int j = 0; j < kVec; ++j)
      if (lo + int64_t(q * kThreads + t) * kVec + j == i) g[q * kVec + j] = -INFINITY;
}

// The thread's scores of the tile at token lo: its vector q holds tokens
// lo + (q kThreads + t) kVec + [0, kVec), so each load step of a warp reads 512
// consecutive bytes. Guided; -inf at `exclude` and past the vocabulary. A
// vector crossing the end of the row is read element by element.
template <class D, bool kGuided, int kBytes>
__device__ __forceinline__ void load_tile(const NllRow<D, kGuided>& row, int64_t lo, int t, float (&g)[tile_len<D>()]) {
  constexpr int kVec = vec_len<D>();
  constexpr int64_t kTile = int64_t(kLoads) * kThreads * kVec;
  float u[kGuided ? tile_len<D>() : 1];
  const bool whole = lo + kTile <= row.vocab;
#pragma unroll
  for (int q = 0; q < kLoads; ++q) {
    const int64_t i = lo + int64_t(q * kThreads + t) * kVec;
    if (whole || i + kVec <= row.vocab) {
      load_vec<D, kBytes>(row.logits + i, g + q * kVec);
      if (kGuided) load_vec<D, kBytes>(row.guidance + i, u + q * kVec);
    } else {
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const bool in = i + j < row.vocab;
        g[q * kVec + j] = in ? D::cvt(__ldg(row.logits + i + j)) : -INFINITY;
        if (kGuided) u[q * kVec + j] = in ? D::cvt(__ldg(row.guidance + i + j)) : -INFINITY;
      }
    }
  }
  if (kGuided) {
#pragma unroll
    for (int e = 0; e < tile_len<D>(); ++e) g[e] = guided_score(g[e], u[e], row.w1);
  }
  // The excluded token (the mask token) and the target: only the tiles holding them pay.
  drop_token<D>(row.exclude, lo, t, g);
  drop_token<D>(row.target, lo, t, g);
}

template <class D, bool kGuided, int kBytes>
__device__ __forceinline__ MaxSum stream_row(const NllRow<D, kGuided>& row) {
  constexpr int64_t kTile = int64_t(kLoads) * kThreads * vec_len<D>();
  MaxSum acc{-INFINITY, 0.0f};
  for (int64_t lo = 0; lo < row.vocab; lo += kTile) {
    float g[tile_len<D>()];
    load_tile<D, kGuided, kBytes>(row, lo, threadIdx.x, g);
    acc = fold(acc, g);
  }
  return acc;
}

template <class D, bool kGuided>
__global__ void __launch_bounds__(kThreads, kMinCtasPerSm) masked_nll_rows_kernel(MaskedNllArgs a, float* row_value) {
  using Raw = typename D::Raw;
  const int64_t r = blockIdx.x;
  // Load: the row's state; an unmasked or zero-weight row stores 0 and reads no logits.
  const float w = a.weight ? a.weight[r] : 1.0f;
  if (a.xt[r] != a.mask_id || w == 0.0f) {
    if (threadIdx.x == 0) row_value[r] = 0.0f;
    return;
  }
  const NllRow<D, kGuided> row{static_cast<const Raw*>(a.logits) + a.row_offsets[r],
                               kGuided ? static_cast<const Raw*>(a.guidance) + a.guidance_offsets[r] : nullptr,
                               a.guidance_scale + 1.0f, a.vocab, a.exclude, a.target[r]};
  const int64_t target = row.target;
  // Asked for first, so its latency hides behind the stream; NaN for a target outside the vocabulary.
  const float g_target = threadIdx.x == 0 && target >= 0 && target < a.vocab ? row.score(target) : NAN;

  // Compute: the thread's state over its share of the row, in the widest loads both rows' alignment allows.
  const int align = kGuided ? min(alignment(row.logits), alignment(row.guidance)) : alignment(row.logits);
  MaxSum acc;
  with_load_width<D>(align, [&](auto bytes) { acc = stream_row<D, kGuided, decltype(bytes)::value>(row); });

  // Reduce: butterflies within each warp, then the warps in a fixed order.
#pragma unroll
  for (int d = 16; d > 0; d >>= 1)
    acc = merge(acc, MaxSum{__shfl_xor_sync(kAllLanes, acc.m, d), __shfl_xor_sync(kAllLanes, acc.s, d)});
  __shared__ MaxSum warp_acc[kWarps];
  if (threadIdx.x % 32 == 0) warp_acc[threadIdx.x / 32] = acc;
  __syncthreads();

  // Store: w (logsumexp - g[target]) from the other scores' state (nll_from_rest).
  if (threadIdx.x == 0) {
    MaxSum total = warp_acc[0];
#pragma unroll
    for (int k = 1; k < kWarps; ++k) total = merge(total, warp_acc[k]);
    row_value[r] = w * nll_from_rest(g_target, total.m, total.s);
  }
}

__global__ void __launch_bounds__(kThreads) sum_rows_kernel(const float* row_value, int64_t length, float* out) {
  const int64_t b = blockIdx.x;
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < length; i += kThreads) acc += double(row_value[b * length + i]);
  __shared__ double part[kThreads];
  part[threadIdx.x] = acc;
  __syncthreads();
  for (int k = kThreads / 2; k > 0; k >>= 1) {
    if (threadIdx.x < k) part[threadIdx.x] += part[threadIdx.x + k];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[b] = float(part[0]);
}

template <class D>
void launch_nll_rows(const MaskedNllArgs& a, float* row_value, unsigned grid, cudaStream_t stream) {
  auto kernel = a.guidance ? masked_nll_rows_kernel<D, true> : masked_nll_rows_kernel<D, false>;
  launch(kernel, grid, stream, "masked_nll_cuda (rows)", a, row_value);
}

}  // namespace

void lowdisc_timesteps_cuda(const TimestepArgs& a, int64_t stream) {
  const int64_t points = a.n * a.n_lattices;
  if (points == 0) return;
  launch(timesteps_kernel, blocks_for(points, "lowdisc_timesteps_cuda"), reinterpret_cast<cudaStream_t>(stream),
         "lowdisc_timesteps_cuda", a);
}

void forward_mask_cuda(const ForwardMaskArgs& a, int64_t stream_handle) {
  if (a.batch == 0 || a.length == 0) return;
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  if (a.count) {
    if (a.batch > 0x7fffffffLL || a.length > 0x7fffffffLL)
      throw std::runtime_error("forward_mask_cuda: more than 2^31 - 1 sequences or tokens a sequence");
    launch(mask_count_kernel, unsigned(a.batch), stream, "forward_mask_cuda", a);
  } else {
    launch(mask_bernoulli_kernel, blocks_for(a.batch * a.length, "forward_mask_cuda"), stream, "forward_mask_cuda", a);
  }
}

void masked_nll_cuda(const MaskedNllArgs& a, float* row_value, int64_t stream_handle) {
  const int64_t n_rows = a.n_seqs * a.length;
  if (a.n_seqs <= 0) return;
  if (n_rows > 0x7fffffffLL) throw std::runtime_error("masked_nll_cuda: more than 2^31 - 1 rows");
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  if (n_rows > 0) {
    const unsigned grid = unsigned(n_rows);
    switch (a.dtype) {
      case kFloat32: launch_nll_rows<F32>(a, row_value, grid, stream); break;
      case kFloat16: launch_nll_rows<F16>(a, row_value, grid, stream); break;
      case kBFloat16: launch_nll_rows<BF16>(a, row_value, grid, stream); break;
      case kFloat64: launch_nll_rows<F64>(a, row_value, grid, stream); break;
      default: throw std::runtime_error("masked_nll_cuda: unknown dtype code " + std::to_string(a.dtype));
    }
  }
  launch(sum_rows_kernel, unsigned(a.n_seqs), stream, "masked_nll_cuda (sums)", static_cast<const float*>(row_value),
         a.length, a.out);
}

}  // namespace mdsample
