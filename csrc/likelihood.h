// Launcher interface of the likelihood op family (lowdisc_timesteps,
// forward_mask, masked_nll), shared by the CPU and CUDA launchers and the
// bindings. Only raw pointers and sizes cross this line: no torch headers
// (DESIGN.md §2). The element math lives in mdsample/likelihood_math.h.
#pragma once
#include <stdint.h>

#include "sampling.h"  // DType codes

namespace mdsample {

// n_lattices lattices of n points each; lattice g uses Philox offset offset[g]
// and writes t = (1 - eps) t~ + eps to out[g * n + i] (float64).
struct TimestepArgs {
  int64_t n;
  int64_t n_lattices;
  int mode;            // TimestepMode
  double eps;
  int64_t seed;
  const int64_t* offset;  // [n_lattices]
  double* out;            // [n_lattices, n]
};

// x_t from x0 over `batch` rows of `length` tokens (all arrays contiguous).
// Exactly one of prob / count is non-null.
struct ForwardMaskArgs {
  const int64_t* x0;        // [B, L]
  int64_t batch;
  int64_t length;
  const uint8_t* maskable;  // [B, L] or null: every token may be masked
  const int64_t* seed;      // [B]
  const int64_t* offset;    // [B]
  const int64_t* position;  // [B, L] or null: the flat index b * L + i
  const double* prob;       // [B]: Bernoulli mask probability of the row
  const int64_t* count;     // [B]: exact number of maskable tokens to mask
  int64_t mask_id;
  int64_t* out;             // [B, L]
};

// Per-sequence weighted NLL over n_seqs sequences of `length` rows each
// (N = n_seqs * length rows). Row r (sequence r / length) is read only when
// xt[r] == mask_id and weight[r] != 0; it then adds
//   weight[r] * (logsumexp(g) - g[target[r]])
// with g the guided scores, exclude -> -inf. A target outside [0, vocab), a
// NaN or +inf score, or a row without a finite score gives NaN.
struct MaskedNllArgs {
  const void* logits;
  int dtype;                        // DType
  int64_t vocab;
  const int64_t* row_offsets;       // [N] element offset of each row; last dim contiguous
  const void* guidance;             // unconditional logits (same dtype) or null
  const int64_t* guidance_offsets;  // [N], with guidance
  float guidance_scale;             // w
  const int64_t* target;            // [N] x0
  const int64_t* xt;                // [N]
  const float* weight;              // [N] or null (all 1)
  int64_t mask_id;
  int64_t exclude;                  // token dropped from the softmax (SUBS); -1 = none
  int64_t n_seqs;
  int64_t length;
  float* out;                       // [n_seqs]
};

void lowdisc_timesteps_cpu(const TimestepArgs& args);
void forward_mask_cpu(const ForwardMaskArgs& args);
void masked_nll_cpu(const MaskedNllArgs& args);
// CUDA launchers (csrc/likelihood.cu; csrc/cuda_absent.cpp without nvcc): all
// pointers are device memory, the work is queued on `stream` (a cudaStream_t
// as an integer) and nothing is allocated or synchronized, so a CUDA graph may
// capture them. masked_nll's row_value is an [N] float32 scratch.
void lowdisc_timesteps_cuda(const TimestepArgs& args, int64_t stream);
void forward_mask_cuda(const ForwardMaskArgs& args, int64_t stream);
void masked_nll_cuda(const MaskedNllArgs& args, float* row_value, int64_t stream);

}  // namespace mdsample
