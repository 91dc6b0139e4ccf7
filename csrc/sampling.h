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
// row_offsets[r] of `logits`; the last dim is contiguous. Optional pointers are
// null when absent. Bad rows (NaN or +inf logit, or no finite allowed logit)
// return -1.
struct SampleArgs {
  const void* logits;
  int dtype;
  int64_t n_rows;
  int64_t vocab;
  const int64_t* row_offsets;
  const void* guidance;               // unconditional logits, same dtype
  const int64_t* guidance_offsets;
  float guidance_scale;               // l = l_u + (w + 1)(l_c - l_u)
  const float* temperature;           // [N], 0 = argmax
  const int64_t* seed;                // [N]
  const int64_t* offset;              // [N]
  const int64_t* position;            // [N]
  int64_t exclude;                    // token never drawn; -1 = none
  const uint8_t* active;              // [N] or null: inactive rows are not read
  const int64_t* fallback;            // [N] or null: what inactive rows return
  const int64_t* x;                   // [N] or null: unmask_step mode
  int64_t mask_id;
  const double* reveal_prob;          // [N], with x
  int64_t* out;                       // [N]
  float* stats;                       // [N, 4] or null: logprob, prob, margin, entropy
  const float* stats_temperature;     // [N], with stats
};

void sample_cpu(const SampleArgs& args);

// The same draw on the GPU (csrc/sampling.cu): every pointer is device memory,
// `stream` the cudaStream_t (as an integer) the kernel is queued on; nothing is
// synchronized. Throws std::runtime_error on a launch failure, or when the
// vocabulary's chunk table does not fit in shared memory.
void sample_cuda(const SampleArgs& args, int64_t stream);

}  // namespace mdsample
