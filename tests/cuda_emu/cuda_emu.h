// CUDA emulation for the CPU: compiles an unmodified .cu file with g++ and runs
// its kernels, every CUDA thread a fiber, so CI without a GPU executes the
// kernel source itself (tests/test_cuda_emulated.py).
//
//   g++ -std=c++17 -x c++ -DMDSAMPLE_CUDA_EMULATION -Itests/cuda_emu ... kernel.cu
//
// tests/cuda_emu/cuda_runtime.h and cuda_fp16.h forward here, so the file's own
// includes resolve to this shim. Semantics emulated (cuda_emu.cpp):
//  - a launch runs its CTAs one at a time, in an order that can be shuffled
//    (set_schedule), so a `static` local is one instance per CTA: that is what
//    __shared__ expands to (it keeps the previous CTA's values, and starts at
//    zero); dynamic shared memory is a per-CTA buffer filled with 0xff bytes
//    (NaN floats, -1 ints) at every CTA start, so reading a slot nobody wrote
//    shows up as NaN;
//  - the threads of a CTA are fibers switched only at warp intrinsics and
//    __syncthreads, picked in ascending, descending or random order: a result
//    that changes with the schedule is a race;
//  - a warp intrinsic is executed in lockstep: each lane deposits its value and
//    waits until all 32 lanes of its warp arrived at the same intrinsic (same
//    source line) with the full mask; anything else (a partial mask, a lane at
//    another intrinsic, a lane that exited, a deadlock) fails the launch with
//    a message naming the lanes and source lines;
//  - __ldg / __ldcg check their address against the regions the host declared
//    readable (add_readable, plus every cudaMallocAsync block) and against the
//    load's alignment, as the hardware would fault on a misaligned vector load;
//  - dynamic shared memory over 48 KiB needs cudaFuncSetAttribute first, and
//    must fit the device's opt-in limit; devices are configurable (add_device)
//    so a test can pick the SM count that selects a launch plan.
// Float math is the host's (glibc expf / logf / exp): bit-exact with the GPU
// only where the kernel uses no library function and no FMA contraction.
#pragma once
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#define MDSAMPLE_CUDA_EMULATION 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct __half {
  unsigned short bits;
};

// ---- runtime API -----------------------------------------------------------

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidResourceHandle = 400,
};
enum cudaDeviceAttr : int {
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
  cudaDevAttrMultiProcessorCount = 16,
};
enum cudaFuncAttribute : int { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaMemPoolAttr : int { cudaMemPoolAttrReleaseThreshold = 4 };
struct CUstream_st {
  int device;
};
typedef CUstream_st* cudaStream_t;
struct CUmemPoolHandle_st;
typedef CUmemPoolHandle_st* cudaMemPool_t;

cudaError_t cudaGetDevice(int* device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int device);
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value);
cudaError_t cudaMallocAsync(void** ptr, size_t bytes, cudaStream_t stream);
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t stream);
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream);
cudaError_t cudaGetLastError();
const char* cudaGetErrorString(cudaError_t err);

namespace cuda_emu {

// ---- host-side configuration (tests) ---------------------------------------

// A fake device: returns its index for cudaSetDevice / a stream. The same
// configuration twice gives the same index.
int add_device(int sms, int smem_optin);
// CTA order and thread pick order of later launches. policy: 0 ascending,
// 1 descending, 2 random; seed shuffles the CTA order (0: in order) and drives
// the random picks.
void set_schedule(int policy, uint64_t seed);
// Memory that __ldg / __ldcg may read, until clear_readable().
void add_readable(const void* p, size_t bytes);
void clear_readable();
// Bytes allocated by cudaMallocAsync and not yet freed.
size_t bytes_outstanding();

// ---- device side -----------------------------------------------------------

struct ThreadIds {
  uint3 thread, block;
  dim3 block_dim, grid_dim;
  unsigned lane;
};
const ThreadIds& ids();  // of the running emulated thread
void* dynamic_shared_memory();
[[noreturn]] void fail(const char* what, const char* file, int line);
void check_load(const void* p, size_t bytes, size_t align, const char* what, const char* file, int line);

// Warp exchange: the calling lane deposits `value`, waits until the 32 lanes of
// its warp all arrived here (same `what`, file and line, full mask), and gets
// the 32 deposits, indexed by lane.
const uint64_t* warp_exchange(unsigned mask, uint64_t value, const char* what, const char* file, int line);
void sync_threads(const char* file, int line);

cudaError_t launch(const void* kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                   const std::function<void()>& body);
cudaError_t set_func_attribute(const void* kernel, cudaFuncAttribute attr, int value);

template <class T>
uint64_t to_word(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp intrinsics move 8 bytes at most");
  uint64_t w = 0;
  memcpy(&w, &v, sizeof(T));
  return w;
}
template <class T>
T from_word(uint64_t w) {
  T v;
  memcpy(&v, &w, sizeof(T));
  return v;
}

}  // namespace cuda_emu

