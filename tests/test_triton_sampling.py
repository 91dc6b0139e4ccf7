"""The Triton backend of sample_categorical / unmask_step against the float64 reference.

Same inputs and seed must give the same tokens on both backends (DESIGN.md §3): the
Triton kernel sums in fp32 / float64 where the reference sums in float64, so they could
only part at a numerical near-tie, whose chance is ~1e-7 per row; these few hundred rows
have none, so tokens must agree exactly. Stats must agree to 1e-4 relative.

Without a GPU the kernels run in Triton's interpreter (tests/conftest.py), which is slow:
shapes stay small (N <= 64, V <= 5000, a few with V > 2 * 2048 to cross chunks).
"""
import math

import pytest
import torch

import mdsample
from mdsample import _backends
from mdsample.reference.philox import DOMAIN_REVEAL, DOMAIN_TOKEN, MAX_POSITION, draw_words, uniform52
from mdsample.reference.sampling import CHUNK

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Skipped before the kernels are imported: without triton, or with one older than the tested releases,
# importing them fails (and says nothing of why the backend is off).
if not _backends.available("triton", DEVICE):
    pytest.skip(_backends.why_not("triton", DEVICE), allow_module_level=True)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from mdsample.triton.sampling import _philox_words, _uniform52  # noqa: E402

# The interpreter's numpy warns on -inf - -inf in lanes that a tl.where then discards.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
V_CROSS = 2 * CHUNK + 5  # three chunks, the last one nearly empty
# Token disagreements allowed per comparison: none at these sizes (see the module docstring).
MAX_TOKEN_MISMATCHES = 0


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _logits(shape, dtype, seed, scale=3.0):
    return (torch.randn(shape, generator=_gen(seed), dtype=torch.float64) * scale).to(dtype).to(DEVICE)


def _both(fn, *args, **kwargs):
    return fn(*args, backend="triton", **kwargs), fn(*args, backend="reference", **kwargs)


def _assert_tokens(tri, ref):
    assert tri.shape == ref.shape and tri.dtype == ref.dtype == torch.int64
    mismatches = int((tri != ref).sum())
    assert mismatches <= MAX_TOKEN_MISMATCHES, f"{mismatches} tokens differ: {tri[tri != ref]} vs {ref[tri != ref]}"


def _assert_result(tri, ref, stats_rows=None):
    """Tokens equal; stats close (on ``stats_rows`` only, when given)."""
    _assert_tokens(tri.tokens, ref.tokens)
    for name in ("logprob", "prob", "margin", "entropy"):
        a, b = getattr(tri, name), getattr(ref, name)
        if stats_rows is not None:
            a, b = a[stats_rows], b[stats_rows]
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, equal_nan=True, msg=lambda m: f"{name}: {m}")


# ---- Philox words and uniforms: the kernel's counter layout is the reference's, bit for bit ----

@triton.jit
def _draw_kernel(seed_ptr, offset_ptr, position_ptr, words_ptr, uniforms_ptr, DOMAIN: tl.constexpr):
    i = tl.program_id(0)
    w0, w1, w2, w3 = _philox_words(tl.load(seed_ptr + i), tl.load(offset_ptr + i), tl.load(position_ptr + i), DOMAIN)
    tl.store(words_ptr + 4 * i + 0, w0.to(tl.int64))
    tl.store(words_ptr + 4 * i + 1, w1.to(tl.int64))
    tl.store(words_ptr + 4 * i + 2, w2.to(tl.int64))
    tl.store(words_ptr + 4 * i + 3, w3.to(tl.int64))
    tl.store(uniforms_ptr + 2 * i + 0, _uniform52(w0, w1))
    tl.store(uniforms_ptr + 2 * i + 1, _uniform52(w2, w3))


