"""mdsample.forward_mask: exact agreement, masking rates, exact counts, nesting and input checks.

Statistical checks use fixed seeds and state their false-alarm rate: z-tests at
``|z| <= 5`` (5.7e-7 each, two-sided) and chi-square tests at ``ALPHA = 1e-6``.
"""
import math

import pytest
import torch
from scipy import stats

import mdsample
from mdsample.reference.philox import DOMAIN_FORWARD_MASK, draw_words, uniform52
from mdsample.samplers.schedules import Cosine, MDLMCosine

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")

MASK = 1000
ALPHA = 1e-6


def _tokens(shape, seed=0, device="cpu"):
    return torch.randint(0, MASK, shape, generator=torch.Generator().manual_seed(seed)).to(device)


def _uniforms(seed, offset, positions):
    w0, w1, _, _ = draw_words(torch.tensor(seed), torch.tensor(offset), positions, DOMAIN_FORWARD_MASK)
    return uniform52(w0, w1)


def test_bernoulli_is_the_definition():
    """x_t = mask where maskable and u < (1 - eps) t, u from the token's Philox draw (flat-index positions)."""
    x0 = _tokens((3, 50))
    t = torch.tensor([0.1, 0.5, 1.0])
    maskable = torch.arange(50) >= 5
    got = mdsample.forward_mask(x0, t, mask_id=MASK, seed=12, offset=3, maskable=maskable, backend="reference")
    u = _uniforms(12, 3, torch.arange(150).view(3, 50))
    want = torch.where(maskable & (u < (1 - 1e-3) * t.view(3, 1).double()), MASK, x0)
    assert torch.equal(got, want)


def test_count_is_the_smallest_uniforms():
    x0 = _tokens((4, 40))
    count = torch.tensor([0, 1, 17, 40])
    got = mdsample.forward_mask(x0, mask_id=MASK, count=count, seed=5, backend="reference")
    u = _uniforms(5, 0, torch.arange(160).view(4, 40))
    for b in range(4):
        want = torch.zeros(40, dtype=torch.bool)
        want[u[b].argsort()[: int(count[b])]] = True
        assert torch.equal(got[b] == MASK, want)


def _cases(device):
    x0 = _tokens((6, 37), seed=1, device=device)
    maskable = (torch.rand(6, 37, generator=torch.Generator().manual_seed(2)) < 0.8).to(device)
    positions = (torch.arange(6).view(6, 1) * 1000 + torch.arange(37) + 2**40).to(device)
    seeds = torch.tensor([0, 1, 2, 3, 2**62, -1], device=device)
    offsets = torch.tensor([[0], [1], [2], [3], [4], [5]], device=device).view(6)
    t = torch.tensor([0.0, 0.05, 0.3, 0.5, 0.99, 1.0], device=device)
    count = torch.tensor([0, 1, 5, 20, 36, 99], device=device)
    return [
        dict(x0=x0, t=t, seed=seeds, offset=offsets),
        dict(x0=x0, t=t, seed=3, maskable=maskable, positions=positions, schedule="cosine"),
        dict(x0=x0, count=count, seed=seeds, offset=offsets),
        dict(x0=x0, count=count, seed=7, offset=9, maskable=maskable, positions=positions),
        dict(x0=_tokens((2, 3000), device=device), count=torch.tensor([1500, 2999], device=device), seed=1),
        dict(x0=_tokens((2, 3000), device=device), t=0.4, seed=1),
    ]


def test_backends_agree_exactly(fast_backend, device):
    for kw in _cases(device):
        got = mdsample.forward_mask(mask_id=MASK, backend=fast_backend, **kw)
        ref = mdsample.forward_mask(mask_id=MASK, backend="reference",
                                    **{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()})
        assert got.dtype == torch.int64 and got.shape == kw["x0"].shape
        assert torch.equal(got.cpu(), ref)


