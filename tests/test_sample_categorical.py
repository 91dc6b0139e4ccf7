"""sample_categorical: features, cross-backend agreement, determinism and bad input.

Distribution tests live in tests/stats/; here every backend must give the
reference's tokens, and every wrong argument a ValueError/TypeError naming it.
"""
import math

import pytest
import torch

import mdsample
import requires  # tests/ is on sys.path (rootdir conftest)
from mdsample import _backends
from mdsample.reference.philox import DOMAIN_TOKEN, draw_words, uniform52
from mdsample.reference.sampling import CHUNK, guided_scores

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _logits(shape, scale=3.0, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to(dtype).to(device)


def _interpreted(backend):
    """True for Triton under its interpreter, which runs kernels in numpy (slow)."""
    return backend == "triton" and _backends.triton_interpreted()


def _rows(backend, n):
    return max(4, n // 16) if _interpreted(backend) else n


def _same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a.cpu(), b.cpu())
    else:
        assert torch.equal(a.tokens.cpu(), b.tokens.cpu())
        for name in ("logprob", "prob", "margin", "entropy"):
            torch.testing.assert_close(getattr(a, name).cpu(), getattr(b, name).cpu(), rtol=2e-4, atol=2e-5, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference_all_dtypes(fast_backend, device, dtype):
    logits = _logits((3, 7, CHUNK * 2 + 37), dtype=dtype, device=device)
    kw = dict(seed=11, offset=5)
    _same(mdsample.sample_categorical(logits, backend=fast_backend, **kw),
          mdsample.sample_categorical(logits, backend="reference", **kw))


@pytest.mark.parametrize(
    "kw",
    [
        dict(temperature=0.0),
        dict(temperature=0.7, exclude=5),
        dict(temperature=torch.tensor([0.0, 0.5, 1.0, 2.0])),
        dict(seed=torch.tensor([1, 2, 3, -4]), offset=torch.tensor([0, 1, 2, 2**40])),
        dict(positions=torch.tensor([9, 9, 2**47, 0])),
        dict(active=torch.tensor([True, False, True, False]), fallback=torch.tensor([7, 8, 9, 10])),
        dict(return_stats=True),
        dict(return_stats=True, temperature=0.5, stats_temperature=1.0),
        dict(return_stats=True, temperature=0.0),
    ],
    ids=lambda kw: "-".join(kw),
)
def test_matches_reference_features(fast_backend, device, kw):
    logits = _logits((4, 3000), device=device)
    kw = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    _same(mdsample.sample_categorical(logits, backend=fast_backend, **kw),
          mdsample.sample_categorical(logits, backend="reference", **kw))


@pytest.mark.parametrize("stats_temperature", [1e-45, 1e-40, 3e38, 3.4e38])
def test_stats_at_temperatures_past_float32s_normal_range_match_reference(fast_backend, device, stats_temperature):
    """The kernels hold 1 / T_stats in [2^-126, 3e38], the reference the same: past that range the margin (a
    subnormal) came out 3.5x the reference's, and a log-probability -3e35 against -inf. Gaps of 1e-3 keep
    gap / T finite at the bound; rtol 1e-3 is 30 ulps of a subnormal near 4e-41."""
    logits = _logits((4, 300), scale=1e-3, device=device)
    kw = dict(seed=3, return_stats=True, stats_temperature=stats_temperature)
    got = mdsample.sample_categorical(logits, backend=fast_backend, **kw)
    want = mdsample.sample_categorical(logits, backend="reference", **kw)
    assert torch.equal(got.tokens.cpu(), want.tokens.cpu())
    for name in ("logprob", "prob", "margin", "entropy"):
        torch.testing.assert_close(getattr(got, name).cpu(), getattr(want, name).cpu(), rtol=1e-3, atol=0.0,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_guidance_matches_reference_formula(fast_backend, device):
    cond = _logits((5, 2500), seed=1, device=device)
    uncond = _logits((5, 2500), seed=2, device=device)
    cond[0, :10] = -math.inf  # masked on one side only must stay masked
    uncond[1, 10:20] = -math.inf
    got = mdsample.sample_categorical(cond, guidance=uncond, guidance_scale=1.5, temperature=0, backend=fast_backend)
    want = guided_scores(cond, uncond, 1.5).argmax(-1)
    assert torch.equal(got.cpu(), want.cpu())
    sampled = mdsample.sample_categorical(cond, guidance=uncond, guidance_scale=1.5, seed=4, backend=fast_backend)
    ref = mdsample.sample_categorical(cond, guidance=uncond, guidance_scale=1.5, seed=4, backend="reference")
    assert torch.equal(sampled.cpu(), ref.cpu())
    assert not (sampled[0] < 10).any() and not ((sampled[1] >= 10) & (sampled[1] < 20)).any()


def test_strided_and_expanded_rows_are_read_in_place(fast_backend, device):
    base = _logits((6, 2 * 3001), device=device)
    strided = base[::2, ::2]  # last dim stride 2 is refused below; leading stride is fine
    with pytest.raises(ValueError, match="logits"):
        mdsample.sample_categorical(strided, backend=fast_backend)
    rows = base[::2, :3001]
    expanded = _logits((1, 1, 3001), device=device).expand(4, 5, 3001)
    for t in (rows, expanded, base.view(6, 2, 3001).transpose(0, 1)):
        _same(mdsample.sample_categorical(t, seed=3, backend=fast_backend),
              mdsample.sample_categorical(t.contiguous(), seed=3, backend="reference"))


def test_same_call_is_bitwise_repeatable(fast_backend, device):
    logits = _logits((_rows(fast_backend, 64), 4100), device=device)
    a = mdsample.sample_categorical(logits, seed=5, return_stats=True, backend=fast_backend)
    b = mdsample.sample_categorical(logits, seed=5, return_stats=True, backend=fast_backend)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_argmax_ignores_seed_and_takes_lowest_tied_index(fast_backend, device):
    logits = torch.zeros((3, 5000), device=device)
    logits[:, [4100, 17, 2500]] = 9.0
    for seed in (0, 1, 2):
        assert mdsample.sample_categorical(logits, temperature=0, seed=seed, backend=fast_backend).tolist() == [17] * 3


def test_exclude_is_never_returned_and_inputs_are_not_mutated(fast_backend, device):
    logits = _logits((_rows(fast_backend, 200), 300), device=device)
    logits[:, 42] = 50.0  # almost all the mass on the excluded token
    before = logits.clone()
    tokens = mdsample.sample_categorical(logits, exclude=42, seed=1, backend=fast_backend)
    assert not (tokens == 42).any()
    assert torch.equal(logits, before)


def test_inactive_rows_are_not_checked_and_return_fallback(fast_backend, device):
    logits = _logits((4, 300), device=device)
    logits[1] = math.nan
    active = torch.tensor([True, False, True, True], device=device)
    out = mdsample.sample_categorical(logits, active=active, fallback=torch.tensor(99, device=device), backend=fast_backend)
    assert out[1] == 99
    out = mdsample.sample_categorical(logits, active=active, backend=fast_backend)
    assert out[1] == -1


def test_infinite_temperature_draws_the_finite_tokens_alike(fast_backend, device):
    """T = +inf (reachable with check=False, or a float64 T above 3.4e38): every backend scales by the kernels'
    clamped 2^-126, so all finite tokens weigh the same and the draws agree bitwise. The reference divided
    -inf by inf (NaN) and returned the excluded token 0 for every row, and unmask_step revealed the mask."""
    logits = torch.tensor([[-math.inf, 0.0, 1.0, 2.0, 3.0]] * 64, device=device)
    t = torch.full((64,), math.inf, device=device)
    got = {b: mdsample.sample_categorical(logits, temperature=t, exclude=1, seed=1, check=False, backend=b)
           for b in ("reference", fast_backend)}
    assert torch.equal(got["reference"], got[fast_backend])
    assert set(got["reference"].tolist()) == {2, 3, 4}  # 64 draws miss one of 3 tokens with chance 3 (2/3)^64 ~ 1e-11
    x = torch.full((8, 8), 1, device=device)
    revealed = {b: mdsample.unmask_step(logits[:8, None].expand(8, 8, 5), x, mask_id=1, reveal_prob=1.0,
                                         temperature=t[:8, None].expand(8, 8), seed=2, check=False, backend=b)
                for b in ("reference", fast_backend)}
    assert torch.equal(revealed["reference"], revealed[fast_backend]) and bool((revealed["reference"] > 1).all())


def test_bad_rows_raise_naming_the_row_or_return_minus_one(fast_backend, device):
    logits = _logits((2, 3, 300), device=device)
    logits[1, 2, 7] = math.nan
    with pytest.raises(ValueError, match=r"logits\[1, 2\].*NaN"):
        mdsample.sample_categorical(logits, backend=fast_backend)
    out = mdsample.sample_categorical(logits, check=False, backend=fast_backend)
    assert out[1, 2] == -1 and (out.view(-1)[:-1] >= 0).all()
    logits[1, 2] = -math.inf
    with pytest.raises(ValueError, match="no finite logit"):
        mdsample.sample_categorical(logits, temperature=0, backend=fast_backend)
    logits[1, 2, 3] = math.inf
    with pytest.raises(ValueError, match=r"\+inf"):
        mdsample.sample_categorical(logits, backend=fast_backend)
    only_masked = torch.full((1, 300), -math.inf, device=device)
    only_masked[0, 5] = 1.0
    with pytest.raises(ValueError, match="no finite logit besides the excluded token"):
        mdsample.sample_categorical(only_masked, exclude=5, backend=fast_backend)
    with pytest.raises(ValueError, match=r"no finite logit \(row"):  # no `exclude` given: none named
        mdsample.sample_categorical(torch.full((1, 300), -math.inf, device=device), backend=fast_backend)
    uncond = _logits((2, 3, 300), seed=1, device=device)
    uncond[0, 1, 4] = math.nan
    with pytest.raises(ValueError, match=r"guidance\[0, 1\] contains NaN"):  # the side that holds it
        mdsample.sample_categorical(_logits((2, 3, 300), device=device), guidance=uncond, guidance_scale=1.0,
                                    backend=fast_backend)
    if fast_backend == "reference":  # the stand-in of a pure-Python install combines in float64: no overflow
        return
    with pytest.raises(ValueError, match=r"guided scores of logits\[0\] overflow float32"):  # both sides finite
        mdsample.sample_categorical(torch.tensor([[2.0, 0.0, 1.0]], device=device),
                                    guidance=torch.zeros(1, 3, device=device), guidance_scale=3e38, backend=fast_backend)


def _near_tie(logits_row, temperature, seed, offset, position, token_a, token_b, tol=1e-5):
    """Whether the reference's uniforms land within ``tol`` (relative) of the boundary between two tokens."""
    a = logits_row.double() / temperature
    v = a.numel()
    nc = -(-v // CHUNK)
    chunks = torch.nn.functional.pad(a, (0, nc * CHUNK - v), value=-math.inf).view(nc, CHUNK)
    m = chunks.amax(-1)
    weights = torch.exp(chunks - m.max()).sum(-1)
    w0, w1, w2, w3 = draw_words(torch.tensor(seed), torch.tensor(offset), torch.tensor(position), DOMAIN_TOKEN)
    u1, u2 = float(uniform52(w0, w1)), float(uniform52(w2, w3))
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), weights.cumsum(0)]) / weights.sum()
    ca, cb = token_a // CHUNK, token_b // CHUNK
    if ca != cb:  # level-1 boundary between the two chunks
        edge = cum[max(ca, cb)]
        return abs(u1 - float(edge)) < tol
    inner = torch.exp(chunks[ca] - m[ca])
    icum = torch.cat([torch.zeros(1, dtype=torch.float64), inner.cumsum(0)]) / inner.sum()
    edge = icum[max(token_a, token_b) % CHUNK]
    return abs(u2 - float(edge)) < tol


def test_cross_backend_agreement_rate_and_near_ties(fast_backend, device):
    """>= 99.99% agreement with the float64 reference; every disagreement a near-tie (relative 1e-5)."""
    if fast_backend == "reference":
        pytest.skip("no compiled or Triton backend here")
    rows = 256 if _interpreted(fast_backend) else 20000
    logits = _logits((rows, CHUNK * 3 + 100), scale=4.0, seed=3, device=device)
    got = mdsample.sample_categorical(logits, seed=9, offset=1, backend=fast_backend).cpu()
    want = mdsample.sample_categorical(logits, seed=9, offset=1, backend="reference").cpu()
    differ = (got != want).nonzero().flatten().tolist()
    assert len(differ) <= max(1, rows // 10000), f"{len(differ)} of {rows} rows disagree"
    for r in differ:
        assert _near_tie(logits[r].cpu(), 1.0, 9, 1, r, int(got[r]), int(want[r])), f"row {r} disagrees without a near-tie"


def stats64(logits, t_stats, tokens):
    """float64 (logprob, margin, entropy) of softmax(l / t_stats) at each row's token: scores shifted by the max first."""
    d = (logits.double() - logits.double().max(1, keepdim=True).values) / t_stats
    logp = d.log_softmax(1)
    p = logp.exp()
    top = p.topk(2, 1).values
    return (logp.gather(1, tokens.unsqueeze(1)).squeeze(1), top[:, 0] - top[:, 1],
            -(p * logp.nan_to_num(neginf=0.0)).sum(1))


def tiny_temperature_rows(t):
    """float32 ``[4, 2 * CHUNK + 100]`` rows whose softmax at temperature ``t`` is far from one-hot: maxima tied or a
    few ``t`` apart, in different 2048-token chunks, at scores 10 and 1e4."""
    logits = torch.full((4, 2 * CHUNK + 100), -5.0)
    logits[:, 3] = 10.0
    logits[0, 2100] = 10.0                          # a tie in another chunk: p = 0.5 each
    logits[1, 4100] = 10.0 - 2 * t                  # p = 1 / (1 + e^-2) (as rounded in float32)
    logits[2, 2500] = 10.0 - 0.5 * t
    logits[2, 7] = 10.0 - 0.25 * t
    logits[3, 3] = 1e4                              # large scores: an ulp of 1e4 / T is far above 1
    logits[3, 4150] = 1e4 - 3 * t
    return logits


def assert_stats_exact(out, logits, t):
    logprob, margin, entropy = stats64(logits.cpu(), t, out.tokens.cpu())
    for name, got, want in (("logprob", out.logprob, logprob), ("prob", out.prob, logprob.exp()),
                            ("margin", out.margin, margin), ("entropy", out.entropy, entropy)):
        got = got.cpu().double()
        assert torch.isfinite(got).all(), name
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)


TINY_TEMPERATURES = [1e-3, 1e-5, 1e-7, 1e-39]


@pytest.mark.parametrize("t", TINY_TEMPERATURES)
def test_stats_stay_exact_at_tiny_temperatures(backend, device, t):
    """At a tiny stats temperature the scaled scores l / T are huge (1e6 for l = 10, T = 1e-5) and their float32
    rounding would swamp the differences that make the probabilities: stats are taken from differences to the
    maximum, also across 2048-token chunks, and at a subnormal T (no NaN). Compared with float64 from the same
    float32 logits."""
    for logits in (tiny_temperature_rows(t), tiny_temperature_rows(t).repeat(4, 1)):  # Triton: split / per-row plans
        logits = logits.to(device)
        assert_stats_exact(mdsample.sample_categorical(logits, temperature=t, seed=4, return_stats=True,
                                                       backend=backend), logits, t)


def test_temperature_near_float32_max_samples_uniformly(backend, device):
    """T = 3e38: 1 / T is subnormal; -inf scores (the excluded token) stay -inf instead of -inf * 0 = NaN, so rows
    are drawn (uniform over the allowed tokens) and never return the excluded one. The share below 2048 (2047 of
    4095 tokens) must lie within 3.29 binomial standard deviations: P(false alarm) = 1e-3 per T, fixed seed."""
    n = _rows(backend, 512)
    logits = torch.zeros(1, 4096, device=device).expand(n, 4096)
    p = 2047 / 4095
    for t in (3e38, 1e38):
        tok = mdsample.sample_categorical(logits, temperature=t, seed=3, exclude=0, backend=backend).cpu()
        assert (tok > 0).all() and (tok < 4096).all()
        assert abs(float((tok < 2048).double().mean()) - p) < 3.29 * math.sqrt(p * (1 - p) / n)


def test_row_count_times_vocab_beyond_2_to_32(fast_backend, device):
    """An expanded [16400, 2^18] tensor (N*V > 2^32 elements, one row in memory): no index overflow."""
    if fast_backend not in ("cpu", "cuda"):
        pytest.skip("only the compiled backends are fast enough for 4.3e9 elements here")
    row = _logits((1, 1 << 18), device=device)
    logits = row.to(torch.bfloat16).expand(16400, 1 << 18)
    out = mdsample.sample_categorical(logits, temperature=0, backend=fast_backend)
    assert (out == int(row.to(torch.bfloat16).float().argmax())).all()


def test_empty_leading_dims(fast_backend, device):
    out = mdsample.sample_categorical(torch.zeros((0, 4, 10), device=device), backend=fast_backend)
    assert out.shape == (0, 4) and out.dtype == torch.int64


def test_vector_logits_give_a_scalar(fast_backend, device):
    row = _logits((300,), device=device)
    out = mdsample.sample_categorical(row, seed=2, backend=fast_backend)
    assert out.shape == () and 0 <= int(out) < 300
    assert int(out) == int(mdsample.sample_categorical(row.cpu().view(1, 300), seed=2, backend="reference")[0])


def test_torch_compile_fullgraph_matches_eager(device):
    logits = _logits((8, 500), device=device)

    def fn(x, seed):
        return mdsample.sample_categorical(x * 2.0, seed=seed, check=False) + 1

    seed = torch.full((8,), 5, dtype=torch.int64, device=device)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(logits, seed), fn(logits, seed))