@pytest.mark.parametrize("domain", [DOMAIN_TOKEN, DOMAIN_REVEAL])
def test_philox_words_match_reference(domain):
    edge = [0, 1, -1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, -(2**63), 0x0123456789ABCDEF, -0x5555AAAA5555AAAA]
    seed = torch.tensor(edge, dtype=torch.int64)
    offset = seed.roll(3)
    position = torch.tensor([0, 1, 2**31, 2**32 - 1, 2**32, MAX_POSITION, 123456789012, 2**47, 7, 2**40 + 3])
    words = torch.empty(len(edge), 4, dtype=torch.int64, device=DEVICE)
    uniforms = torch.empty(len(edge), 2, dtype=torch.float64, device=DEVICE)
    _draw_kernel[(len(edge),)](seed.to(DEVICE), offset.to(DEVICE), position.to(DEVICE), words, uniforms, DOMAIN=domain)
    ref = torch.stack(draw_words(seed, offset, position, domain), -1)
    assert torch.equal(words.cpu(), ref)
    ref_u = torch.stack([uniform52(ref[:, 0], ref[:, 1]), uniform52(ref[:, 2], ref[:, 3])], -1)
    assert torch.equal(uniforms.cpu(), ref_u)


# ---- sample_categorical ----

@pytest.mark.parametrize("vocab", [37, V_CROSS])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(dtype, vocab):
    n = 24
    logits = _logits((n, vocab), dtype, seed=vocab + n)
    logits[::5, :: 7] = -math.inf  # masked-out tokens
    # 1e-40 is subnormal in fp32: 1 / T overflows, the draw must still be the argmax.
    temps = torch.tensor([0.0, 0.05, 0.3, 0.7, 1.0, 1e-40, 1.7, 4.0] * 3, device=DEVICE)
    seeds = torch.randint(-(2**62), 2**62, (n,), generator=_gen(1)).to(DEVICE)
    positions = torch.randint(0, 2**40, (n,), generator=_gen(2)).to(DEVICE)
    tri, ref = _both(
        mdsample.sample_categorical, logits, temperature=temps, seed=seeds, offset=12345, positions=positions,
        return_stats=True,
    )
    # At T = 1e-40 the reference's stats lose log(#ties) in y - logsumexp(y) with |y| ~ 1e41 (it does not
    # shift by the max first), so its stats are compared on the other rows; the kernel's are exact there.
    subnormal = temps == 1e-40
    _assert_result(tri, ref, stats_rows=~subnormal)
    n_max = (logits == logits.amax(-1, keepdim=True)).sum(-1).double()
    torch.testing.assert_close(tri.logprob[subnormal].double(), -n_max[subnormal].log(), rtol=1e-6, atol=1e-6)


def test_matches_reference_wide_batch():
    """N = 64 rows of V = 5000 (three chunks), one scalar temperature, large logits (scale 8)."""
    logits = _logits((4, 16, 5000), torch.float32, seed=7, scale=8.0) + 40.0
    tri, ref = _both(mdsample.sample_categorical, logits, temperature=0.9, seed=2**40 + 17, offset=3, return_stats=True)
    _assert_result(tri, ref)
    assert len(set(tri.tokens.flatten().tolist())) > 32  # rows really differ


