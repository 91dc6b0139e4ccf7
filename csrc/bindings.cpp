// mdsample._C: one flat export list. Launchers take raw pointers (as Python
// ints), sizes and dtype codes; nothing here includes torch (DESIGN.md §2).
#include <pybind11/pybind11.h>

#include <stdint.h>

#include <string>
#include <type_traits>

#include "likelihood.h"
#include "sampling.h"
#include "uniforms.h"

namespace py = pybind11;

namespace mdsample {
const char* cpu_isa();
const char* set_cpu_isa(const char* name);
bool cuda_compiled();
const char* cuda_archs();
void philox_host(uint32_t* out, int64_t n, const uint32_t* counters, const uint32_t* keys);
void philox_cuda(uint64_t out, int64_t n, uint64_t counters, uint64_t keys, int64_t stream);
}  // namespace mdsample

namespace {

template <typename T>
T* ptr(const py::kwargs& kw, const char* name) {
  return reinterpret_cast<T*>(kw[name].cast<uintptr_t>());
}

// SampleArgs' fields, in declaration order, as the sampling launchers take them: positionally,
// since parsing 28 keywords cost ~5 us a call, more than a decode-shape kernel. Exported as
// SAMPLE_FIELDS; mdsample/ops/_rows.py checks its own order against it at import.
#define MDS_SAMPLE_FIELDS(X)                                                                                  \
  X(logits) X(dtype) X(n_rows) X(vocab) X(row_offsets) X(row_stride) X(guidance) X(guidance_offsets)           \
  X(guidance_row_stride) X(guidance_scale) X(temperature) X(temperature_val) X(seed) X(seed_val) X(offset)     \
  X(offset_val) X(position) X(exclude) X(active) X(fallback) X(x) X(mask_id) X(reveal_prob) X(reveal_prob_val) \
  X(out) X(stats) X(stats_temperature) X(stats_temperature_val)

#define MDS_COUNT(name) +1
constexpr size_t kSampleFields = 0 MDS_SAMPLE_FIELDS(MDS_COUNT);
#undef MDS_COUNT

// A pointer arrives as a Python int (0 = null), every other field as its own type.
template <typename T>
void set_field(T& field, py::handle value) {
  if constexpr (std::is_pointer_v<T>) {
    field = reinterpret_cast<T>(value.cast<uintptr_t>());
  } else {
    field = value.cast<T>();
  }
}

// args: the kSampleFields values in MDS_SAMPLE_FIELDS order, then `extra` more (the stream, the device).
mdsample::SampleArgs sample_args(const py::args& args, size_t extra) {
  if (args.size() != kSampleFields + extra) {
    throw py::type_error("mdsample._C sampling launcher: expected " + std::to_string(kSampleFields + extra) +
                         " positional arguments (SAMPLE_FIELDS" + (extra ? ", stream, device" : "") + "), got " +
                         std::to_string(args.size()));
  }
  mdsample::SampleArgs a;
  size_t i = 0;
#define MDS_READ(name) set_field(a.name, args[i++]);
  MDS_SAMPLE_FIELDS(MDS_READ)
#undef MDS_READ
  return a;
}

mdsample::TimestepArgs timestep_args(const py::kwargs& kw) {
  mdsample::TimestepArgs a;
  a.n = kw["n"].cast<int64_t>();
  a.n_lattices = kw["n_lattices"].cast<int64_t>();
  a.mode = kw["mode"].cast<int>();
  a.eps = kw["eps"].cast<double>();
  a.seed = kw["seed"].cast<int64_t>();
  a.offset = ptr<const int64_t>(kw, "offset");
  a.out = ptr<double>(kw, "out");
  return a;
}

mdsample::ForwardMaskArgs forward_mask_args(const py::kwargs& kw) {
  mdsample::ForwardMaskArgs a;
  a.x0 = ptr<const int64_t>(kw, "x0");
  a.batch = kw["batch"].cast<int64_t>();
  a.length = kw["length"].cast<int64_t>();
  a.maskable = ptr<const uint8_t>(kw, "maskable");
  a.seed = ptr<const int64_t>(kw, "seed");
  a.offset = ptr<const int64_t>(kw, "offset");
  a.position = ptr<const int64_t>(kw, "position");
  a.prob = ptr<const double>(kw, "prob");
  a.count = ptr<const int64_t>(kw, "count");
  a.mask_id = kw["mask_id"].cast<int64_t>();
  a.out = ptr<int64_t>(kw, "out");
  return a;
}

mdsample::MaskedNllArgs masked_nll_args(const py::kwargs& kw) {
  mdsample::MaskedNllArgs a;
  a.logits = ptr<const void>(kw, "logits");
  a.dtype = kw["dtype"].cast<int>();
  a.vocab = kw["vocab"].cast<int64_t>();
  a.row_offsets = ptr<const int64_t>(kw, "row_offsets");
  a.guidance = ptr<const void>(kw, "guidance");
  a.guidance_offsets = ptr<const int64_t>(kw, "guidance_offsets");
  a.guidance_scale = kw["guidance_scale"].cast<float>();
  a.target = ptr<const int64_t>(kw, "target");
  a.xt = ptr<const int64_t>(kw, "xt");
  a.weight = ptr<const float>(kw, "weight");
  a.mask_id = kw["mask_id"].cast<int64_t>();
  a.exclude = kw["exclude"].cast<int64_t>();
  a.n_seqs = kw["n_seqs"].cast<int64_t>();
  a.length = kw["length"].cast<int64_t>();
  a.out = ptr<float>(kw, "out");
  return a;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "mdsample compiled kernels (CPU, and CUDA when built with nvcc)";
  m.def("cpu_isa", &mdsample::cpu_isa, "Instruction set of the CPU kernels in use: base, avx2 or avx512");
  m.def("set_cpu_isa", [](const std::string& name) {
    const char* now = mdsample::set_cpu_isa(name.c_str());
    if (!now) throw py::value_error("set_cpu_isa: name must be 'base', 'avx2' or 'avx512'; got '" + name + "'");
    return std::string(now);
  }, py::arg("name"),
     "Caps the CPU kernels' instruction set (the best this machine runs, at most `name`); returns the one in "
     "use. For tests and bitwise reproducibility across machines (also: MDSAMPLE_CPU_ISA)");
  m.def("has_cuda", &mdsample::cuda_compiled, "Whether CUDA code was compiled into this build");
  m.def("cuda_archs", &mdsample::cuda_archs, "CUDA architectures compiled in (empty without nvcc)");
  py::list sample_fields;
#define MDS_NAME(name) sample_fields.append(#name);
  MDS_SAMPLE_FIELDS(MDS_NAME)
#undef MDS_NAME
  m.attr("SAMPLE_FIELDS") = py::tuple(sample_fields);
  m.def("sample_cpu", [](py::args args) {
    const mdsample::SampleArgs a = sample_args(args, 0);
    py::gil_scoped_release nogil;
    mdsample::sample_cpu(a);
  }, "Row draw of sample_categorical / unmask_step on CPU: the SAMPLE_FIELDS values, positionally "
     "(csrc/sampling.h)");
  m.def("sample_cuda", [](py::args args) {
    const mdsample::SampleArgs a = sample_args(args, 2);
    const int64_t stream = args[kSampleFields].cast<int64_t>();
    const int device = args[kSampleFields + 1].cast<int>();
    py::gil_scoped_release nogil;
    mdsample::sample_cuda(a, stream, device);
  }, "Row draw of sample_categorical / unmask_step on the GPU: the SAMPLE_FIELDS values, then the "
     "cudaStream_t as an int and the tensors' device index (csrc/sampling.h)");
  // The samplers' uniforms: eight typed arguments (mdsample/ops/_launch.py passes them by name).
  auto uniform_args = [](uintptr_t seed, int64_t seed_val, uintptr_t offset, int64_t offset_val, uintptr_t position,
                         int64_t n, uint32_t domain, uintptr_t out) {
    return mdsample::UniformArgs{reinterpret_cast<const int64_t*>(seed), seed_val,
                                 reinterpret_cast<const int64_t*>(offset), offset_val,
                                 reinterpret_cast<const int64_t*>(position), n, domain, reinterpret_cast<double*>(out)};
  };
  m.def("uniforms_cpu", [uniform_args](uintptr_t seed, int64_t seed_val, uintptr_t offset, int64_t offset_val,
                                       uintptr_t position, int64_t n, uint32_t domain, uintptr_t out) {
    const mdsample::UniformArgs a = uniform_args(seed, seed_val, offset, offset_val, position, n, domain, out);
    py::gil_scoped_release nogil;
    mdsample::uniforms_cpu(a);
  }, py::arg("seed"), py::arg("seed_val"), py::arg("offset"), py::arg("offset_val"), py::arg("position"),
     py::arg("n"), py::arg("domain"), py::arg("out"),
     "Two Philox uniforms per position into out [2, n] float64, on CPU (see csrc/uniforms.h)");
  m.def("uniforms_cuda", [uniform_args](uintptr_t seed, int64_t seed_val, uintptr_t offset, int64_t offset_val,
                                        uintptr_t position, int64_t n, uint32_t domain, uintptr_t out,
                                        int64_t stream) {
    const mdsample::UniformArgs a = uniform_args(seed, seed_val, offset, offset_val, position, n, domain, out);
    py::gil_scoped_release nogil;
    mdsample::uniforms_cuda(a, stream);
  }, py::arg("seed"), py::arg("seed_val"), py::arg("offset"), py::arg("offset_val"), py::arg("position"),
     py::arg("n"), py::arg("domain"), py::arg("out"), py::arg("stream"),
     "uniforms_cpu on the GPU, queued on `stream` of the current device (see csrc/uniforms.h)");
  m.def("philox_host", [](uintptr_t out, int64_t n, uintptr_t counters, uintptr_t keys) {
    mdsample::philox_host(reinterpret_cast<uint32_t*>(out), n, reinterpret_cast<const uint32_t*>(counters),
                          reinterpret_cast<const uint32_t*>(keys));
  }, py::arg("out"), py::arg("n"), py::arg("counters"), py::arg("keys"),
     "Philox4x32-10 of n (counter[4], key[2]) uint32 pairs on the host (known-answer tests)");
  m.def("philox_cuda", [](uintptr_t out, int64_t n, uintptr_t counters, uintptr_t keys, int64_t stream) {
    mdsample::philox_cuda(out, n, counters, keys, stream);
  }, py::arg("out"), py::arg("n"), py::arg("counters"), py::arg("keys"), py::arg("stream"),
     "Philox4x32-10 of n (counter[4], key[2]) uint32 pairs on the GPU (known-answer tests)");
  m.def("lowdisc_timesteps_cpu", [](py::kwargs kw) {
    const mdsample::TimestepArgs a = timestep_args(kw);
    py::gil_scoped_release nogil;
    mdsample::lowdisc_timesteps_cpu(a);
  }, "Timestep lattices of lowdisc_timesteps on CPU (see csrc/likelihood.h)");
  m.def("lowdisc_timesteps_cuda", [](py::kwargs kw) {
    const mdsample::TimestepArgs a = timestep_args(kw);
    const int64_t stream = kw["stream"].cast<int64_t>();
    py::gil_scoped_release nogil;
    mdsample::lowdisc_timesteps_cuda(a, stream);
  }, "Timestep lattices of lowdisc_timesteps on the GPU, queued on `stream` (see csrc/likelihood.h)");
  m.def("forward_mask_cpu", [](py::kwargs kw) {
    const mdsample::ForwardMaskArgs a = forward_mask_args(kw);
    py::gil_scoped_release nogil;
    mdsample::forward_mask_cpu(a);
  }, "Bernoulli / exact-count forward masking of forward_mask on CPU (see csrc/likelihood.h)");
  m.def("forward_mask_cuda", [](py::kwargs kw) {
    const mdsample::ForwardMaskArgs a = forward_mask_args(kw);
    const int64_t stream = kw["stream"].cast<int64_t>();
    py::gil_scoped_release nogil;
    mdsample::forward_mask_cuda(a, stream);
  }, "Bernoulli / exact-count forward masking of forward_mask on the GPU, queued on `stream`");
  m.def("masked_nll_cpu", [](py::kwargs kw) {
    const mdsample::MaskedNllArgs a = masked_nll_args(kw);
    py::gil_scoped_release nogil;
    mdsample::masked_nll_cpu(a);
  }, "Per-sequence weighted NLL over masked rows of masked_nll on CPU (see csrc/likelihood.h)");
  m.def("masked_nll_cuda", [](py::kwargs kw) {
    const mdsample::MaskedNllArgs a = masked_nll_args(kw);
    float* row_value = ptr<float>(kw, "row_value");
    const int64_t stream = kw["stream"].cast<int64_t>();
    py::gil_scoped_release nogil;
    mdsample::masked_nll_cuda(a, row_value, stream);
  }, "masked_nll on the GPU, queued on `stream`; row_value: [N] float32 scratch (see csrc/likelihood.h)");
}
