// Counter-based Philox4x32-10 and the counter layout every mdsample draw uses.
//
// The generator is Random123's philox4x32_10 (also cuRAND's and Triton's): a
// draw depends only on (key, counter), so a row's random words are a pure
// function of (seed, offset, position, domain) whatever the batch, row order
// or backend. Verified against Random123's known-answer vectors in
// tests/test_philox.py.
//
// Counter layout (128 bits):
//   c0 = position[31:0]
//   c1 = position[47:32] | domain << 16
//   c2 = offset[31:0]
//   c3 = offset[63:32]
// key = seed (k0 = low word, k1 = high word).
#pragma once
#include <stdint.h>

#if defined(__CUDACC__)
#define MDS_HD __host__ __device__ __forceinline__
#else
#define MDS_HD inline
#endif

namespace mdsample {

// Distinct purposes never share counter words (DESIGN.md §3).
enum Domain : uint32_t {
  kDomainToken = 0,       // categorical draw: u1 picks the chunk, u2 the token
  kDomainReveal = 1,      // unmask_step reveal coin
  kDomainTimestep = 2,    // lowdisc_timesteps
  kDomainForwardMask = 3, // forward_mask Bernoulli coins
};

constexpr int64_t kMaxPosition = (int64_t(1) << 48) - 1;

struct Philox4 {
  uint32_t w[4];
};

MDS_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  uint64_t p = uint64_t(a) * uint64_t(b);
  *hi = uint32_t(p >> 32);
  *lo = uint32_t(p);
}

MDS_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                             uint32_t k0, uint32_t k1) {
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(0xD2511F53u, c0, &hi0, &lo0);
    mulhilo32(0xCD9E8D57u, c2, &hi1, &lo1);
    uint32_t n0 = hi1 ^ c1 ^ k0;
    uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// The four words a (seed, offset, position, domain) draw gets.
MDS_HD Philox4 draw_words(uint64_t seed, uint64_t offset, uint64_t position,
                          uint32_t domain) {
  return philox4x32_10(uint32_t(position),
                       uint32_t((position >> 32) & 0xFFFFu) | (domain << 16),
                       uint32_t(offset), uint32_t(offset >> 32), uint32_t(seed),
                       uint32_t(seed >> 32));
}

// Uniform on (0, 1) from 52 random bits, centred: (k + 0.5) * 2^-52. Exact in a
// double (53 bits hold k + 0.5; with 53 random bits the top value would round
// to 1.0), never 0 or 1, and fine enough that a token of probability
// p >= 1e-10 sees a relative grid error below 1e-5.
MDS_HD uint64_t uniform52_bits(uint32_t hi, uint32_t lo) { return (uint64_t(hi) << 20) | (uint64_t(lo) >> 12); }
MDS_HD double uniform52(uint32_t hi, uint32_t lo) {
  return (double(uniform52_bits(hi, lo)) + 0.5) * (1.0 / 4503599627370496.0);
}

}  // namespace mdsample