def test_chunk_selection_crosses_chunks():
    """Mass split across chunks (the head of each chunk raised): draws land in every chunk, as in the reference."""
    n, vocab = 48, V_CROSS
    logits = _logits((n, vocab), torch.float32, seed=11, scale=1.0)
    logits[:, 0] += 3.0
    logits[:, CHUNK + 1] += 3.0
    logits[:, 2 * CHUNK + 2] += 3.0
    tri, ref = _both(mdsample.sample_categorical, logits, seed=5, offset=torch.arange(n, device=DEVICE))
    _assert_tokens(tri, ref)
    assert {int(t) // CHUNK for t in tri} == {0, 1, 2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_guidance(dtype):
    n, vocab = 16, V_CROSS
    cond = _logits((n, vocab), dtype, seed=21)
    uncond = _logits((n, vocab), dtype, seed=22)
    cond[0, 10:20] = -math.inf          # -inf on either side gives -inf
    uncond[1, 30:40] = -math.inf
    uncond[2, :] = -math.inf
    uncond[2, 5] = 1.0                  # only token 5 survives in row 2
    for scale in (1.5, -0.4):
        tri, ref = _both(
            mdsample.sample_categorical, cond, guidance=uncond, guidance_scale=scale,
            temperature=torch.linspace(0, 2, n, device=DEVICE), seed=9, return_stats=True,
        )
        _assert_result(tri, ref)
        assert int(tri.tokens[2]) == 5


def test_guidance_factor_rounds_as_the_cpp_kernels():
    """w + 1 in fp32 (float(w) + 1.0f), as cpu / cuda: at w = 2/3 the double sum rounded once is an ulp off, and an
    exact tie of the guided scores (c = [1, s], u = [0, s] with s = fp32(w) + 1) then broke the other way on Triton."""
    w = 2 / 3
    s = float(torch.tensor(w, dtype=torch.float32) + 1.0)
    cond, uncond = torch.tensor([[1.0, s]], device=DEVICE), torch.tensor([[0.0, s]], device=DEVICE)
    for backend in ("cpu", "cuda"):
        if _backends.available(backend, DEVICE):
            got = {b: mdsample.sample_categorical(cond, guidance=uncond, guidance_scale=w, temperature=0.0,
                                                  return_stats=True, backend=b) for b in ("triton", backend)}
            assert torch.equal(got["triton"].tokens, got[backend].tokens)
            torch.testing.assert_close(got["triton"].margin, got[backend].margin, rtol=0, atol=0)
    from mdsample.triton.sampling import guidance_factor

    assert guidance_factor(w) == s and guidance_factor(1.5) == 2.5


def test_exclude_active_fallback():
    n, vocab = 32, 300
    logits = _logits((n, vocab), torch.float16, seed=31)
    logits[:, 17] = 30.0                # the excluded token would win every draw
    active = torch.rand(n, generator=_gen(32)) < 0.6
    active[0], active[1] = True, False
    logits[~active.to(DEVICE), :] = math.nan  # inactive rows are not read: no -1, no error
    fallback = torch.arange(n, device=DEVICE) + 1000
    act = active.to(DEVICE)
    temps = torch.tensor([0.0, 1.0, 0.5, 2.0] * 8, device=DEVICE)
    for fb in (fallback, None):
        tri, ref = _both(
            mdsample.sample_categorical, logits, temperature=temps, exclude=17, active=act, fallback=fb,
            seed=4, return_stats=True,
        )
        _assert_result(tri, ref)
        expected_inactive = fallback[~act] if fb is not None else torch.full_like(fallback[~act], -1)
        assert torch.equal(tri.tokens[~act], expected_inactive)
        assert not bool((tri.tokens == 17).any())
        assert bool(torch.isnan(tri.entropy[~act]).all())


def test_temperature_zero_argmax_lowest_index():
    n, vocab = 8, V_CROSS
    logits = torch.randint(-3, 3, (n, vocab), generator=_gen(41)).to(torch.bfloat16).to(DEVICE)
    logits[0, [2100, 5, 4100]] = 9.0                # tie across chunks: index 5
    logits[1, [CHUNK + 3, 2 * CHUNK + 1]] = 9.0     # tie in later chunks: CHUNK + 3
    logits[2, vocab - 1] = 9.0                      # max in the last (partial) chunk
    tokens = [mdsample.sample_categorical(logits, temperature=0.0, seed=s, backend="triton") for s in (0, 1, 2**50)]
    ref = mdsample.sample_categorical(logits, temperature=0.0, backend="reference")
    for t in tokens:  # no randomness consumed: the seed changes nothing
        _assert_tokens(t, ref)
    assert tokens[0][:3].tolist() == [5, CHUNK + 3, vocab - 1]
    # With `exclude` on the maximum, the next-highest lowest index wins.
    tri, ref = _both(mdsample.sample_categorical, logits, temperature=0.0, exclude=5)
    _assert_tokens(tri, ref)
    assert int(tri[0]) == 2100


def test_bad_rows():
    vocab = V_CROSS
    logits = _logits((6, vocab), torch.float32, seed=51)
    logits[0, 3000] = math.nan
    logits[1, 4] = math.inf
    logits[2, :] = -math.inf
    logits[3, :] = -math.inf
    logits[3, 9] = 2.0                  # only finite score is the excluded one
    temps = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0], device=DEVICE)
    tri, ref = _both(mdsample.sample_categorical, logits, temperature=temps, exclude=9, check=False, return_stats=True)
    _assert_result(tri, ref)
    assert tri.tokens[:4].tolist() == [-1, -1, -1, -1] and bool((tri.tokens[4:] >= 0).all())
    assert bool(torch.isnan(tri.logprob[:4]).all()) and not bool(torch.isnan(tri.logprob[4:]).any())
    with pytest.raises(ValueError, match="NaN"):
        mdsample.sample_categorical(logits, temperature=temps, exclude=9, backend="triton")