#define threadIdx (::cuda_emu::ids().thread)
#define blockIdx (::cuda_emu::ids().block)
#define blockDim (::cuda_emu::ids().block_dim)
#define gridDim (::cuda_emu::ids().grid_dim)

template <class T>
cudaError_t cudaFuncSetAttribute(T* kernel, cudaFuncAttribute attr, int value) {
  return cuda_emu::set_func_attribute(reinterpret_cast<const void*>(kernel), attr, value);
}

namespace cuda_emu {
template <class... P, size_t... I>
cudaError_t launch_unpacked(void (*kernel)(P...), dim3 grid, dim3 block, void** args, size_t smem,
                            cudaStream_t stream, std::index_sequence<I...>) {
  std::tuple<std::decay_t<P>...> params{*static_cast<std::decay_t<P>*>(args[I])...};
  return launch(reinterpret_cast<const void*>(kernel), grid, block, smem, stream, [&] { std::apply(kernel, params); });
}
}  // namespace cuda_emu

// The kernel parameters are copied out of `args` once per launch, as the
// driver copies them to constant memory.
template <class... P>
cudaError_t cudaLaunchKernel(void (*kernel)(P...), dim3 grid, dim3 block, void** args, size_t smem = 0,
                             cudaStream_t stream = nullptr) {
  return cuda_emu::launch_unpacked(kernel, grid, block, args, smem, stream, std::index_sequence_for<P...>());
}

// ---- warp intrinsics (lockstep over the 32 fibers of a warp) --------------

#define CUDA_EMU_SITE const char *file_ = __builtin_FILE(), int line_ = __builtin_LINE()