def test_torch_compile_fullgraph_with_the_default_check_and_row_tensors(device):
    """check=True's value checks (per-row temperature, positions, unmask_step's x and reveal_prob) are
    skipped inside a traced graph instead of breaking it."""
    logits = _logits((2, 4, 300), device=device)
    temp = torch.tensor([0.5, 1.0, 2.0, 0.0] * 2, device=device).view(2, 4)
    pos = torch.arange(8, device=device).view(2, 4) * 3
    x = torch.tensor([[299, 1, 299, 299], [5, 299, 299, 7]], device=device)

    def draw(lg, t, p):
        return mdsample.sample_categorical(lg, temperature=t, positions=p, seed=3)

    def step(lg, x, p):
        return mdsample.unmask_step(lg, x, mask_id=299, reveal_prob=torch.full((2, 1), 0.5, device=lg.device),
                                    temperature=temp, positions=p, seed=3, offset=1)

    for fn, args in ((draw, (logits, temp, pos)), (step, (logits, x, pos))):
        torch._dynamo.reset()
        compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
        assert torch.equal(compiled(*args), fn(*args))


# ---- one value or an [N] tensor; default positions; row layouts (issue 3) ----

def _identical(a, b):
    """Bitwise the same tokens (and stats: NaN where the other has NaN)."""
    if isinstance(a, tuple):  # (tokens, revealed) of unmask_step
        for x, y in zip(a, b):
            _identical(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a.cpu(), b.cpu())
    else:
        for x, y in zip(a, b):
            torch.testing.assert_close(x.cpu(), y.cpu(), rtol=0, atol=0, equal_nan=True)


