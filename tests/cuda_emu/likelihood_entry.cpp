// ctypes entry of the emulated CUDA likelihood backend and the samplers'
// uniforms: csrc/likelihood.cu's and csrc/philox.cu's launchers on host memory
// (tests/test_likelihood_cuda_emulated.py).
#include <stdio.h>

#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>

#include "cuda_emu.h"
#include "likelihood.h"
#include "uniforms.h"

namespace {

const int kElementBytes[] = {4, 2, 2, 8};  // by DType code

int64_t stream_of() {
  static CUstream_st stream{cuda_emu::add_device(132, 227 * 1024)};
  return int64_t(reinterpret_cast<intptr_t>(&stream));
}

// Runs f under the schedule (cuda_emu::set_schedule); 0, or 1 with the error in error[error_len].
template <class F>
int run(F f, int policy, uint64_t schedule_seed, char* error, size_t error_len) {
  static std::mutex one_at_a_time;
  std::lock_guard<std::mutex> lock(one_at_a_time);
  try {
    cuda_emu::set_schedule(policy, schedule_seed);
    f();
    return 0;
  } catch (const std::exception& e) {
    snprintf(error, error_len, "%s", e.what());
    return 1;
  }
}

}  // namespace

// The fields of each launcher's argument struct in declaration order
// (csrc/likelihood.h), then the schedule and the error buffer.
extern "C" int mdsample_emu_lowdisc_timesteps_cuda(int64_t n, int64_t n_lattices, int mode, double eps, int64_t seed,
                                                   const int64_t* offset, double* out, int policy,
                                                   uint64_t schedule_seed, char* error, size_t error_len) {
  const mdsample::TimestepArgs a{n, n_lattices, mode, eps, seed, offset, out};
  return run([&] { mdsample::lowdisc_timesteps_cuda(a, stream_of()); }, policy, schedule_seed, error, error_len);
}

extern "C" int mdsample_emu_forward_mask_cuda(const int64_t* x0, int64_t batch, int64_t length,
                                              const uint8_t* maskable, const int64_t* seed, const int64_t* offset,
                                              const int64_t* position, const double* prob, const int64_t* count,
                                              int64_t mask_id, int64_t* out, int policy, uint64_t schedule_seed,
                                              char* error, size_t error_len) {
  const mdsample::ForwardMaskArgs a{x0, batch, length, maskable, seed, offset, position, prob, count, mask_id, out};
  return run([&] { mdsample::forward_mask_cuda(a, stream_of()); }, policy, schedule_seed, error, error_len);
}

// Only the rows of logits (and guidance) are declared readable, so a load
// outside them, or one misaligned for its width, fails the launch.
extern "C" int mdsample_emu_masked_nll_cuda(const void* logits, int dtype, int64_t vocab, const int64_t* row_offsets,
                                            const void* guidance, const int64_t* guidance_offsets,
                                            float guidance_scale, const int64_t* target, const int64_t* xt,
                                            const float* weight, int64_t mask_id, int64_t exclude, int64_t n_seqs,
                                            int64_t length, float* out, float* row_value, int policy,
                                            uint64_t schedule_seed, char* error, size_t error_len) {
  const mdsample::MaskedNllArgs a{logits, dtype, vocab,  row_offsets, guidance, guidance_offsets, guidance_scale,
                                  target, xt,    weight, mask_id,     exclude,  n_seqs,           length, out};
  return run([&] {
    if (dtype < 0 || dtype > 3) throw std::runtime_error("unknown dtype code");
    const size_t row_bytes = size_t(vocab) * kElementBytes[dtype];
    cuda_emu::clear_readable();
    for (int64_t r = 0; r < n_seqs * length; ++r) {
      cuda_emu::add_readable(static_cast<const char*>(logits) + row_offsets[r] * kElementBytes[dtype], row_bytes);
      if (guidance)
        cuda_emu::add_readable(static_cast<const char*>(guidance) + guidance_offsets[r] * kElementBytes[dtype],
                               row_bytes);
    }
    mdsample::masked_nll_cuda(a, row_value, stream_of());
  }, policy, schedule_seed, error, error_len);
}

extern "C" int mdsample_emu_uniforms_cuda(const int64_t* seed, int64_t seed_val, const int64_t* offset,
                                          int64_t offset_val, const int64_t* position, int64_t n, uint32_t domain,
                                          double* out, int policy, uint64_t schedule_seed, char* error,
                                          size_t error_len) {
  const mdsample::UniformArgs a{seed, seed_val, offset, offset_val, position, n, domain, out};
  return run([&] { mdsample::uniforms_cuda(a, stream_of()); }, policy, schedule_seed, error, error_len);
}
