"""mdsample.masked_nll against a float64 F.log_softmax computed here, on every backend.

The kernels accumulate in float32 per row (online logsumexp) and in float64 over a
sequence; what these tests check is rtol 2e-6 plus 2e-5 absolute per scored row against the
float64 truth. The relative precision of a near-certain token's small NLL (1e-7 once came out
as 0) is tests/test_confident_tokens.py's.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import mdsample
from mdsample import _backends

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def interpreted_triton(backend):
    return backend == "triton" and _backends.triton_interpreted()


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def truth(logits, x0, xt, *, mask_id, weight=None, exclude=None, guidance=None, guidance_scale=0.0):
    """Float64 per-sequence NLL from materialised log_softmax (the naive formula)."""
    g = logits.double()
    if guidance is not None:
        u = guidance.double()
        g = torch.where(torch.isneginf(g) | torch.isneginf(u), -math.inf, u + (guidance_scale + 1) * (g - u))
    if exclude is not None:
        g = g.clone()
        g[..., exclude] = -math.inf
    logp = F.log_softmax(g, -1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    w = torch.ones_like(logp) if weight is None else torch.as_tensor(weight, dtype=torch.float64)
    if w.dim() and w.shape == x0.shape[:-1]:
        w = w.unsqueeze(-1)
    return torch.where(xt == mask_id, -logp * w, 0.0).sum(-1)


def _check(got, want, rows):
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double().cpu(), want.cpu(), rtol=2e-6, atol=2e-5 * max(rows, 1))


def _case(shape, vocab, dtype, seed, mask_id=3, frac=0.5, device="cpu"):
    g = _gen(seed)
    logits = (torch.randn(*shape, vocab, generator=g, dtype=torch.float64) * 3).to(dtype)
    x0 = torch.randint(0, vocab, shape, generator=g)
    xt = torch.where(torch.rand(shape, generator=g) < frac, mask_id, x0)
    return logits.to(device), x0.to(device), xt.to(device)


def _sizes(backend):
    """(shape, vocab) cases; the Triton interpreter gets small ones (one still crosses 2048-token blocks)."""
    if interpreted_triton(backend):
        return [((2, 5), 300), ((1, 3), 2 * 2048 + 5)]
    return [((2, 5), 300), ((3, 17), 2 * 2048 + 5), ((1, 64), 50), ((4,), 1000)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_float64_log_softmax(backend, dtype, device):
    for k, (shape, vocab) in enumerate(_sizes(backend)):
        logits, x0, xt = _case(shape, vocab, dtype, seed=k, device=device)
        got = mdsample.masked_nll(logits, x0, xt, mask_id=3, backend=backend)
        assert got.shape == shape[:-1]
        _check(got, truth(logits, x0, xt, mask_id=3), int((xt == 3).sum()))


def test_weights_exclude_guidance(backend, device):
    (shape, vocab) = _sizes(backend)[1]
    logits, x0, xt = _case(shape, vocab, torch.float32, seed=5, device=device)
    guidance = torch.randn(logits.shape, generator=_gen(6)).to(device)
    guidance[..., 7] = -math.inf  # -inf on either side stays -inf
    rows = int((xt == 3).sum())
    per_seq = torch.linspace(0.5, 2.0, shape[0]).to(device)
    per_tok = torch.rand(shape, generator=_gen(7)).to(device)
    cases = [
        dict(weight=per_seq),
        dict(weight=per_tok),
        dict(weight=2.5),
        dict(weight=per_seq.unsqueeze(-1)),
        dict(exclude=3),
        dict(exclude=0),  # token 0 is a token, not "no exclusion"
        dict(exclude=11, guidance=guidance, guidance_scale=1.5),
        dict(guidance=guidance, guidance_scale=0.0),
    ]
    for kw in cases:
        got = mdsample.masked_nll(logits, x0, xt, mask_id=3, backend=backend, **kw)
        _check(got, truth(logits, x0, xt, mask_id=3, **kw), rows)


def test_backends_agree(fast_backend, device):
    """Every compiled backend against the float64 reference op, on a strided view (a CFG half of a doubled batch)."""
    logits, x0, xt = _case((4, 9), 700, torch.bfloat16, seed=9, device=device)
    doubled = torch.cat([logits, logits.flip(0)], 0)
    cond, uncond = doubled[:4], doubled[4:]
    weight = torch.rand(4, generator=_gen(1)).to(device)
    kw = dict(mask_id=3, exclude=3, guidance=uncond, guidance_scale=2.0, weight=weight)
    got = mdsample.masked_nll(cond, x0, xt, backend=fast_backend, **kw)
    ref = mdsample.masked_nll(cond.cpu(), x0.cpu(), xt.cpu(), backend="reference",
                              **{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in kw.items()})
    torch.testing.assert_close(got.cpu(), ref, rtol=2e-6, atol=1e-4)


def test_unread_rows_may_hold_anything(backend, device):
    """Unmasked rows and zero-weight rows are not read: NaN there does not reach the result."""
    logits, x0, xt = _case((3, 6), 200, torch.float32, seed=2, device=device)
    masked = xt == 3
    poisoned = logits.clone()
    poisoned[~masked] = math.nan
    x0_bad = torch.where(masked, x0, 10**9)  # out-of-vocab targets in unread rows are fine too
    want = truth(logits, x0, xt, mask_id=3)
    _check(mdsample.masked_nll(poisoned, x0_bad, xt, mask_id=3, backend=backend), want, int(masked.sum()))
    w = torch.ones(3, 6, device=device)
    w[0] = 0.0
    poisoned[0] = math.nan
    got = mdsample.masked_nll(poisoned, x0, xt, mask_id=3, weight=w, backend=backend)
    assert got[0] == 0.0
    _check(got[1:], want[1:], int(masked.sum()))


def test_expanded_and_empty(device):
    row = torch.randn(1, 1, 64, generator=_gen(2)).to(device)
    logits = row.expand(5, 8, 64)  # every row the same storage: read in place
    x0 = torch.randint(0, 64, (5, 8), generator=_gen(3)).to(device)
    xt = torch.full((5, 8), 2, device=device)
    _check(mdsample.masked_nll(logits, x0, xt, mask_id=2), truth(logits, x0, xt, mask_id=2), 40)
    assert mdsample.masked_nll(torch.zeros(0, 4, 10), torch.zeros(0, 4, dtype=torch.long),
                               torch.zeros(0, 4, dtype=torch.long), mask_id=1).shape == (0,)
    nothing = mdsample.masked_nll(logits, x0, x0, mask_id=63 if not bool((x0 == 63).any()) else 62)
    assert bool((nothing == 0).all())


def test_bad_values(backend, device):
    logits, x0, xt = _case((2, 4), 50, torch.float32, seed=4, mask_id=3, frac=1.0, device=device)
    # A target excluded from the softmax has probability 0: +inf, not an error.
    x_ex = x0.clone()
    x_ex[0, 0] = 7
    inf = mdsample.masked_nll(logits, x_ex, xt, mask_id=3, exclude=7, backend=backend)
    assert math.isinf(float(inf[0])) and math.isfinite(float(inf[1]))
    for poison, what in [(math.nan, "NaN"), (math.inf, "+inf")]:
        bad = logits.clone()
        bad[1, 2, 5] = poison
        with pytest.raises(ValueError, match=r"sequence \[1\]"):
            mdsample.masked_nll(bad, x0, xt, mask_id=3, backend=backend)
        out = mdsample.masked_nll(bad, x0, xt, mask_id=3, check=False, backend=backend)
        assert math.isnan(float(out[1])) and math.isfinite(float(out[0])), what
    empty = logits.clone()
    empty[0, 1] = -math.inf  # a masked row with no finite logit
    with pytest.raises(ValueError, match=r"sequence \[0\]"):
        mdsample.masked_nll(empty, x0, xt, mask_id=3, backend=backend)


def test_no_vocab_sized_temporaries():
    """The compiled path allocates O(B L) bytes (offsets, flat ids), never O(B L V).

    Total bytes torch allocates during the call (an upper bound of the peak) must stay
    under 64 bytes per row; F.cross_entropy on the same logits allocates the full log_softmax.
    """
    if not _backends.available("cpu", "cpu"):
        pytest.skip(_backends.why_not("cpu", "cpu"))
    logits, x0, xt = _case((8, 64), 4096, torch.float32, seed=8, frac=0.5)

    def allocated(fn):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        return sum(max(e.self_cpu_memory_usage, 0) for e in prof.events())

    ours = allocated(lambda: mdsample.masked_nll(logits, x0, xt, mask_id=3, weight=torch.rand(8), backend="cpu"))
    naive = allocated(lambda: F.cross_entropy(logits.view(-1, 4096), x0.view(-1), reduction="none"))
    assert ours <= 64 * 8 * 64, ours
    assert naive >= logits.numel() * 4


def test_inputs_not_modified():
    logits, x0, xt = _case((2, 6), 100, torch.float16, seed=1)
    copies = [t.clone() for t in (logits, x0, xt)]
    mdsample.masked_nll(logits, x0, xt, mask_id=3, exclude=3)
    assert all(torch.equal(a, b) for a, b in zip((logits, x0, xt), copies))


def test_torch_compile_fullgraph():
    if not _backends.available("cpu", "cpu"):
        pytest.skip(_backends.why_not("cpu", "cpu"))
    logits, x0, xt = _case((2, 6), 100, torch.float32, seed=3)
    fn = torch.compile(lambda l, a, b: mdsample.masked_nll(l, a, b, mask_id=3, exclude=3, backend="cpu"),
                       fullgraph=True, backend="eager")
    torch.testing.assert_close(fn(logits, x0, xt), mdsample.masked_nll(logits, x0, xt, mask_id=3, exclude=3))
    # A per-sequence weight [B]: its ambiguity test used torch.broadcast_shapes in a try, which dynamo cannot trace.
    w = torch.tensor([1.0, 2.0])
    fw = torch.compile(lambda l, a, b, w: mdsample.masked_nll(l, a, b, mask_id=3, weight=w, backend="cpu"),
                       fullgraph=True, backend="eager")
    torch.testing.assert_close(fw(logits, x0, xt, w), mdsample.masked_nll(logits, x0, xt, mask_id=3, weight=w))


@pytest.mark.parametrize(
    "change,exc,word",
    [
        (dict(logits=torch.zeros(2, 3, 10, dtype=torch.int64)), TypeError, "logits"),
        (dict(logits=torch.zeros(10)), ValueError, "logits"),
        (dict(logits=torch.zeros(2, 10, 3).transpose(1, 2)), ValueError, "logits"),
        (dict(x0=torch.zeros(2, 4, dtype=torch.int64)), ValueError, "x0"),
        (dict(x0=torch.zeros(2, 3)), TypeError, "x0"),
        (dict(x_t=torch.zeros(3, 3, dtype=torch.int64)), ValueError, "x_t"),
        (dict(x0=torch.full((2, 3), 10)), ValueError, "x0"),
        (dict(x0=torch.full((2, 3), -1)), ValueError, "x0"),
        (dict(mask_id=10), ValueError, "mask_id"),
        (dict(mask_id=1.0), TypeError, "mask_id"),
        (dict(exclude=-2), ValueError, "exclude"),
        (dict(weight=torch.ones(4)), ValueError, "weight"),
        (dict(weight=torch.ones(2, 3, dtype=torch.int64)), TypeError, "weight"),
        (dict(weight=torch.tensor([1.0, math.inf])), ValueError, "weight"),
        (dict(weight="1"), TypeError, "weight"),
        (dict(weight=1e39), ValueError, r"weight must lie within float32's range"),  # a RuntimeError once
        (dict(weight=torch.tensor([1.0, 1e300], dtype=torch.float64)), ValueError,
         r"weight must be finite and within float32"),
        (dict(guidance=torch.zeros(2, 3, 11)), ValueError, "guidance"),
        (dict(guidance_scale=1.0), ValueError, "guidance_scale"),
        (dict(guidance=torch.zeros(2, 3, 10), guidance_scale=math.nan), ValueError, "guidance_scale"),
        (dict(backend="fast"), ValueError, "backend"),
        (dict(check="no"), TypeError, "check must be a bool"),  # read as true once
    ],
)
def test_bad_input(change, exc, word):
    args = dict(logits=torch.zeros(2, 3, 10), x0=torch.zeros(2, 3, dtype=torch.int64),
                x_t=torch.full((2, 3), 1), mask_id=1)
    args.update(change)
    with pytest.raises(exc, match=word):
        mdsample.masked_nll(args.pop("logits"), args.pop("x0"), args.pop("x_t"), **args)


def test_a_weight_shape_that_reads_both_ways_is_refused():
    """[L] weights with B = L could mean one per sequence or one per position: refused, naming both spellings."""
    logits = torch.randn(3, 3, 6)
    x0 = torch.zeros(3, 3, dtype=torch.int64)
    xt = torch.full((3, 3), 5)
    with pytest.raises(ValueError, match=r"weight of shape \(3,\) reads as one per sequence or one per position"):
        mdsample.masked_nll(logits, x0, xt, mask_id=5, weight=torch.tensor([1.0, 2.0, 3.0]))
    w = torch.tensor([1.0, 2.0, 3.0])
    per_seq = mdsample.masked_nll(logits, x0, xt, mask_id=5, weight=w.view(3, 1))
    per_pos = mdsample.masked_nll(logits, x0, xt, mask_id=5, weight=w.view(1, 3))
    plain = mdsample.masked_nll(logits, x0, xt, mask_id=5)
    torch.testing.assert_close(per_seq, plain * w)
    nll = torch.nn.functional.cross_entropy(logits.reshape(9, 6), x0.reshape(9), reduction="none").view(3, 3)
    torch.testing.assert_close(per_pos, (nll * w).sum(1).to(per_pos.dtype), rtol=1e-5, atol=1e-5)
    # B != L: one weight per sequence, as before
    assert mdsample.masked_nll(logits[:2], x0[:2], xt[:2], mask_id=5, weight=w[:2]).shape == (2,)


def test_triton_row_offset_hint_divides_every_row_offset():
    """The Triton kernel tells the compiler that every row offset is a multiple of ROW_ALIGN (for 16-byte loads);
    a hint that does not divide an offset would make the GPU read misaligned vectors. Checked against the
    offsets themselves for contiguous, sliced, expanded and odd-width layouts."""
    likelihood = pytest.importorskip("mdsample.triton.likelihood")
    from mdsample.ops._validate import row_offsets

    base = torch.zeros(4, 6, 40, dtype=torch.bfloat16)
    layouts = {
        "contiguous": (base, 8), "rows sliced": (base[:, 1:], 8), "expanded": (base[:, :1].expand(4, 6, 40), 8),
        "odd width": (torch.zeros(3, 5, 20, dtype=torch.bfloat16), 4), "vocab sliced": (base[..., :36], 8),
        "fp32": (torch.zeros(2, 3, 6), 2), "fp64 odd": (torch.zeros(2, 3, 7, dtype=torch.float64), 1),
        "size-1 dim, odd stride": (torch.zeros(1, 5, 43, dtype=torch.bfloat16)[:, :, :40].as_strided(
            (1, 4, 40), (7, 48, 1)), 8),
    }
    for name, (t, want) in layouts.items():
        k = likelihood._offset_multiple(t, None)
        assert k == want and bool((row_offsets(t) % k == 0).all()), name
    assert likelihood._offset_multiple(base, torch.zeros(4, 6, 36, dtype=torch.bfloat16)[..., :20]) == 4  # guidance too


def test_guided_overflow_is_named(fast_backend):
    """Finite logits whose guided score passes float32 give NaN in the compiled backends: the error says so."""
    logits, uncond = torch.tensor([[[3e38, 0.0, 1.0]]]), torch.tensor([[[-3e38, 0.0, 1.0]]])
    with pytest.raises(ValueError, match=r"guided scores .* overflow float32 \(guidance_scale=0.5\)"):
        mdsample.masked_nll(logits, torch.tensor([[1]]), torch.tensor([[2]]), mask_id=2, guidance=uncond,
                            guidance_scale=0.5, backend=fast_backend)
