"""The CUDA likelihood kernels (csrc/likelihood.cu) and the samplers' uniforms (csrc/philox.cu) run on
the CPU, against the cpu backend and float64.

No GPU is needed: tests/cuda_emu compiles the unmodified kernel source with g++ and
runs every CUDA thread as a fiber, warp intrinsics in lockstep, loads checked against
the rows declared readable and against their alignment (tests/cuda_emu/cuda_emu.h).
Each op goes through its public function with ``backend="cpu"``, once as shipped and
once with the compiled module's cpu launcher sent to the emulated CUDA one
(tests/cuda_emu/likelihood_entry.cpp), so both see the same arguments.

lowdisc_timesteps and forward_mask must agree with the cpu backend bitwise, under every
thread schedule; masked_nll must match the float64 truth within the fp32 tolerance of
tests/test_masked_nll.py and give the same bits whatever the schedule, the batch or the
rows' alignment. None of it is statistical.
"""
import ctypes
import functools
import math
from unittest import mock

import pytest
import torch
from cuda_emu_build import EMU, ROOT, emulator_library
from test_likelihood_cuda import count_case, nll_case
from test_masked_nll import truth

import mdsample
import requires
from mdsample import _backends

pytestmark = requires.cpu_backend  # the emulated kernels are checked against the cpu backend
SOURCES = [ROOT / "csrc" / "likelihood.cu", ROOT / "csrc" / "philox.cu", EMU / "likelihood_entry.cpp",
           EMU / "cuda_emu.cpp"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
SCHEDULES = [(0, 0), (1, 0), (2, 7)]  # ascending, descending, random thread picks (and CTA order)

P, I64 = ctypes.c_void_p, ctypes.c_int64
# The launchers' argument structs in declaration order (csrc/likelihood.h).
ARGS = {
    "lowdisc_timesteps": [("n", I64), ("n_lattices", I64), ("mode", ctypes.c_int), ("eps", ctypes.c_double),
                          ("seed", I64), ("offset", P), ("out", P)],
    "forward_mask": [("x0", P), ("batch", I64), ("length", I64), ("maskable", P), ("seed", P), ("offset", P),
                     ("position", P), ("prob", P), ("count", P), ("mask_id", I64), ("out", P)],
    "masked_nll": [("logits", P), ("dtype", ctypes.c_int), ("vocab", I64), ("row_offsets", P), ("guidance", P),
                   ("guidance_offsets", P), ("guidance_scale", ctypes.c_float), ("target", P), ("xt", P),
                   ("weight", P), ("mask_id", I64), ("exclude", I64), ("n_seqs", I64), ("length", I64),
                   ("out", P), ("row_value", P)],
    "uniforms": [("seed", P), ("seed_val", I64), ("offset", P), ("offset_val", I64), ("position", P), ("n", I64),
                 ("domain", ctypes.c_uint32), ("out", P)],
}


@pytest.fixture(scope="module")
def lib():
    lib = emulator_library("likelihood", SOURCES)
    for op, fields in ARGS.items():
        getattr(lib, f"mdsample_emu_{op}_cuda").argtypes = [t for _, t in fields] + [
            ctypes.c_int, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_size_t]
    return lib


class EmulatedCuda:
    """Stands in for ``mdsample._C``: its ``<op>_cpu`` launchers run the emulated ``<op>_cuda``."""

    def __init__(self, lib, schedule):
        self.lib, self.schedule = lib, schedule

    def _run(self, op, args):
        error = ctypes.create_string_buffer(4096)
        fn = getattr(self.lib, f"mdsample_emu_{op}_cuda")
        if fn(*(args[name] for name, _ in ARGS[op]), *self.schedule, error, len(error)):
            raise RuntimeError(error.value.decode())

    def lowdisc_timesteps_cpu(self, **args):
        self._run("lowdisc_timesteps", args)

    def forward_mask_cpu(self, **args):
        self._run("forward_mask", args)

    def uniforms_cpu(self, **args):
        self._run("uniforms", args)

    def masked_nll_cpu(self, **args):
        # NaN-filled scratch: a row value the kernel forgot to store shows.
        row_value = torch.full((args["n_seqs"] * args["length"],), math.nan)
        self._run("masked_nll", {**args, "row_value": row_value.data_ptr()})


def emulated(lib, fn, *args, schedule=(0, 0), **kw):
    """``fn(*args, **kw)`` with backend="cpu" on the emulated CUDA kernels."""
    with mock.patch.object(_backends, "compiled_module", lambda: EmulatedCuda(lib, schedule)):
        return fn(*args, backend="cpu", **kw)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("mode", ["stratified", "shifted", "iid"])
def test_timesteps_bitwise(lib, mode):
    offsets = torch.tensor([0, 1, 2**40 + 3, -5])
    for n, eps in ((1, 1e-3), (7, 0.0), (700, 0.3)):
        kw = dict(eps=eps, mode=mode, seed=-(2**62) + 11, offset=offsets)
        assert torch.equal(emulated(lib, mdsample.lowdisc_timesteps, n, **kw),
                           mdsample.lowdisc_timesteps(n, backend="cpu", **kw))


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_uniforms_bitwise(lib, schedule):
    """philox.cu's uniforms kernel (the samplers' coins) gives the reference's bits over several CTAs,
    with the keys by value and through one-element tensors, in every domain."""
    from mdsample.ops.uniforms import philox_uniforms

    pos = torch.randint(0, 2**48, (3, 700), generator=_gen(4))
    pos[0, :3] = torch.tensor([0, 2**32 - 1, 2**48 - 1])
    for domain in range(4):
        for keys in (dict(seed=-(2**62) + 11, offset=2**40 + 3), dict(seed=torch.tensor(7), offset=torch.tensor([9]))):
            got = emulated(lib, philox_uniforms, pos, domain=domain, schedule=schedule, **keys)
            want = philox_uniforms(pos, domain=domain, backend="reference", **keys)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_forward_mask_bernoulli_bitwise(lib):
    g = _gen(0)
    x0 = torch.randint(5, 100, (5, 700), generator=g)
    t = torch.rand(5, generator=g, dtype=torch.float64)
    maskable = torch.rand(5, 700, generator=g) < 0.8
    for positions in (None, torch.randint(0, 2**48, (5, 700), generator=g)):
        kw = dict(mask_id=1, maskable=maskable, seed=torch.arange(5) - 3, offset=torch.arange(5) + 2**33,
                  positions=positions)
        assert torch.equal(emulated(lib, mdsample.forward_mask, x0, t, **kw),
                           mdsample.forward_mask(x0, t, backend="cpu", **kw))


def test_forward_mask_count_bitwise(lib):
    """Exact-count cases of tests/test_likelihood_cuda.py (ties included) under every schedule."""
    for batch, length in ((8, 1500), (2, 1)):
        for kw in count_case(batch, length, seed=1)[0]:
            want = mdsample.forward_mask(backend="cpu", **kw)
            for schedule in SCHEDULES:
                assert torch.equal(emulated(lib, mdsample.forward_mask, schedule=schedule, **kw), want), (
                    f"L={length} {'tied' if kw['positions'] is not None else 'flat'} schedule={schedule}")


_nll_case = functools.partial(nll_case, device="cpu")


def _check(got, want, rows):
    torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=2e-5 * max(rows, 1))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_masked_nll_matches_truth(lib, dtype):
    # Two whole tiles and a partial vector (8195), odd V (rows alternate alignments), a tiny V,
    # rows 1 and 3 elements into their storage.
    for k, (shape, vocab, offset) in enumerate([((2, 3), 8195, 0), ((3, 5), 301, 1), ((1, 4), 5, 1),
                                                ((2, 2), 9000, 3)]):
        logits, x0, xt = _nll_case(shape, vocab, dtype, seed=k, offset=offset)
        got = emulated(lib, mdsample.masked_nll, logits, x0, xt, mask_id=3, schedule=SCHEDULES[k % 3])
        _check(got, truth(logits, x0, xt, mask_id=3), int((xt == 3).sum()))


