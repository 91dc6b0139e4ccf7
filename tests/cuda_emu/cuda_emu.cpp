// Runtime of the CUDA emulation (see cuda_emu.h): fibers, the lockstep warp
// exchange, the CTA barrier, launches and the few runtime API calls launchers
// make. One launch at a time, on the calling OS thread.
#include "cuda_emu.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include <algorithm>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace cuda_emu {
namespace {

// ---- fibers: a context switch is a few register moves --------------------

#if defined(__x86_64__)
// Saves the callee-saved registers on the current stack, stores its pointer
// in *save and continues on stack `to` (System V ABI: the rest are the
// caller's to save).
extern "C" void cuda_emu_switch(void** save, void* to);
asm(R"(
  .text
  .p2align 4
  .globl cuda_emu_switch
  .hidden cuda_emu_switch
  .type cuda_emu_switch, @function
cuda_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cuda_emu_switch, .-cuda_emu_switch
)");

struct Context {
  void* sp = nullptr;
};
// A stack whose first switch "returns" into entry, aligned as after a call.
void start_context(Context& c, char* stack, size_t size, void (*entry)()) {
  auto* top = reinterpret_cast<void**>(reinterpret_cast<uintptr_t>(stack + size) & ~uintptr_t(15));
  *--top = nullptr;  // entry's return address: it never returns
  *--top = reinterpret_cast<void*>(entry);
  for (int i = 0; i < 6; ++i) *--top = nullptr;  // the six registers cuda_emu_switch pops
  c.sp = top;
}
void switch_context(Context& from, Context& to) { cuda_emu_switch(&from.sp, to.sp); }
#else
struct Context {
  ucontext_t uc;
};
void start_context(Context& c, char* stack, size_t size, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

constexpr size_t kStackBytes = 256 * 1024;  // committed lazily; kernels use a few KiB
constexpr size_t kGuardBytes = 4096;        // below each stack: an overflow faults at once
constexpr unsigned kFullMask = 0xffffffffu;

// ---- emulator state --------------------------------------------------------

enum class Wait { kReady, kWarp, kBlock, kDone };

struct Site {
  const char* what = nullptr;
  const char* file = nullptr;
  int line = 0;
  bool same(const Site& o) const { return line == o.line && !strcmp(what, o.what) && !strcmp(file, o.file); }
  std::string str() const { return std::string(what) + " at " + file + ":" + std::to_string(line); }
};

struct Thread {
  Context ctx;
  ThreadIds ids;
  int warp = 0;
  Wait wait = Wait::kReady;
  uint64_t gen = 0;  // generation of the warp exchange / barrier it waits for
};

struct Warp {
  uint64_t in[32], out[32];
  unsigned arrived = 0, exited = 0;  // lane bits
  int lanes = 0;
  uint64_t gen = 0;
  Site site;  // of the first lane to arrive
  int first = 0;
};

struct Device {
  int sms, smem_optin;
};

struct State {
  std::vector<Device> devices{{132, 227 * 1024}};
  int current_device = 0;
  cudaError_t last_error = cudaSuccess;
  std::map<const void*, int> max_dynamic_smem;  // cudaFuncSetAttribute, per kernel
  int policy = 0;
  uint64_t seed = 0;
  std::mt19937_64 rng;
  std::vector<std::pair<uintptr_t, uintptr_t>> readable;  // declared [begin, end), sorted when `sorted`
  bool sorted = true;
  std::map<uintptr_t, size_t> allocations;  // cudaMallocAsync blocks

  // The launch in flight.
  std::vector<char*> stacks;
  std::vector<Thread> threads;
  std::vector<Warp> warps;
  Thread* running = nullptr;
  Context scheduler;
  const std::function<void()>* body = nullptr;
  std::vector<unsigned char> smem;
  int live = 0;
  int barrier_arrived = 0;
  uint64_t barrier_gen = 0;
  Site barrier_site;
  int barrier_first = 0;
  std::string error;
};
State& S() {
  static State s;
  return s;
}

std::string where(const Thread& t) {
  const ThreadIds& i = t.ids;
  return "block (" + std::to_string(i.block.x) + "," + std::to_string(i.block.y) + "," + std::to_string(i.block.z) +
         ") thread " + std::to_string(i.thread.x + i.block_dim.x * (i.thread.y + i.block_dim.y * i.thread.z));
}

// Stops the launch: the failing fiber is never resumed.
[[noreturn]] void fail_launch(const std::string& message) {
  State& s = S();
  if (!s.running) throw std::runtime_error("cuda_emu: " + message);
  Thread& t = *s.running;
  if (s.error.empty()) s.error = "cuda_emu: " + message + " (" + where(t) + ")";
  t.wait = Wait::kDone;
  switch_context(t.ctx, s.scheduler);
  abort();  // unreachable: the scheduler does not resume a failed thread
}

Thread& running(const char* what) {
  State& s = S();
  if (!s.running) throw std::runtime_error(std::string("cuda_emu: ") + what + " outside a kernel");
  return *s.running;
}

void release_barrier(State& s) {
  s.barrier_arrived = 0;
  ++s.barrier_gen;
}

void fiber_main() {
  State& s = S();
  try {
    (*s.body)();
  } catch (const std::exception& e) {
    fail_launch(std::string("exception in a kernel: ") + e.what());
  }
  Thread& t = *s.running;
  Warp& w = s.warps[t.warp];
  if (w.arrived)
    fail_launch("lane " + std::to_string(t.ids.lane) + " exited while lane " + std::to_string(w.first) +
                " of its warp waits at " + w.site.str());
  w.exited |= 1u << t.ids.lane;
  t.wait = Wait::kDone;
  --s.live;
  if (s.barrier_arrived > 0 && s.barrier_arrived == s.live) release_barrier(s);  // sm_70+: exited threads do not count
  switch_context(t.ctx, s.scheduler);
  abort();
}

bool runnable(const State& s, const Thread& t) {
  switch (t.wait) {
    case Wait::kReady: return true;
    case Wait::kWarp: return s.warps[t.warp].gen != t.gen;
    case Wait::kBlock: return s.barrier_gen != t.gen;
    case Wait::kDone: return false;
  }
  return false;
}

std::string deadlock_report(const State& s) {
  std::string r = "deadlock: no thread can run;";
  for (const Warp& w : s.warps)
    if (w.arrived) r += " warp lanes " + std::to_string(__builtin_popcount(w.arrived)) + "/32 at " + w.site.str() + ";";
  if (s.barrier_arrived)
    r += " " + std::to_string(s.barrier_arrived) + "/" + std::to_string(s.live) + " threads at " + s.barrier_site.str();
  return r;
}

// Runs one CTA to completion; false (and s.error) when it failed.
bool run_cta(State& s, dim3 grid, dim3 block, unsigned linear_block, size_t smem) {
  const int n = int(block.x * block.y * block.z);
  while (s.stacks.size() < size_t(n)) {
    void* m = mmap(nullptr, kStackBytes + kGuardBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) throw std::runtime_error("cuda_emu: cannot map a fiber stack");
    mprotect(m, kGuardBytes, PROT_NONE);
    s.stacks.push_back(static_cast<char*>(m) + kGuardBytes);
  }
  s.threads.assign(n, Thread{});
  s.warps.assign((n + 31) / 32, Warp{});
  const uint3 b{linear_block % grid.x, (linear_block / grid.x) % grid.y, linear_block / (grid.x * grid.y)};
  for (int i = 0; i < n; ++i) {
    Thread& t = s.threads[i];
    t.ids.thread = uint3{unsigned(i) % block.x, (unsigned(i) / block.x) % block.y, unsigned(i) / (block.x * block.y)};
    t.ids.block = b;
    t.ids.block_dim = block;
    t.ids.grid_dim = grid;
    t.ids.lane = unsigned(i) % 32;
    t.warp = i / 32;
    s.warps[t.warp].lanes++;
    start_context(t.ctx, s.stacks[i], kStackBytes, fiber_main);
  }
  s.smem.assign(smem, 0xff);
  s.live = n;
  s.barrier_arrived = 0;
  std::vector<int> order(n);
  for (int i = 0; i < n; ++i) order[i] = s.policy == 1 ? n - 1 - i : i;
  while (s.live > 0) {
    if (s.policy == 2) std::shuffle(order.begin(), order.end(), s.rng);
    bool progressed = false;
    for (int i : order) {
      Thread& t = s.threads[i];
      if (!runnable(s, t)) continue;
      t.wait = Wait::kReady;
      s.running = &t;
      switch_context(s.scheduler, t.ctx);
      s.running = nullptr;
      if (!s.error.empty()) return false;
      progressed = true;
    }
    if (!progressed && s.live > 0) {
      s.error = "cuda_emu: " + deadlock_report(s);
      return false;
    }
  }
  return true;
}

cudaError_t set_error(cudaError_t e) {
  S().last_error = e;
  return e;
}

Device* device(int d) {
  State& s = S();
  return d >= 0 && d < int(s.devices.size()) ? &s.devices[d] : nullptr;
}

}  // namespace

// ---- host-side configuration ------------------------------------------------

int add_device(int sms, int smem_optin) {
  State& s = S();
  for (size_t d = 0; d < s.devices.size(); ++d)
    if (s.devices[d].sms == sms && s.devices[d].smem_optin == smem_optin) return int(d);
  s.devices.push_back(Device{sms, smem_optin});
  return int(s.devices.size()) - 1;
}

void set_schedule(int policy, uint64_t seed) {
  State& s = S();
  s.policy = policy;
  s.seed = seed;
  s.rng.seed(seed);
}

void add_readable(const void* p, size_t bytes) {
  State& s = S();
  s.readable.emplace_back(uintptr_t(p), uintptr_t(p) + bytes);
  s.sorted = false;
}

void clear_readable() {
  S().readable.clear();
  S().sorted = true;
}

size_t bytes_outstanding() {
  size_t total = 0;
  for (const auto& a : S().allocations) total += a.second;
  return total;
}

// ---- device side -----------------------------------------------------------

const ThreadIds& ids() { return running("threadIdx / blockIdx").ids; }

void* dynamic_shared_memory() { return S().smem.data(); }

void fail(const char* what, const char* file, int line) {
  fail_launch(std::string(what) + " at " + file + ":" + std::to_string(line));
}

void check_load(const void* p, size_t bytes, size_t align, const char* what, const char* file, int line) {
  State& s = S();
  const uintptr_t a = uintptr_t(p), e = a + bytes;
  const auto at = " at " + std::string(file) + ":" + std::to_string(line);
  if (a % align)
    fail_launch("misaligned " + std::string(what) + " of " + std::to_string(bytes) + " bytes from " +
                std::to_string(a % 16) + " bytes past a 16-byte boundary" + at);
  if (!s.sorted) {
    std::sort(s.readable.begin(), s.readable.end());
    s.readable.erase(std::unique(s.readable.begin(), s.readable.end()), s.readable.end());
    s.sorted = true;
  }
  auto it = std::upper_bound(s.readable.begin(), s.readable.end(), std::make_pair(a, UINTPTR_MAX));
  if (it != s.readable.begin() && std::prev(it)->second >= e) return;
  auto blk = s.allocations.upper_bound(a);
  if (blk != s.allocations.begin() && std::prev(blk)->first + std::prev(blk)->second >= e) return;
  std::string nearest;
  if (it != s.readable.begin())
    nearest = ", " + std::to_string(e - std::prev(it)->second) + " bytes past the end of the nearest region below";
  fail_launch(std::string(what) + " of " + std::to_string(bytes) + " bytes outside every readable region" + nearest + at);
}

const uint64_t* warp_exchange(unsigned mask, uint64_t value, const char* what, const char* file, int line) {
  State& s = S();
  Thread& t = running(what);
  Warp& w = s.warps[t.warp];
  const Site site{what, file, line};
  const unsigned lane = t.ids.lane;
  if (mask != kFullMask) fail_launch(site.str() + ": only the full mask is emulated");
  if (w.lanes != 32) fail_launch(site.str() + " in a warp of " + std::to_string(w.lanes) + " threads");
  if (w.exited) fail_launch(site.str() + " with the full mask after lanes of the warp exited");
  if (!w.arrived) {
    w.site = site;
    w.first = int(lane);
  } else if (!w.site.same(site)) {
    fail_launch("divergent warp: lane " + std::to_string(lane) + " at " + site.str() + " while lane " +
                std::to_string(w.first) + " waits at " + w.site.str());
  }
  w.in[lane] = value;
  w.arrived |= 1u << lane;
  if (w.arrived == kFullMask) {
    memcpy(w.out, w.in, sizeof(w.out));
    w.arrived = 0;
    ++w.gen;
    return w.out;
  }
  t.wait = Wait::kWarp;
  t.gen = w.gen;
  switch_context(t.ctx, s.scheduler);
  return w.out;  // no later exchange of this warp completes before this lane arrives at it
}

void sync_threads(const char* file, int line) {
  State& s = S();
  Thread& t = running("__syncthreads");
  const Site site{"__syncthreads", file, line};
  if (!s.barrier_arrived) {
    s.barrier_site = site;
    s.barrier_first = int(&t - s.threads.data());
  } else if (!s.barrier_site.same(site)) {
    fail_launch("divergent barrier: " + site.str() + " while thread " + std::to_string(s.barrier_first) +
                " waits at " + s.barrier_site.str());
  }
  if (++s.barrier_arrived == s.live) {
    release_barrier(s);
    return;
  }
  t.wait = Wait::kBlock;
  t.gen = s.barrier_gen;
  switch_context(t.ctx, s.scheduler);
}

cudaError_t set_func_attribute(const void* kernel, cudaFuncAttribute attr, int value) {
  const Device* d = device(S().current_device);
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || value > d->smem_optin)
    return set_error(cudaErrorInvalidValue);
  S().max_dynamic_smem[kernel] = value;
  return cudaSuccess;
}