def test_stats_temperature_and_single_token_vocab():
    n, vocab = 16, 999
    logits = _logits((n, vocab), torch.float64, seed=61)
    temps = torch.linspace(0, 3, n, device=DEVICE)
    stats_t = torch.linspace(0.2, 2, n, device=DEVICE)
    _assert_result(*_both(mdsample.sample_categorical, logits, temperature=temps, return_stats=True,
                          stats_temperature=stats_t, seed=6))
    _assert_result(*_both(mdsample.sample_categorical, logits, temperature=temps, return_stats=True,
                          stats_temperature=1.0, seed=6))
    one = _logits((3, 1), torch.float32, seed=62)
    tri, ref = _both(mdsample.sample_categorical, one, return_stats=True)
    _assert_result(tri, ref)
    assert tri.tokens.tolist() == [0, 0, 0]


def test_stats_near_one_hot():
    """Log-probabilities and entropies of ~1e-8 keep their relative precision (tail summed apart from the max)."""
    n, vocab = 8, 1000
    logits = _logits((n, vocab), torch.float32, seed=63, scale=1.0)
    logits[torch.arange(n), torch.arange(n) * 97] += torch.linspace(24, 32, n).to(DEVICE)
    tri, ref = _both(mdsample.sample_categorical, logits, temperature=0.0, return_stats=True, stats_temperature=1.0)
    _assert_tokens(tri.tokens, ref.tokens)
    assert bool((ref.entropy < 1e-5).all()) and bool((ref.logprob > -1e-6).all())
    for name in ("logprob", "entropy", "margin"):
        torch.testing.assert_close(getattr(tri, name), getattr(ref, name), rtol=1e-4, atol=0.0)


# ---- leading dims: strided, permuted, expanded, sliced (read in place) ----

def test_strided_leading_dims():
    vocab = 2 * CHUNK + 1
    base = _logits((2, 1, vocab), torch.float16, seed=71)
    expanded = base.expand(2, 5, vocab)                       # stride 0: five rows share one row
    permuted = _logits((5, 3, vocab), torch.float32, seed=72).transpose(0, 1)
    sliced = _logits((6, vocab + 50), torch.bfloat16, seed=73)[:, 10:10 + vocab]
    for logits in (expanded, permuted, sliced):
        assert not logits.is_contiguous()
        tri, ref = _both(mdsample.sample_categorical, logits, temperature=0.8, seed=8, return_stats=True)
        _assert_result(tri, ref)
    # The expanded rows differ only by position: they still draw independently.
    tokens = mdsample.sample_categorical(expanded, seed=8, backend="triton")
    assert len(set(tokens[0].tolist())) > 1
    # Guidance with a different layout from the logits.
    uncond = _logits((3, 1, vocab), torch.float32, seed=74).expand(3, 5, vocab)
    tri, ref = _both(mdsample.sample_categorical, permuted, guidance=uncond, guidance_scale=0.7, seed=8)
    _assert_tokens(tri, ref)


def test_batch_invariance():
    """A row's token depends on (seed, offset, position) only, not on its batch or its place in it."""
    vocab = 600
    logits = _logits((12, vocab), torch.float32, seed=81)
    positions = torch.arange(100, 112, device=DEVICE)
    full = mdsample.sample_categorical(logits, positions=positions, seed=3, offset=9, backend="triton")
    perm = torch.randperm(12, generator=_gen(82)).to(DEVICE)
    shuffled = mdsample.sample_categorical(logits[perm], positions=positions[perm], seed=3, offset=9, backend="triton")
    assert torch.equal(shuffled, full[perm])
    alone = mdsample.sample_categorical(logits[5:6], positions=positions[5:6], seed=3, offset=9, backend="triton")
    assert int(alone) == int(full[5])


