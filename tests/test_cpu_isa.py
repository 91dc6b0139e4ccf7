"""The CPU kernels' instruction-set builds (base, AVX2, AVX-512) give the same results.

The builds compute the same formulas (-ffp-contract=off); only the lane count of their
vector sums differs, which moves an fp32 chunk sum by about an ulp (relative ~1e-6 at
most over 2048 terms). A token can then differ only where the row's uniform falls that
close to a boundary of the two-level draw: ~2e-6 per row, so over the 8192 rows below
~0.02 rows are expected to differ, and more than 2 has probability < 1e-6 (the bound
asserted). Statistics agree to 1e-5; the integer and float64 ops of the likelihood family
bitwise. ``set_cpu_isa`` caps the build the dispatcher picks; builds this machine cannot
run are skipped.
"""
import pytest
import torch

import mdsample
from mdsample import _backends

C = _backends.compiled_module()
pytestmark = pytest.mark.skipif(C is None, reason="pure-Python install (MDSAMPLE_NO_EXT=1)")
ISAS = ("base", "avx2", "avx512")


@pytest.fixture
def isas():
    """The builds this machine runs (set_cpu_isa caps at the best one); the pick is restored after."""
    best = C.cpu_isa()
    runnable = [isa for isa in ISAS if C.set_cpu_isa(isa) == isa]
    C.set_cpu_isa(best)
    yield runnable
    C.set_cpu_isa(best)


def _under(isa, fn):
    C.set_cpu_isa(isa)
    return fn()


def test_set_cpu_isa_caps_the_pick(isas):
    assert isas[0] == "base" and C.cpu_isa() == isas[-1]
    assert C.set_cpu_isa("base") == "base" and C.cpu_isa() == "base"
    assert C.set_cpu_isa("avx512") == isas[-1]  # never above what the machine runs
    with pytest.raises(ValueError, match="set_cpu_isa"):
        C.set_cpu_isa("sse9")


CASES = [(torch.bfloat16, 2048, 50257), (torch.float16, 2048, 3001), (torch.float32, 64, 126464),
         (torch.float64, 4032, 7)]


@pytest.mark.parametrize("dtype,n,v", CASES)
def test_sampling_agrees_across_builds(isas, dtype, n, v):
    if len(isas) < 2:
        pytest.skip("one CPU build runs here")
    g = torch.Generator().manual_seed(v)
    logits = (torch.randn(n, v, generator=g) * 3).to(dtype)
    guidance = (torch.randn(n, v, generator=g) * 3).to(dtype)
    x = torch.randint(0, v, (n,), generator=g)
    x[::3] = 0

    def run():
        res = mdsample.sample_categorical(logits, seed=7, offset=2, temperature=0.8, return_stats=True,
                                          guidance=guidance, guidance_scale=0.5, exclude=v // 2, backend="cpu")
        unmasked = mdsample.unmask_step(logits, x, mask_id=0, reveal_prob=0.6, seed=3, backend="cpu")
        return res, unmasked

    base, base_unmask = _under("base", run)
    for isa in isas[1:]:
        res, unmask = _under(isa, run)
        assert int((res.tokens != base.tokens).sum()) + int((unmask != base_unmask).sum()) <= 2, isa
        for field in ("logprob", "prob", "margin", "entropy"):
            torch.testing.assert_close(getattr(res, field), getattr(base, field), rtol=1e-5, atol=1e-5)


def test_likelihood_ops_agree_across_builds(isas):
    if len(isas) < 2:
        pytest.skip("one CPU build runs here")
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 50, (16, 300), generator=g)
    t = torch.rand(16, generator=g, dtype=torch.float64)
    logits = (torch.randn(16, 300, 1000, generator=g) * 2).to(torch.bfloat16)

    def run():
        times = mdsample.lowdisc_timesteps(64, mode="stratified", seed=4, offset=torch.arange(3), backend="cpu")
        xt = mdsample.forward_mask(x0, t, mask_id=999, seed=5, backend="cpu")
        exact = mdsample.forward_mask(x0, count=torch.full((16,), 40), mask_id=999, seed=5, backend="cpu")
        return times, xt, exact, mdsample.masked_nll(logits, x0, xt, mask_id=999, backend="cpu")

    base = _under("base", run)
    for isa in isas[1:]:
        got = _under(isa, run)
        for a, b in zip(got[:3], base[:3]):
            assert torch.equal(a, b), isa
        torch.testing.assert_close(got[3], base[3], rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("value,want,warns", [("base", "base", False), ("avx512-typo", None, True)])
def test_environment_variable_caps_the_pick(isas, value, want, warns):
    """MDSAMPLE_CPU_ISA is read once, at import; a name it does not know warns and means the best build."""
    import os
    import subprocess
    import sys

    probe = ("import warnings; warnings.simplefilter('always')\n"
             "with warnings.catch_warnings(record=True) as w:\n"
             "    from mdsample import _backends\n"
             "print(_backends.compiled_module().cpu_isa(), any('MDSAMPLE_CPU_ISA' in str(x.message) for x in w))")
    out = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "MDSAMPLE_CPU_ISA": value},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    isa, warned = out.stdout.split()
    assert isa == (want or isas[-1]) and warned == str(warns)