def _as_rows(name, value, lead, device):
    """The ``[N]``-tensor form of one per-row value, as a caller would build it."""
    dtype = {"seed": torch.int64, "offset": torch.int64, "reveal_prob": torch.float64}.get(name, torch.float32)
    if dtype == torch.int64 and value >= 2**63:
        value -= 2**64
    return torch.full(lead, value, dtype=dtype, device=device)


ONE_VALUE = [
    dict(temperature=0.7),
    dict(temperature=0.0, return_stats=True),  # argmax rows: stats at T = 1 either way
    dict(temperature=1e-46, return_stats=True),  # rounds to fp32 0: argmax, stats at T = 1 either way
    dict(seed=2**63 + 5, offset=2**40 + 3),
    dict(temperature=0.5, return_stats=True, stats_temperature=1.3),
]


@pytest.mark.parametrize("kw", ONE_VALUE, ids=[",".join(k) for k in ONE_VALUE])
def test_one_value_and_its_tensor_draw_the_same(backend, device, kw):
    """A Python number (taken by value, no [N] tensor) and the same value in every row of a tensor."""
    lead = (5,)  # under the interpreter: Triton's split path (rows < 8)
    logits = _logits(lead + (CHUNK + 37,), device=device)
    tensors = {k: v if k == "return_stats" else _as_rows(k, v, lead, device) for k, v in kw.items()}
    _identical(mdsample.sample_categorical(logits, backend=backend, **kw),
               mdsample.sample_categorical(logits, backend=backend, **tensors))
    x = torch.tensor([0, 3, 0, 0, 9], device=device)
    step = dict(mask_id=0, reveal_prob=0.6, return_revealed=True, seed=kw.get("seed", 4), offset=kw.get("offset", 1),
                temperature=kw.get("temperature", 1.0))
    as_tensors = {k: _as_rows(k, v, lead, device) if k in ("reveal_prob", "seed", "offset", "temperature") else v
                  for k, v in step.items()}
    _identical(mdsample.unmask_step(logits, x, backend=backend, **step),
               mdsample.unmask_step(logits, x, backend=backend, **as_tensors))