# ---- unmask_step ----

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_unmask_step_matches_reference(dtype):
    b, length, vocab, mask_id = 4, 16, 2 * CHUNK + 3, 2 * CHUNK + 2  # mask token in the last chunk
    logits = _logits((b, length, vocab), dtype, seed=91)
    logits[..., mask_id] = 50.0         # SUBS: the mask token is never drawn, however likely
    x = torch.randint(0, vocab, (b, length), generator=_gen(92)).to(DEVICE)
    masked = torch.rand(b, length, generator=_gen(93)).to(DEVICE) < 0.6
    x[masked] = mask_id
    logits[~masked] = math.nan          # unmasked positions are never read
    reveal = torch.tensor([[0.0], [0.3], [0.7], [1.0]], device=DEVICE)
    temps = torch.tensor([0.0, 0.5, 1.0, 1.5], device=DEVICE).repeat_interleave(4).view(1, length).expand(b, length)
    x_before = x.clone()
    (tri, revealed), (ref, _) = _both(
        mdsample.unmask_step, logits, x, mask_id=mask_id, reveal_prob=reveal, temperature=temps, seed=2**33 + 1,
        offset=7, return_revealed=True,
    )
    _assert_tokens(tri, ref)
    assert torch.equal(x, x_before)
    assert torch.equal(tri[~masked], x[~masked])
    assert not bool(revealed[0].any()) and bool(revealed[3][masked[3]].all())
    assert 0 < int(revealed[1:3].sum()) < int(masked[1:3].sum())
    assert not bool((tri[revealed] == mask_id).any())


def test_unmask_step_guidance_and_positions():
    b, length, vocab, mask_id = 2, 24, 700, 0
    cond = _logits((b, length, vocab), torch.float16, seed=95)
    uncond = _logits((b, length, vocab), torch.float16, seed=96)
    x = torch.full((b, length), mask_id, device=DEVICE)
    x[:, :4] = 11
    positions = torch.arange(length, device=DEVICE).expand(b, length) + torch.tensor([[0], [10**6]], device=DEVICE)
    tri, ref = _both(
        mdsample.unmask_step, cond, x, mask_id=mask_id, reveal_prob=0.5, guidance=uncond, guidance_scale=2.0,
        positions=positions, seed=123, offset=2,
    )
    _assert_tokens(tri, ref)
    assert torch.equal(tri[:, :4], x[:, :4])


# ---- launch shapes: split path vs one program per row, autotuning configs ----
# Both paths reduce every chunk alone into its record and finish the row from the records in one
# fixed order, and no config changes that arithmetic: tokens and stats must be equal bitwise.

def _request(logits, **kw):
    from mdsample.ops.sampling import build_request

    args = dict(temperature=1.0, seed=0, offset=0, positions=None, exclude=None, active=None, fallback=None,
                guidance=None, guidance_scale=0.0, stats_temperature=None, return_stats=False, check=False)
    return build_request(logits, **{**args, **kw})


def _unmask_request(logits, x, mask_id, reveal_prob, **kw):
    import dataclasses

    req = _request(logits, exclude=mask_id, **kw)
    prob = torch.full((req.n_rows,), reveal_prob, dtype=torch.float64, device=DEVICE)
    return dataclasses.replace(req, x=x.reshape(-1), mask_id=mask_id, reveal_prob=prob)


def _assert_identical(a, b):
    assert torch.equal(a[0], b[0]), f"tokens differ: {a[0]} vs {b[0]}"
    if a[1] is not None:
        assert torch.equal(a[1].isnan(), b[1].isnan()) and torch.equal(a[1].nan_to_num(), b[1].nan_to_num())


