// Reading logits rows on the GPU: the storage word of each logits dtype, its
// conversion to the fp32 score, and 16-byte vector loads that also serve rows
// off a 16-byte boundary. For CUDA translation units only (the CPU side is
// cpu_rows.h), and for tests/cuda_emu, which compiles them with g++.
#pragma once
#if !defined(__CUDACC__) && !defined(MDSAMPLE_CUDA_EMULATION)
#error "cuda_loads.h is for CUDA translation units"
#endif
#include <cuda_fp16.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

namespace mdsample {
namespace cuda_loads {

// ---- logits dtypes: storage word and conversion to the fp32 score ----------

struct F32 {
  using Raw = float;
  static __device__ __forceinline__ float cvt(Raw x) { return x; }
};
struct F16 {
  using Raw = unsigned short;
  static __device__ __forceinline__ float cvt(Raw x) { return __half2float(__ushort_as_half(x)); }
};
struct BF16 {
  using Raw = unsigned short;
  static __device__ __forceinline__ float cvt(Raw x) { return __uint_as_float(unsigned(x) << 16); }
};
struct F64 {
  using Raw = double;
  static __device__ __forceinline__ float cvt(Raw x) { return __double2float_rn(x); }  // as the CPU's float(v)
};

template <class D>
__host__ __device__ constexpr int vec_len() { return 16 / int(sizeof(typename D::Raw)); }  // elements per 16-byte load

// Largest power of two <= 16 (bytes) dividing the address p.
__device__ __forceinline__ int alignment(const void* p) {
  const unsigned low = unsigned(reinterpret_cast<uintptr_t>(p)) | 16u;
  return int(low & (0u - low));
}

// Unsigned word of kBytes bytes: the unit of one load instruction.
template <int kBytes> struct Word;
template <> struct Word<16> { using T = uint4; };
template <> struct Word<8> { using T = uint2; };
template <> struct Word<4> { using T = unsigned int; };
template <> struct Word<2> { using T = unsigned short; };

// The 16 bytes (vec_len<D>() elements) at p as fp32, read in loads of kBytes
// each: one 16-byte load for aligned rows; rows that start off a 16-byte
// boundary (odd V, sliced tensors) take the widest loads their alignment
// allows, and the values land in the same registers either way, so a row's
// result does not depend on its address.
template <class D, int kBytes>
__device__ __forceinline__ void load_vec(const typename D::Raw* p, float* out) {
  constexpr int kVec = vec_len<D>();
  using W = typename Word<kBytes>::T;
  W words[16 / kBytes];
#pragma unroll
  for (int q = 0; q < 16 / kBytes; ++q) words[q] = __ldg(reinterpret_cast<const W*>(p) + q);
  typename D::Raw raw[kVec];
  memcpy(raw, words, 16);
#pragma unroll
  for (int j = 0; j < kVec; ++j) out[j] = D::cvt(raw[j]);
}

// Widest load (bytes) a row of alignment `align` allows, as a compile-time
// dispatch: calls f(std::integral_constant<int, kBytes>).
template <class D, class F>
__device__ __forceinline__ void with_load_width(int align, F&& f) {
  constexpr int kElem = int(sizeof(typename D::Raw));
  if (align >= 16) {
    f(std::integral_constant<int, 16>());
  } else if (align >= 8 || kElem == 8) {
    f(std::integral_constant<int, (kElem > 8 ? kElem : 8)>());
  } else if (align >= 4 || kElem == 4) {
    f(std::integral_constant<int, (kElem > 4 ? kElem : 4)>());
  } else {
    f(std::integral_constant<int, kElem>());
  }
}

}  // namespace cuda_loads
}  // namespace mdsample