def test_default_positions_are_the_flat_row_index(backend, device):
    logits = _logits((2, 3, CHUNK + 37), device=device)
    arange = torch.arange(6, device=device).view(2, 3)
    _identical(mdsample.sample_categorical(logits, seed=9, return_stats=True, backend=backend),
               mdsample.sample_categorical(logits, seed=9, positions=arange, return_stats=True, backend=backend))
    x = torch.zeros(2, 3, dtype=torch.int64, device=device)
    kw = dict(mask_id=0, reveal_prob=0.5, seed=9, backend=backend)
    _identical(mdsample.unmask_step(logits, x, **kw), mdsample.unmask_step(logits, x, positions=arange, **kw))


def _layouts(device):
    """(name, logits, whether one row stride describes them) over one base of 12 rows."""
    V = CHUNK + 37
    base = _logits((3, 4, V + 1), device=device)
    return [
        ("contiguous", base[..., :V].contiguous(), True),
        ("sliced [:, 1:] 2-D", base.view(12, V + 1)[:, 1:], True),  # row stride V + 1, rows off alignment
        ("sliced [:, 1:] 3-D", base[:, 1:, 1:], False),
        ("permuted", base[..., 1:].permute(1, 0, 2), False),
        ("expanded [3, 1] -> [3, 4]", base[:, :1, 1:].expand(3, 4, V), False),
        ("one row expanded", base[0, :1, 1:].expand(6, V), True),  # row stride 0
    ]