def _split_cases():
    """Small requests covering every kernel variant: (name, request)."""
    n, vocab = 4, 4 * CHUNK + 1500  # five chunks, the last one partial
    bf16 = _logits((n, vocab), torch.bfloat16, seed=101)
    bf16[1, :CHUNK] = -math.inf          # an empty chunk ahead of the mass
    bf16[0, [17, 3 * CHUNK + 5]] = 40.0  # tied maxima in different chunks (row 0: temperature 0)
    fp32 = _logits((n, vocab), torch.float32, seed=102)
    fp32[3, 2 * CHUNK + 9] = math.nan    # a bad row among good ones
    temps = torch.tensor([0.0, 0.6, 1.0, 1.8], device=DEVICE)
    x = torch.tensor([[0, 5, 0, 0]], device=DEVICE)
    return [
        ("bf16 stats", _request(bf16, temperature=temps, seed=7, offset=3, return_stats=True)),
        ("fp32 bad row, stats_temperature", _request(fp32, temperature=0.9, seed=8, return_stats=True,
                                                     stats_temperature=torch.full((n,), 0.5, device=DEVICE))),
        ("fp16 guidance, exclude", _request(bf16.to(torch.float16), guidance=fp32.flip(0).nan_to_num(0.0).half(),
                                            guidance_scale=1.5, exclude=17, seed=9)),
        ("active/fallback", _request(fp32.double(), active=torch.tensor([True, False, True, True], device=DEVICE),
                                     fallback=torch.arange(n, device=DEVICE) + 50, seed=10, return_stats=True)),
        ("unmask", _unmask_request(bf16.view(1, n, vocab), x, mask_id=0, reveal_prob=0.7, seed=11)),
    ]


def test_split_path_matches_row_path_and_cpu():
    import dataclasses

    from mdsample.ops._rows import run
    from mdsample.triton.sampling import sample_rows

    tokens = {}
    for name, req in _split_cases():
        split = sample_rows(req, split=True)
        _assert_identical(split, sample_rows(req, split=False))
        tokens[name] = split[0].tolist()
        assert tokens[name] == run(req, "reference")[0].tolist(), name
        if _backends.available("cpu", "cpu"):
            cpu_req = dataclasses.replace(req, **{f.name: getattr(req, f.name).cpu() for f in dataclasses.fields(req)
                                                  if isinstance(getattr(req, f.name), torch.Tensor)})
            assert tokens[name] == run(cpu_req, "cpu")[0].tolist(), name
    # The cases exercise what they claim: a cross-chunk tie at T = 0, a bad row, a fallback, an unrevealed row.
    assert tokens["bf16 stats"][0] == 17 and tokens["fp32 bad row, stats_temperature"][3] == -1
    assert tokens["active/fallback"][1] == 51 and tokens["unmask"][1] == 5


def test_autotuning_configs_give_identical_results():
    from mdsample.triton.sampling import ROW_CONFIGS, SPLIT_CONFIGS, sample_rows

    _, req = _split_cases()[0]
    # Rows: the first config and the last (UNROLL differs); split: every GROUP.
    for split, configs in ((False, [ROW_CONFIGS[0], ROW_CONFIGS[-1]]), (True, SPLIT_CONFIGS)):
        want = sample_rows(req, split=split, config=configs[0])
        for config in configs[1:]:
            _assert_identical(sample_rows(req, split=split, config=config), want)


def test_split_choice():
    from mdsample.triton.sampling import use_split

    assert use_split(1, 126464, sms=132) and use_split(64, 262144, sms=132)    # decode shapes
    assert not use_split(4096, 126464, sms=132)                                 # enough rows to fill the GPU
    assert not use_split(1, CHUNK, sms=132)                                     # one chunk: nothing to split


def test_launches_switch_to_the_tensors_gpu(monkeypatch):
    """Triton launches on the current device: a tensor on another GPU makes its device current for the launch;
    CPU tensors (the interpreter) and the current GPU need no switch. (A stand-in tensor: no GPU here.)"""
    import types

    from mdsample.triton._device import on_device_of

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    ctx = on_device_of(types.SimpleNamespace(device=torch.device("cuda", 1)))
    assert isinstance(ctx, torch.cuda.device) and ctx.idx == 1
    for device in (torch.device("cuda", 0), torch.device("cpu")):
        assert not isinstance(on_device_of(types.SimpleNamespace(device=device)), torch.cuda.device)
