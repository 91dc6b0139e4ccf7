"""mdsample.lowdisc_timesteps: exact values, the lattice properties, uniformity and input checks.

Every backend must give the float64 reference's times bitwise (they are a few float64
operations in a fixed order, no FMA). Statistical checks use fixed seeds; each states
its false-alarm rate (the chance that a correct implementation fails it).
"""
import math

import pytest
import torch
from scipy import stats

import mdsample
from mdsample.reference.philox import DOMAIN_TIMESTEP, draw_words, uniform52

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")

MODES = ["stratified", "shifted", "iid"]
ALPHA = 1e-6  # false-alarm rate of each KS test


def _spec(n, eps, mode, seed, offset):
    """The definition, written out from the Philox words (independent of mdsample.reference.likelihood)."""
    i = torch.arange(n)
    pos = torch.zeros(n, dtype=torch.int64) if mode == "shifted" else i
    w0, w1, _, _ = draw_words(torch.tensor(seed), torch.tensor(offset), pos, DOMAIN_TIMESTEP)
    u = uniform52(w0, w1)
    unit = {
        "stratified": (u + i.double()) / n,
        "shifted": torch.remainder(u + i.double() / n, 1.0),
        "iid": u,
    }[mode]
    return (1.0 - eps) * unit + eps


@pytest.mark.parametrize("mode", MODES)
def test_reference_is_the_definition(mode):
    for n, eps, seed, offset in [(1, 1e-3, 0, 0), (7, 0.0, 3, 5), (1000, 1e-3, 2**64 - 1, 2**40 + 3)]:
        got = mdsample.lowdisc_timesteps(n, eps=eps, mode=mode, seed=seed, offset=offset, backend="reference")
        signed_seed = seed - 2**64 if seed >= 2**63 else seed
        torch.testing.assert_close(got, _spec(n, eps, mode, signed_seed, offset), rtol=0, atol=2**-52)


@pytest.mark.parametrize("mode", MODES)
def test_backends_agree_bitwise(fast_backend, mode, device):
    offsets = torch.tensor([0, 1, 7, 2**33, -5], device=device)
    for n in [1, 3, 64, 1500]:
        got = mdsample.lowdisc_timesteps(n, mode=mode, seed=11, offset=offsets, backend=fast_backend)
        ref = mdsample.lowdisc_timesteps(n, mode=mode, seed=11, offset=offsets.cpu(), backend="reference")
        assert got.shape == (5, n) and got.dtype == torch.float64 and got.device.type == device
        assert torch.equal(got.cpu(), ref)


def test_one_point_per_stratum():
    """Stratified: exactly one time in each stratum [eps + (1-eps) i/n, eps + (1-eps)(i+1)/n); deterministic."""
    for n, eps in [(1, 0.0), (10, 1e-3), (1000, 0.0), (4096, 0.25)]:
        t = mdsample.lowdisc_timesteps(n, eps=eps, mode="stratified", seed=1, offset=torch.arange(20))
        lo = eps + (1 - eps) * torch.arange(n, dtype=torch.float64) / n
        hi = eps + (1 - eps) * torch.arange(1, n + 1, dtype=torch.float64) / n
        assert bool(((t >= lo - 1e-15) & (t <= hi + 1e-15)).all())
        assert bool((t.diff(dim=1) > 0).all())  # sorted: one per stratum, in order
        assert bool(((t >= eps) & (t <= 1)).all())