@pytest.mark.parametrize("case", range(6), ids=[name for name, _, _ in _layouts("cpu")])
def test_row_layouts_draw_like_their_contiguous_copy(backend, device, case):
    from mdsample.ops._validate import row_layout, unravel

    _, logits, one_stride = _layouts(device)[case]
    offsets, stride = row_layout(logits)
    assert (offsets is None) == one_stride
    lead = logits.shape[:-1]
    starts = [(logits[unravel(r, lead)].data_ptr() - logits.data_ptr()) // logits.element_size()
              for r in range(math.prod(lead))]
    assert (offsets.tolist() if offsets is not None else [r * stride for r in range(len(starts))]) == starts
    kw = dict(seed=3, offset=2, return_stats=True, backend=backend)
    _identical(mdsample.sample_categorical(logits, **kw), mdsample.sample_categorical(logits.contiguous(), **kw))
    uncond = _logits(logits.shape, seed=1, device=device)  # contiguous guidance beside strided logits
    kw.update(guidance=uncond, guidance_scale=1.5)
    _identical(mdsample.sample_categorical(logits, **kw), mdsample.sample_categorical(logits.contiguous(), **kw))
    _identical(mdsample.sample_categorical(uncond, **{**kw, "guidance": logits}),
               mdsample.sample_categorical(uncond, **{**kw, "guidance": logits.contiguous()}))
    x = torch.zeros(logits.shape[:-1], dtype=torch.int64, device=device)
    step = dict(mask_id=0, reveal_prob=0.6, seed=5, backend=backend)
    _identical(mdsample.unmask_step(logits, x, **step), mdsample.unmask_step(logits.contiguous(), x, **step))


