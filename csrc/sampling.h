// Launcher interface of the sampling op family (sample_categorical and
// unmask_step), shared by the CPU and CUDA launchers and the bindings.
// Only raw pointers and sizes cross this line: no torch headers (DESIGN.md §2).
#pragma once
#include <stdint.h>

namespace mdsample {

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

// Tokens per chunk of the two-level inverse-CDF draw. Part of the sampling
// algorithm itself (it decides which random word picks which token), so every
// backend uses the same value; see mdsample/reference/sampling.py.
constexpr int64_t kChunk = 2048;

// One call samples n_rows rows of `vocab` logits. Row r starts at element
// row_offsets[r] of `logits` (row_offsets null: r * row_stride); the last dim
// is contiguous. Each per-row parameter is an [N] array, or when its pointer is
// null the *_val beside it for every row (mdsample/per_row.h); a null
// `position` means the flat row index r. Other optional pointers are null when
// absent. Bad rows (NaN or +inf logit, or no finite allowed logit) return -1.
struct SampleArgs {
  const void* logits;
  int dtype;
  int64_t n_rows;
  int64_t vocab;
  const int64_t* row_offsets;         // [N] or null
  int64_t row_stride;                 // with row_offsets null
  const void* guidance;               // unconditional logits, same dtype
  const int64_t* guidance_offsets;    // [N] or null
  int64_t guidance_row_stride;        // with guidance_offsets null
  float guidance_scale;               // l = l_u + (w + 1)(l_c - l_u)
  const float* temperature;           // [N] or null, 0 = argmax
  float temperature_val;
  const int64_t* seed;                // [N] or null
  int64_t seed_val;
  const int64_t* offset;              // [N] or null
  int64_t offset_val;
  const int64_t* position;            // [N] or null: r
  int64_t exclude;                    // token never drawn; -1 = none
  const uint8_t* active;              // [N] or null: inactive rows are not read
  const int64_t* fallback;            // [N] or null: what inactive rows return
  const int64_t* x;                   // [N] or null: unmask_step mode
  int64_t mask_id;
  const double* reveal_prob;          // [N] or null, with x
  double reveal_prob_val;
  int64_t* out;                       // [N]
  float* stats;                       // [N, 4] or null: logprob, prob, margin, entropy
  const float* stats_temperature;     // [N] or null, with stats
  float stats_temperature_val;
};

void sample_cpu(const SampleArgs& args);

// The same draw on the GPU (csrc/sampling.cu): every pointer is device memory,
// `stream` the cudaStream_t (as an integer) the kernel is queued on, `device`
// the index of the GPU that holds the tensors and the stream; nothing is
// synchronized. Throws std::runtime_error on a launch failure, or when the
// vocabulary's chunk table does not fit in shared memory.
void sample_cuda(const SampleArgs& args, int64_t stream, int device);

}  // namespace mdsample