def test_masked_nll_of_near_certain_tokens(lib):
    """-log p of a target at p = 1 - 1e-7 .. 1 - 1e-3 to fp32 rounding (tests/confident_rows.py)."""
    from confident_rows import assert_close_per_row, confident_rows, truth as confident_truth

    for vocab in (300, 9000):
        logits = confident_rows(vocab, torch.float32)
        rows = logits.shape[0]
        x0, xt = torch.zeros(rows, 1, dtype=torch.long), torch.ones(rows, 1, dtype=torch.long)
        got = emulated(lib, mdsample.masked_nll, logits.unsqueeze(1), x0, xt, mask_id=1)
        assert_close_per_row(got, -confident_truth(logits)[0], f"masked_nll V={vocab}")


def test_masked_nll_weights_exclude_guidance(lib):
    logits, x0, xt = _nll_case((3, 9), 4100, torch.bfloat16, seed=5, offset=1)
    guidance = (torch.randn(logits.shape, generator=_gen(6)) * 2).to(torch.bfloat16)
    guidance[..., 7] = -math.inf  # -inf on either side stays -inf
    weight = torch.rand(3, 9, generator=_gen(7))
    weight[:, ::4] = 0.0
    logits[weight == 0] = math.nan  # zero-weight rows are not read
    x0 = torch.where(x0 == 3, 4, x0)  # no target is the excluded token
    kw = dict(mask_id=3, weight=weight, exclude=3, guidance=guidance, guidance_scale=1.5)
    got = emulated(lib, mdsample.masked_nll, logits, x0, xt, schedule=(2, 3), **kw)
    want = truth(torch.where(weight.unsqueeze(-1) == 0, 0.0, logits.float()), x0, xt, **kw)
    _check(got, want, int(((xt == 3) & (weight != 0)).sum()))


def test_masked_nll_bad_rows(lib):
    """NaN / +inf in a masked row: its sequence is NaN; a row with no finite score: NaN; target = exclude: +inf."""
    logits, x0, xt = _nll_case((5, 6), 3000, torch.float32, seed=8)
    xt[:, 0], xt[:, 1] = 3, 0
    logits[0, 0, 2999] = math.nan
    logits[1, 0, 5] = math.inf
    logits[2, 1] = math.nan  # not masked: never read
    logits[3, 0] = -math.inf
    x0[4, 0] = 3
    got = emulated(lib, mdsample.masked_nll, logits, x0, xt, mask_id=3, exclude=3, check=False)
    assert got[[0, 1, 3]].isnan().all() and got[2].isfinite() and got[4] == math.inf


def test_masked_nll_invariant_bits(lib):
    """A sequence's value has the same bits under any schedule, alone or in a batch, and from other alignments."""
    logits, x0, xt = _nll_case((3, 6), 50257, torch.bfloat16, seed=9)
    batch = emulated(lib, mdsample.masked_nll, logits, x0, xt, mask_id=3)
    for b in range(3):
        one = (logits[b:b + 1], x0[b:b + 1], xt[b:b + 1])
        shifted = torch.empty(1, 6, 50257 + 1, dtype=logits.dtype)[..., 1:]
        shifted.copy_(one[0])
        for got in (emulated(lib, mdsample.masked_nll, *one, mask_id=3, schedule=(2, b)),
                    emulated(lib, mdsample.masked_nll, shifted, *one[1:], mask_id=3)):
            assert torch.equal(got, batch[b:b + 1])