def test_shifted_is_one_rotated_lattice():
    n, eps = 50, 1e-3
    t = mdsample.lowdisc_timesteps(n, eps=eps, mode="shifted", seed=4, offset=torch.arange(10))
    unit = (t - eps) / (1 - eps)
    gaps = unit.sort(dim=1).values.diff(dim=1)
    torch.testing.assert_close(gaps, torch.full_like(gaps, 1 / n), rtol=0, atol=1e-12)
    # The shift is unit[0] and every point is (shift + i/n) mod 1.
    i = torch.arange(n, dtype=torch.float64)
    torch.testing.assert_close(unit, torch.remainder(unit[:, :1] + i / n, 1.0), rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_marginals_are_uniform(mode):
    """Point i of each mode is uniform on its range ([eps,1]; stratum i for stratified) over independent offsets.

    KS tests on 4000 lattices, three points each: false-alarm rate 3 * ALPHA per mode.
    """
    n, eps = 16, 1e-3
    t = mdsample.lowdisc_timesteps(n, eps=eps, mode=mode, seed=9, offset=torch.arange(4000))
    unit = (t - eps) / (1 - eps)
    for i in (0, 7, 15):
        x = unit[:, i] * n - i if mode == "stratified" else unit[:, i]
        assert stats.kstest(x.numpy(), "uniform").pvalue > ALPHA, f"point {i}"


def test_offsets_give_independent_lattices():
    """Distinct offsets give different lattices; a lattice is the same alone or among others."""
    many = mdsample.lowdisc_timesteps(8, seed=2, offset=torch.tensor([3, 4, 5]))
    alone = mdsample.lowdisc_timesteps(8, seed=2, offset=4)
    assert torch.equal(many[1], alone)
    assert not torch.equal(many[0], many[1])
    # iid points across offsets are uncorrelated (|r| < 5 / sqrt(N): false alarm 5.7e-7).
    t = mdsample.lowdisc_timesteps(2, mode="iid", seed=2, offset=torch.arange(20000))
    r = float(torch.corrcoef(t.T)[0, 1])
    assert abs(r) < 5 / math.sqrt(20000)


def test_shapes_dtypes_and_empty():
    assert mdsample.lowdisc_timesteps(5).shape == (5,)
    assert mdsample.lowdisc_timesteps(0).shape == (0,)
    assert mdsample.lowdisc_timesteps(3, offset=torch.zeros(2, 4, dtype=torch.int64)).shape == (2, 4, 3)
    t32 = mdsample.lowdisc_timesteps(100, dtype=torch.float32)
    assert t32.dtype == torch.float32
    assert torch.equal(t32, mdsample.lowdisc_timesteps(100).to(torch.float32))
    assert bool(((t32 >= 1e-3 * 0.999) & (t32 <= 1)).all())


@pytest.mark.parametrize(
    "kwargs,exc,word",
    [
        (dict(n=-1), ValueError, "n"),
        (dict(n=2.0), TypeError, "n"),
        (dict(n=4, mode="sobol"), ValueError, "mode"),
        (dict(n=4, eps=1.0), ValueError, "eps"),
        (dict(n=4, eps=-0.1), ValueError, "eps"),
        (dict(n=4, eps=float("nan")), ValueError, "eps"),
        (dict(n=4, seed="x"), TypeError, "seed"),
        (dict(n=4, seed=2**64), ValueError, "seed"),
        (dict(n=4, offset=torch.tensor([0.5])), TypeError, "offset"),
        (dict(n=4, offset=1.5), TypeError, "offset"),
        (dict(n=4, dtype=torch.int64), TypeError, "dtype"),
        (dict(n=4, backend="gpu"), ValueError, "backend"),
    ],
)
def test_bad_input(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        mdsample.lowdisc_timesteps(**kwargs)


def test_torch_compile_fullgraph():
    fn = torch.compile(lambda off: mdsample.lowdisc_timesteps(8, seed=3, offset=off, mode="shifted"), fullgraph=True,
                       backend="eager")
    off = torch.arange(3)
    assert torch.equal(fn(off), mdsample.lowdisc_timesteps(8, seed=3, offset=off, mode="shifted"))


def test_numpy_offset_is_a_per_row_offset_like_a_tensor():
    np = pytest.importorskip("numpy")
    for off in ([1], [1, 2]):
        got = mdsample.lowdisc_timesteps(3, seed=4, offset=np.array(off))
        assert torch.equal(got, mdsample.lowdisc_timesteps(3, seed=4, offset=torch.tensor(off)))
        assert got.shape == (len(off), 3)