cudaError_t launch(const void* kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                   const std::function<void()>& body) {
  State& s = S();
  if (s.running) fail_launch("a launch from device code");
  const int dev = stream ? stream->device : s.current_device;
  if (dev != s.current_device) return set_error(cudaErrorInvalidResourceHandle);  // a stream of another device
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu ||
      grid.y > 65535 || grid.z > 65535)
    return set_error(cudaErrorInvalidConfiguration);
  const auto attr = s.max_dynamic_smem.find(kernel);
  const size_t allowed = attr == s.max_dynamic_smem.end() ? 48 * 1024 : size_t(attr->second);
  if (smem > std::max<size_t>(allowed, 48 * 1024) || smem > size_t(device(dev)->smem_optin))
    return set_error(cudaErrorInvalidValue);

  const unsigned n_blocks = grid.x * grid.y * grid.z;
  std::vector<unsigned> order(n_blocks);
  for (unsigned i = 0; i < n_blocks; ++i) order[i] = i;
  if (s.seed) std::shuffle(order.begin(), order.end(), s.rng);
  s.body = &body;
  s.error.clear();
  for (unsigned b : order)
    if (!run_cta(s, grid, block, b, smem)) throw std::runtime_error(s.error);
  return cudaSuccess;
}

}  // namespace cuda_emu

