// ctypes entry of the emulated CUDA sampling backend: csrc/sampling.cu's
// sample_cuda on host memory, on a fake device of `sms` SMs and `smem_optin`
// bytes of shared memory per CTA (tests/test_cuda_emulated.py).
#include <stdio.h>

#include <exception>
#include <mutex>
#include <string>

#include "cuda_emu.h"
#include "mdsample/per_row.h"
#include "sampling.h"

namespace {

const int kElementBytes[] = {4, 2, 2, 8};  // by DType code

// Each row of `base` (vocab elements from its row offset) is readable by the kernel's loads.
void declare_rows(const void* base, int element_bytes, int64_t n_rows, int64_t vocab, const int64_t* row_offsets,
                  int64_t row_stride) {
  for (int64_t r = 0; r < n_rows; ++r)
    cuda_emu::add_readable(
        static_cast<const char*>(base) + mdsample::per_row(row_offsets, r * row_stride, r) * element_bytes,
        size_t(vocab) * element_bytes);
}

}  // namespace

// The SampleArgs fields in declaration order (csrc/sampling.h), then the fake
// device and the schedule (cuda_emu::set_schedule). Returns 0, or 1 with the
// error in error[error_len].
extern "C" int mdsample_emu_sample_cuda(
    const void* logits, int dtype, int64_t n_rows, int64_t vocab, const int64_t* row_offsets, int64_t row_stride,
    const void* guidance, const int64_t* guidance_offsets, int64_t guidance_row_stride, float guidance_scale,
    const float* temperature, float temperature_val, const int64_t* seed, int64_t seed_val, const int64_t* offset,
    int64_t offset_val, const int64_t* position, int64_t exclude, const uint8_t* active, const int64_t* fallback,
    const int64_t* x, int64_t mask_id, const double* reveal_prob, double reveal_prob_val, int64_t* out, float* stats,
    const float* stats_temperature, float stats_temperature_val, int sms, int smem_optin, int policy,
    uint64_t schedule_seed, char* error, size_t error_len) {
  static std::mutex one_at_a_time;
  std::lock_guard<std::mutex> lock(one_at_a_time);
  const mdsample::SampleArgs a{logits, dtype, n_rows, vocab, row_offsets, row_stride, guidance, guidance_offsets,
                               guidance_row_stride, guidance_scale, temperature, temperature_val, seed, seed_val,
                               offset, offset_val, position, exclude, active, fallback, x, mask_id, reveal_prob,
                               reveal_prob_val, out, stats, stats_temperature, stats_temperature_val};
  try {
    if (dtype < 0 || dtype > 3) throw std::runtime_error("unknown dtype code");
    cuda_emu::clear_readable();
    declare_rows(logits, kElementBytes[dtype], n_rows, vocab, row_offsets, row_stride);
    if (guidance) declare_rows(guidance, kElementBytes[dtype], n_rows, vocab, guidance_offsets, guidance_row_stride);
    cuda_emu::set_schedule(policy, schedule_seed);
    const size_t outstanding = cuda_emu::bytes_outstanding();  // a failed launch earlier may have left its scratch
    const int device = cuda_emu::add_device(sms, smem_optin);
    CUstream_st stream{device};
    mdsample::sample_cuda(a, int64_t(reinterpret_cast<intptr_t>(&stream)), device);
    if (cuda_emu::bytes_outstanding() != outstanding)
      throw std::runtime_error(std::to_string(cuda_emu::bytes_outstanding() - outstanding) +
                               " bytes of cudaMallocAsync not freed");
    return 0;
  } catch (const std::exception& e) {
    snprintf(error, error_len, "%s", e.what());
    return 1;
  }
}