template <class T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32, CUDA_EMU_SITE) {
  if (width != 32) cuda_emu::fail("__shfl_sync: only width 32 is emulated", file_, line_);
  return cuda_emu::from_word<T>(cuda_emu::warp_exchange(mask, cuda_emu::to_word(v), "__shfl_sync", file_, line_)[src & 31]);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, CUDA_EMU_SITE) {
  if (width != 32) cuda_emu::fail("__shfl_xor_sync: only width 32 is emulated", file_, line_);
  const uint64_t* all = cuda_emu::warp_exchange(mask, cuda_emu::to_word(v), "__shfl_xor_sync", file_, line_);
  return cuda_emu::from_word<T>(all[(cuda_emu::ids().lane ^ unsigned(lane_mask)) & 31]);
}
template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32, CUDA_EMU_SITE) {
  if (width != 32) cuda_emu::fail("__shfl_up_sync: only width 32 is emulated", file_, line_);
  const uint64_t* all = cuda_emu::warp_exchange(mask, cuda_emu::to_word(v), "__shfl_up_sync", file_, line_);
  const unsigned lane = cuda_emu::ids().lane;
  return lane >= delta ? cuda_emu::from_word<T>(all[lane - delta]) : v;  // lanes below delta keep theirs
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32, CUDA_EMU_SITE) {
  if (width != 32) cuda_emu::fail("__shfl_down_sync: only width 32 is emulated", file_, line_);
  const uint64_t* all = cuda_emu::warp_exchange(mask, cuda_emu::to_word(v), "__shfl_down_sync", file_, line_);
  const unsigned lane = cuda_emu::ids().lane;
  return lane + delta < 32 ? cuda_emu::from_word<T>(all[lane + delta]) : v;
}
inline unsigned __ballot_sync(unsigned mask, int pred, CUDA_EMU_SITE) {
  const uint64_t* all = cuda_emu::warp_exchange(mask, pred != 0, "__ballot_sync", file_, line_);
  unsigned bits = 0;
  for (int l = 0; l < 32; ++l) bits |= unsigned(all[l] != 0) << l;
  return bits;
}
inline int __any_sync(unsigned mask, int pred, CUDA_EMU_SITE) {
  const uint64_t* all = cuda_emu::warp_exchange(mask, pred != 0, "__any_sync", file_, line_);
  for (int l = 0; l < 32; ++l)
    if (all[l]) return 1;
  return 0;
}
inline int __all_sync(unsigned mask, int pred, CUDA_EMU_SITE) {
  const uint64_t* all = cuda_emu::warp_exchange(mask, pred != 0, "__all_sync", file_, line_);
  for (int l = 0; l < 32; ++l)
    if (!all[l]) return 0;
  return 1;
}
inline void __syncwarp(unsigned mask = 0xffffffffu, CUDA_EMU_SITE) {
  cuda_emu::warp_exchange(mask, 0, "__syncwarp", file_, line_);
}
inline void __syncthreads(CUDA_EMU_SITE) { cuda_emu::sync_threads(file_, line_); }
inline void __threadfence() {}  // CTAs run one after the other: every store is already visible

// ---- memory ---------------------------------------------------------------

template <class T>
T __ldg(const T* p, CUDA_EMU_SITE) {
  cuda_emu::check_load(p, sizeof(T), alignof(T), "__ldg", file_, line_);
  return *p;
}
template <class T>
T __ldcg(const T* p, CUDA_EMU_SITE) {
  cuda_emu::check_load(p, sizeof(T), alignof(T), "__ldcg", file_, line_);
  return *p;
}
template <class T>
T atomicAdd(T* p, T v) {  // fibers of one OS thread: a plain read-modify-write is atomic
  const T old = *p;
  *p = old + v;
  return old;
}

// ---- numeric intrinsics ---------------------------------------------------

inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffs(unsigned x) { return __builtin_ffs(int(x)); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
// Rounded, never-contracted arithmetic: what the host does with -ffp-contract=off.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
// The GPU's __expf is an approximation (ex2.approx, 2 + 1.16|x| ulp): emulated
// results built on it match the GPU's to that tolerance, not bit for bit.
inline float __expf(float x) { return expf(x); }
inline float __uint_as_float(unsigned x) { return __builtin_bit_cast(float, x); }
inline float __int_as_float(int x) { return __builtin_bit_cast(float, x); }
inline int __float_as_int(float x) { return __builtin_bit_cast(int, x); }
inline unsigned __float_as_uint(float x) { return __builtin_bit_cast(unsigned, x); }
inline float __double2float_rn(double x) { return float(x); }  // host rounding is to nearest even
inline __half __ushort_as_half(unsigned short x) { return __half{x}; }
// IEEE binary16 to binary32, exact (every half is a float).
inline float __half2float(__half h) {
  const unsigned sign = unsigned(h.bits >> 15) << 31, exp = (h.bits >> 10) & 31u, man = h.bits & 1023u;
  if (exp == 31) return __uint_as_float(sign | 0x7f800000u | (man << 13));
  if (exp != 0) return __uint_as_float(sign | ((exp + 112u) << 23) | (man << 13));
  return (sign ? -1.0f : 1.0f) * float(man) * 0x1p-24f;  // subnormal (or zero)
}

// CUDA's integer min / max overloads (the host's take one type).
template <class A, class B>
constexpr std::common_type_t<A, B> min(A a, B b) {
  return b < a ? b : a;
}
template <class A, class B>
constexpr std::common_type_t<A, B> max(A a, B b) {
  return a < b ? b : a;
}