// ---- runtime API -------------------------------------------------------------

using cuda_emu::S;

cudaError_t cudaGetDevice(int* device) {
  *device = S().current_device;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  if (!cuda_emu::device(device)) return cuda_emu::set_error(cudaErrorInvalidDevice);
  S().current_device = device;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  const cuda_emu::Device* d = cuda_emu::device(device);
  if (!d) return cuda_emu::set_error(cudaErrorInvalidDevice);
  if (attr == cudaDevAttrMultiProcessorCount) {
    *value = d->sms;
  } else if (attr == cudaDevAttrMaxSharedMemoryPerBlockOptin) {
    *value = d->smem_optin;
  } else {
    return cuda_emu::set_error(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}
cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int device) {
  if (!cuda_emu::device(device)) return cuda_emu::set_error(cudaErrorInvalidDevice);
  *pool = reinterpret_cast<cudaMemPool_t>(uintptr_t(device) + 1);  // a handle, never dereferenced
  return cudaSuccess;
}
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value) {
  if (!pool || attr != cudaMemPoolAttrReleaseThreshold || !value) return cuda_emu::set_error(cudaErrorInvalidValue);
  return cudaSuccess;
}
cudaError_t cudaMallocAsync(void** ptr, size_t bytes, cudaStream_t) {
  const size_t rounded = (bytes + 255) / 256 * 256;
  void* p = aligned_alloc(256, rounded ? rounded : 256);
  if (!p) return cuda_emu::set_error(cudaErrorMemoryAllocation);
  memset(p, 0xff, rounded);  // uninitialized device memory: NaN floats, all-ones counters
  S().allocations[uintptr_t(p)] = bytes;
  *ptr = p;
  return cudaSuccess;
}
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t) {
  if (!S().allocations.erase(uintptr_t(ptr))) return cuda_emu::set_error(cudaErrorInvalidValue);
  free(ptr);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t) {
  auto& allocs = S().allocations;
  auto blk = allocs.upper_bound(uintptr_t(ptr));
  if (blk == allocs.begin() || std::prev(blk)->first + std::prev(blk)->second < uintptr_t(ptr) + bytes)
    return cuda_emu::set_error(cudaErrorInvalidValue);  // outside every allocation
  memset(ptr, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaGetLastError() {
  const cudaError_t e = S().last_error;
  S().last_error = cudaSuccess;
  return e;
}
const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
  }
  return "unknown error";
}