BAD_CALLS = [
    (dict(logits=[1.0, 2.0]), TypeError, "logits"),
    (dict(logits=torch.zeros(3, 5, dtype=torch.int64)), TypeError, "logits"),
    (dict(logits=torch.zeros(3, 0)), ValueError, "logits"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(temperature=math.nan), ValueError, "temperature"),
    (dict(temperature=torch.tensor([1.0, -2.0, 1.0])), ValueError, "temperature"),
    (dict(temperature=torch.ones(4)), ValueError, "temperature"),
    (dict(temperature="hot"), TypeError, "temperature"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(seed=torch.ones(3)), TypeError, "seed"),
    (dict(seed=2**64), ValueError, "seed"),
    (dict(offset=torch.ones(2, dtype=torch.int64)), ValueError, "offset"),
    (dict(positions=torch.tensor([0, -1, 2])), ValueError, "positions"),
    (dict(positions=torch.tensor([0, 2**48, 2])), ValueError, "positions"),
    (dict(exclude=5), ValueError, "exclude"),
    (dict(exclude=-1), ValueError, "exclude"),
    (dict(exclude=1.0), TypeError, "exclude"),
    (dict(active=torch.ones(3)), TypeError, "active"),
    (dict(fallback=torch.zeros(3, dtype=torch.int64)), ValueError, "fallback"),
    (dict(guidance=torch.zeros(3, 4)), ValueError, "guidance"),
    (dict(guidance=torch.zeros(3, 5, dtype=torch.float64)), ValueError, "guidance"),
    (dict(guidance_scale=2.0), ValueError, "guidance_scale"),
    (dict(guidance=torch.zeros(3, 5), guidance_scale=math.inf), ValueError, "guidance_scale"),
    (dict(temperature=1e39), ValueError, "temperature.*float32"),
    (dict(return_stats=True, stats_temperature=4e38), ValueError, "stats_temperature.*float32"),
    (dict(guidance=torch.zeros(3, 5), guidance_scale=-1e39), ValueError, "guidance_scale.*float32"),
    (dict(stats_temperature=1.0), ValueError, "stats_temperature"),
    (dict(return_stats=True, stats_temperature=0.0), ValueError, "stats_temperature"),
    (dict(temperature=torch.ones(3, device="meta")), ValueError, "temperature.*same device"),
    (dict(guidance=torch.zeros(3, 5, device="meta")), ValueError, "guidance.*same device"),
    (dict(backend="gpu"), ValueError, "backend"),
    (dict(backend="cuda"), ValueError, "cuda"),
    (dict(logits=torch.zeros(3, 10)[:, ::2]), ValueError, "stride"),
    (dict(check="no"), TypeError, "check must be a bool"),  # read as true once
    (dict(return_stats="no"), TypeError, "return_stats must be a bool"),
    (dict(active=0.5), TypeError, "active must be a bool or bool tensor"),  # read as True once
    (dict(active=True, fallback=2**63), ValueError, "fallback must be a token id in the int64 range"),  # wrapped
]


