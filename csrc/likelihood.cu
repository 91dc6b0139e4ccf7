// CUDA masked_nll: the same computation as csrc/likelihood_cpu.cpp on the
// shared headers. Compiled whenever nvcc is present; mdsample does not dispatch
// to it yet because no GPU has run it (mdsample/_backends.py says so).
//
// Kernel 1, one CTA per row: the row's x_t and weight are read first, and an
// unmasked (or zero-weight) row exits without touching its logits. A masked row
// is streamed once: each thread keeps an online (max, sum of exp) over a strided
// slice, the CTA merges them (warp shuffles, then shared memory), and thread 0
// stores weight * (logsumexp - score of the target). Kernel 2, one CTA per
// sequence, sums its rows in double in a fixed tree: the result is the same on
// every run.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "likelihood.h"
#include "mdsample/likelihood_math.h"
#include "mdsample/online.h"

namespace mdsample {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ float load_f32(const float* p) { return __ldg(p); }
__device__ __forceinline__ float load_f32(const double* p) { return float(__ldg(p)); }
__device__ __forceinline__ float load_f32(const __half* p) { return __half2float(__ldg(p)); }
__device__ __forceinline__ float load_f32(const __nv_bfloat16* p) { return __bfloat162float(__ldg(p)); }

template <typename T>
struct DeviceRow {
  const T* logits;
  const T* guidance;
  float w1;
  int64_t exclude;

  __device__ __forceinline__ float score(int64_t i) const {
    float g = load_f32(logits + i);
    if (guidance) g = guided_score(g, load_f32(guidance + i), w1);
    return i == exclude ? -INFINITY : g;
  }
};

// Online (max, sum exp(x - max)) of two slices; an empty slice has max -inf, sum 0.
struct MaxSum {
  float m;
  float s;
};

__device__ __forceinline__ MaxSum max_sum_merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return a;
  return MaxSum{m, a.s * exp_nonpos(a.m - m) + b.s * exp_nonpos(b.m - m)};
}

template <typename T>
__global__ void __launch_bounds__(kThreads) masked_nll_rows_kernel(MaskedNllArgs a, float* row_value) {
  const int64_t r = blockIdx.x;
  // Load: the row's state; unmasked rows stop here.
  const float w = a.weight ? a.weight[r] : 1.0f;
  if (a.xt[r] != a.mask_id || w == 0.0f) {
    if (threadIdx.x == 0) row_value[r] = 0.0f;
    return;
  }
  const DeviceRow<T> row{static_cast<const T*>(a.logits) + a.row_offsets[r],
                         a.guidance ? static_cast<const T*>(a.guidance) + a.guidance_offsets[r] : nullptr,
                         a.guidance_scale + 1.0f, a.exclude};

  // Compute: per-thread online max / sum over a strided slice of the row.
  MaxSum acc{-INFINITY, 0.0f};
  int bad = 0;
  for (int64_t i = threadIdx.x; i < a.vocab; i += kThreads) {
    const float g = row.score(i);
    bad |= (g != g) | (g == INFINITY);
    if (g > acc.m) {
      acc.s = acc.s * exp_nonpos(acc.m - g) + 1.0f;
      acc.m = g;
    } else if (g != -INFINITY) {
      acc.s += exp_nonpos(g - acc.m);
    }
  }

  // Reduce: across the warp, then across warps.
  for (int d = 16; d > 0; d >>= 1) {
    const MaxSum other{__shfl_xor_sync(0xffffffffu, acc.m, d), __shfl_xor_sync(0xffffffffu, acc.s, d)};
    acc = max_sum_merge(acc, other);
    bad |= __shfl_xor_sync(0xffffffffu, bad, d);
  }
  __shared__ MaxSum warp_acc[kWarps];
  __shared__ int warp_bad[kWarps];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    warp_acc[warp] = acc;
    warp_bad[warp] = bad;
  }
  __syncthreads();

  // Store: thread 0 merges the warps in a fixed order and writes the row's value.
  if (threadIdx.x == 0) {
    MaxSum total = warp_acc[0];
    int any_bad = warp_bad[0];
    for (int k = 1; k < kWarps; ++k) {
      total = max_sum_merge(total, warp_acc[k]);
      any_bad |= warp_bad[k];
    }
    const int64_t target = a.target[r];
    float value = NAN;
    if (!any_bad && target >= 0 && target < a.vocab) value = w * (total.m + logf(total.s) - row.score(target));
    row_value[r] = value;
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

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("masked_nll_cuda: ") + what + ": " + cudaGetErrorString(err));
}

template <typename T>
void launch_rows(const MaskedNllArgs& a, float* row_value, cudaStream_t stream) {
  masked_nll_rows_kernel<T><<<unsigned(a.n_seqs * a.length), kThreads, 0, stream>>>(a, row_value);
}

}  // namespace

void masked_nll_cuda(const MaskedNllArgs& a, int64_t stream_handle) {
  const int64_t n_rows = a.n_seqs * a.length;
  if (a.n_seqs <= 0) return;
  if (n_rows > 0x7fffffffLL || a.n_seqs > 0x7fffffffLL) throw std::runtime_error("masked_nll_cuda: more than 2^31 - 1 rows");
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  float* row_value = nullptr;
  check(cudaMallocAsync(reinterpret_cast<void**>(&row_value), sizeof(float) * (n_rows > 0 ? n_rows : 1), stream), "alloc");
  if (n_rows > 0) {
    switch (a.dtype) {
      case kFloat32: launch_rows<float>(a, row_value, stream); break;
      case kFloat16: launch_rows<__half>(a, row_value, stream); break;
      case kBFloat16: launch_rows<__nv_bfloat16>(a, row_value, stream); break;
      case kFloat64: launch_rows<double>(a, row_value, stream); break;
    }
    check(cudaGetLastError(), "row kernel");
  }
  sum_rows_kernel<<<unsigned(a.n_seqs), kThreads, 0, stream>>>(row_value, a.length, a.out);
  check(cudaGetLastError(), "sum kernel");
  check(cudaFreeAsync(row_value, stream), "free");
}

}  // namespace mdsample