def test_bernoulli_rate():
    """Masked fraction of maskable tokens per t: binomial z-test, |z| <= 5 (false alarm 5 x 5.7e-7)."""
    ts = [0.01, 0.2, 0.5, 0.8, 1.0]
    x0 = _tokens((len(ts) * 64, 1024))
    t = torch.tensor(ts).repeat_interleave(64)
    maskable = torch.arange(1024) % 3 != 0
    xt = mdsample.forward_mask(x0, t, mask_id=MASK, maskable=maskable, seed=3)
    assert not bool((xt[:, ~maskable] == MASK).any())
    for g, tv in enumerate(ts):
        rows = xt[g * 64:(g + 1) * 64][:, maskable]
        n, k = rows.numel(), int((rows == MASK).sum())
        p = (1 - 1e-3) * tv
        z = (k - n * p) / math.sqrt(n * p * (1 - p))
        assert abs(z) <= 5, f"t={tv}: {k}/{n} masked, z={z:.2f}"


def test_count_is_exact_and_uniform():
    """Exactly k maskable tokens per row; over many offsets every maskable position is equally likely.

    Chi-square over the 30 maskable positions of 20000 rows: false alarm ALPHA.
    """
    length, k = 40, 7
    maskable = torch.arange(length) >= 10
    rows = 20000
    x0 = _tokens((1, length)).expand(rows, length)
    xt = mdsample.forward_mask(x0, mask_id=MASK, count=k, maskable=maskable, seed=8,
                               offset=torch.arange(rows), positions=torch.arange(length))
    hit = xt == MASK
    assert bool((hit.sum(1) == k).all())
    assert not bool(hit[:, ~maskable].any())
    freq = hit[:, maskable].sum(0).double()
    expected = rows * k / int(maskable.sum())
    chi2 = float(((freq - expected) ** 2 / expected).sum())
    assert stats.chi2.sf(chi2, df=int(maskable.sum()) - 1) > ALPHA
    # Pairs are uniform too: positions 10 and 11 masked together k(k-1)/(n(n-1)) of the time (|z| <= 5).
    n = int(maskable.sum())
    p = k * (k - 1) / (n * (n - 1))
    both = int((hit[:, 10] & hit[:, 11]).sum())
    assert abs(both - rows * p) <= 5 * math.sqrt(rows * p * (1 - p))


def test_masks_nest_and_count_matches_bernoulli():
    """Same keys: masks grow with t, and count = #masked(t) selects the very same tokens."""
    x0 = _tokens((8, 200))
    prev = None
    for tv in [0.1, 0.3, 0.6, 0.9]:
        xt = mdsample.forward_mask(x0, tv, mask_id=MASK, seed=4, offset=2)
        hit = xt == MASK
        if prev is not None:
            assert bool((hit | ~prev).all())
        same = mdsample.forward_mask(x0, mask_id=MASK, count=hit.sum(1), seed=4, offset=2)
        assert torch.equal(same, xt)
        prev = hit


def test_batch_invariance_and_no_mutation():
    x0 = _tokens((5, 30))
    before = x0.clone()
    positions = torch.arange(5).view(5, 1) * 30 + torch.arange(30)
    full = mdsample.forward_mask(x0, torch.full((5,), 0.5), mask_id=MASK, seed=1, offset=torch.arange(5),
                                 positions=positions)
    one = mdsample.forward_mask(x0[3:4], 0.5, mask_id=MASK, seed=1, offset=3, positions=positions[3:4])
    assert torch.equal(full[3:4], one)
    assert torch.equal(x0, before)


def test_schedules_and_inputs():
    x0 = _tokens((4, 500))
    t = torch.tensor([0.2, 0.4, 0.6, 0.8])
    by_name = mdsample.forward_mask(x0, t, mask_id=MASK, schedule="cosine", seed=2)
    by_object = mdsample.forward_mask(x0, t, mask_id=MASK, schedule=Cosine(1e-3), seed=2)
    assert torch.equal(by_name, by_object)
    mdlm = mdsample.forward_mask(x0, t, mask_id=MASK, schedule=MDLMCosine(), seed=2)
    assert mdlm.shape == x0.shape
    # Already-masked tokens stay masked; int32 input and 1-d input work; t = 0 masks nothing.
    x1 = x0.clone().to(torch.int32)
    x1[:, 0] = MASK
    out = mdsample.forward_mask(x1, 0.0, mask_id=MASK)
    assert torch.equal(out, x1.long())
    assert mdsample.forward_mask(x0[0], 1.0, mask_id=MASK, eps=0.0).eq(MASK).all()