@pytest.mark.parametrize("kw,exc,name", BAD_CALLS, ids=[f"{i}-{c[2]}" for i, c in enumerate(BAD_CALLS)])
def test_bad_input_names_the_argument(kw, exc, name):
    kw = dict(kw)
    logits = kw.pop("logits", torch.zeros(3, 5))
    with pytest.raises(exc, match=name):
        mdsample.sample_categorical(logits, **kw)


def test_float64_rows_beyond_float32_are_named(fast_backend):
    """The compiled backends read float64 logits as float32: a row that overflows there is named as such, not
    as having no finite logit (every value of it is finite in float64)."""
    for row in ([1e39, 0.0], [-1e300, -9e299]):
        with pytest.raises(ValueError, match=r"logits\[0\] holds float64 values beyond float32's range"):
            mdsample.sample_categorical(torch.tensor([row], dtype=torch.float64), backend=fast_backend)


def test_float64_values_below_float32s_range_read_as_minus_inf(fast_backend, device):
    """As documented: a finite row draws as if its values under -3.4e38 were -inf; with guidance such a token
    leaves the guided row (the reference, in float64, scores it -1e300 + 2 * (0 + 1e300) and picks it)."""
    l = torch.tensor([[0.0, 1.0, -1e300]] * 64, dtype=torch.float64, device=device)
    drawn = mdsample.sample_categorical(l, seed=torch.arange(64, device=device), backend=fast_backend)
    assert not bool((drawn == 2).any()) and bool((drawn == 0).any())
    c = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64, device=device)
    u = torch.tensor([[0.0, 0.0, -1e300]], dtype=torch.float64, device=device)
    kw = dict(guidance=u, guidance_scale=1.0, temperature=0.0)
    assert mdsample.sample_categorical(c, backend=fast_backend, **kw).tolist() == [1]
    assert mdsample.sample_categorical(c, backend="reference", **kw).tolist() == [2]


@requires.cpu_backend
def test_value_checks_cost_one_host_read(monkeypatch):
    """check=True reads the per-row value checks (temperature, positions, stats_temperature; unmask_step's
    x and reveal_prob) and the bad-row test together, after the kernel: one host read per call."""
    logits = _logits((6, 300))
    temp, pos = torch.full((6,), 0.7), torch.arange(6) * 5
    x = torch.tensor([299, 3, 299, 299, 8, 299])
    calls = []
    for name in ("__bool__", "__int__", "item", "tolist", "nonzero"):
        orig = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=orig, _n=name, **k: calls.append(_n) or _o(
            self, *a, **k))
    mdsample.sample_categorical(logits, temperature=temp, positions=pos, seed=1, return_stats=True,
                                stats_temperature=temp, active=x == 299, backend="cpu")
    assert calls == ["__bool__"]
    calls.clear()
    mdsample.unmask_step(logits, x, mask_id=299, reveal_prob=torch.full((6,), 0.5), temperature=temp,
                         positions=pos, seed=1, backend="cpu")
    assert calls == ["__bool__"]
    monkeypatch.undo()
    with pytest.raises(ValueError, match="positions must lie in"):
        mdsample.sample_categorical(logits, positions=pos - 1, backend="cpu")
    with pytest.raises(ValueError, match="x holds token id 300"):
        mdsample.unmask_step(logits, torch.full((6,), 300), mask_id=299, reveal_prob=0.5, backend="cpu")


# Rows of 5000 tokens span three chunks of two parts each, so the parts' merge and the level-1 chunk weights
# meet the extreme temperature as well: a scale of fp32 1/T drops every negative score of the first (g - M
# overflows) and flattens the second's steps of T / 10 to ones of T / 3400.
EXTREME_TEMPERATURE_ROWS = [([3e38, 0.0, -3e38], 3e38), ([3e38, -3e38], 5e37), ([1e-40, 0.0], 1e-40),
                            ((torch.linspace(-1.0, 1.0, 5000) * 3e38).tolist(), 3e38),
                            ((torch.arange(5000.0) * 1e-41).tolist(), 1e-40)]
EXTREME_TEMPERATURE_IDS = ["3e38", "5e37", "1e-40", "3e38-wide", "1e-40-wide"]


def extreme_temperature_batch(row, rows_of_three):
    """``row`` repeated: ``rows_of_three`` times for a short row, 64 times for a wide one."""
    return torch.tensor(row).expand(rows_of_three if len(row) <= 3 else 64, len(row))


@pytest.mark.parametrize("row, t", EXTREME_TEMPERATURE_ROWS, ids=EXTREME_TEMPERATURE_IDS)
def test_extreme_temperatures_with_gaps_of_their_size_draw_the_reference_tokens(fast_backend, device, row, t):
    """Where 1/T leaves float32's normal range (or (g - M) / T needs a gap past it) and the logit gaps are of
    T's size, the fp32 scale was clamped: the draws leaned to the max (p 0.97 for 0.67). Token for token with
    the float64 reference now (deterministic)."""
    logits = extreme_temperature_batch(row, 64 if fast_backend == "triton" else 4000).to(device)
    got = mdsample.sample_categorical(logits, temperature=t, seed=3, backend=fast_backend)
    want = mdsample.sample_categorical(logits.cpu(), temperature=t, seed=3, backend="reference")
    assert torch.equal(got.cpu(), want)


def test_a_backend_that_cannot_run_says_what_to_do():
    """The error named the cause only ("not available: ... does not run on cpu tensors", while `info` listed
    the backend as loaded): it now also says how to get there, and that backend='auto' picks one that runs."""
    logits = torch.randn(2, 5)
    for backend in ("cuda", "triton"):
        if _backends.available(backend, "cpu"):  # triton under TRITON_INTERPRET=1
            continue
        with pytest.raises(ValueError, match=r"backend 'auto'|backend='auto'") as err:
            mdsample.sample_categorical(logits, backend=backend)
        assert any(fix in str(err.value) for fix in ("move them to a CUDA device", "TRITON_INTERPRET=1",
                                                     "pip install", "rebuild", "reinstall")), str(err.value)
    if "cpu" not in _backends._reasons:  # a pure-Python install says why the extension is missing instead
        assert "'cuda' and 'triton' run CUDA tensors" in _backends.why_not("cpu", "cuda")