@pytest.mark.parametrize(
    "kwargs,exc,word",
    [
        (dict(t=0.5, count=3), ValueError, "count"),
        (dict(), ValueError, "count"),
        (dict(t=1.5), ValueError, "t"),
        (dict(t=torch.tensor([0.5, -0.1])), ValueError, "t"),
        (dict(t=torch.tensor([1, 0])), TypeError, "t"),
        (dict(t=torch.tensor([0.5, 0.5, 0.5])), ValueError, "t"),
        (dict(count=-1), ValueError, "count"),
        (dict(count=1.5), TypeError, "count"),
        (dict(t=0.5, schedule="linear"), ValueError, "schedule"),
        (dict(t=0.5, schedule=3), TypeError, "schedule"),
        (dict(t=0.5, eps=1.0), ValueError, "eps"),
        (dict(count=1, schedule="linear"), ValueError, "schedule"),  # unused with count, accepted unchecked once
        (dict(count=1, eps=5.0), ValueError, "eps"),
        (dict(t=0.5, check=1), TypeError, "check must be a bool"),
        (dict(t=0.5, maskable=torch.ones(3, dtype=torch.bool)), ValueError, "maskable"),
        (dict(t=0.5, maskable=torch.ones(2, 5)), TypeError, "maskable"),
        (dict(t=0.5, positions=torch.full((2, 5), -1)), ValueError, "positions"),
        (dict(t=0.5, positions=torch.full((2, 5), 2**48)), ValueError, "positions"),
        (dict(t=0.5, seed=0.5), TypeError, "seed"),
        (dict(t=0.5, offset=torch.zeros(3, dtype=torch.int64)), ValueError, "offset"),
        (dict(t=0.5, mask_id=-1), ValueError, "mask_id"),
        (dict(t=0.5, mask_id="m"), TypeError, "mask_id"),
        (dict(t=0.5, backend="nope"), ValueError, "backend"),
    ],
)
def test_bad_input(kwargs, exc, word):
    kwargs = {"mask_id": MASK, **kwargs}
    with pytest.raises(exc, match=word):
        mdsample.forward_mask(_tokens((2, 5)), **kwargs)


def test_bad_x0():
    with pytest.raises(TypeError, match="x0"):
        mdsample.forward_mask(torch.zeros(2, 5), 0.5, mask_id=MASK)
    with pytest.raises(ValueError, match="x0"):
        mdsample.forward_mask(torch.tensor(3), 0.5, mask_id=MASK)
    with pytest.raises(TypeError, match="x0"):
        mdsample.forward_mask([1, 2, 3], 0.5, mask_id=MASK)


def test_torch_compile_fullgraph():
    x0 = _tokens((3, 20))
    t = torch.tensor([0.2, 0.5, 0.9])

    def both(x, tt):
        return (mdsample.forward_mask(x, tt, mask_id=MASK, seed=1),
                mdsample.forward_mask(x, mask_id=MASK, count=torch.tensor([1, 5, 9]), seed=1))

    got = torch.compile(both, fullgraph=True, backend="eager")(x0, t)
    want = both(x0, t)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_schedule_returning_the_wrong_shape_is_named():
    class OneValue:
        def mask_prob(self, t):
            return t.mean()

    x0 = torch.zeros(2, 7, dtype=torch.long)
    with pytest.raises(ValueError, match=r"OneValue.mask_prob returned shape \(\)"):
        mdsample.forward_mask(x0, torch.tensor([0.2, 0.5]), mask_id=9, schedule=OneValue())


def test_schedule_giving_a_probability_outside_0_1_is_refused_and_x0_kept():
    class Doubled:
        def mask_prob(self, t):
            return 2.0 * t

    x0 = torch.arange(14, dtype=torch.long).view(2, 7)
    before = x0.clone()
    with pytest.raises(ValueError, match=r"schedule.mask_prob\(t\) must lie in \[0, 1\]"):
        mdsample.forward_mask(x0, torch.tensor([0.2, 0.7]), mask_id=99, schedule=Doubled())
    assert torch.equal(x0, before)
    out = mdsample.forward_mask(x0, torch.tensor([0.2, 0.7]), mask_id=99, schedule=Doubled(), check=False)
    assert out.shape == x0.shape  # unchecked, the kernel still runs on it safely
