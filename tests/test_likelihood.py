"""mdsample.likelihood / perplexity on oracle models whose likelihood is known exactly.

Oracles (tests/likelihood_oracles.py) return the exact conditional marginals of a known
joint, so the ELBO they give is the true log-likelihood:

- ``JointOracle``: an enumerable Dirichlet joint over 3^8 sequences; the exact
  expectation of every estimator (including the ``eps`` truncation of the Bernoulli
  form) comes from enumerating all masked subsets.
- ``MarkovOracle``: a 16-token Markov chain with sharp transitions, so the per-token NLL
  falls from ~log 16 with no context to under a nat with full context, like text.
  ``log p(x)`` is exact; the count estimator is unbiased for it and the Bernoulli one up
  to its ``O(eps)`` truncation.

Statistics: each sequence is replicated R times; rows are independent replicates
(their Philox keys differ by row), so the spread of the R estimates is the
estimator's true standard deviation. Unbiasedness: ``|mean - truth| <= 4 sd / sqrt(R)``
(false alarm ~6e-5 per check for a normal mean; the estimates are sums of many draws).
"""
import math

import pytest
import torch
import torch.nn.functional as F
from likelihood_oracles import HeadJoint, JointOracle, MarkovOracle

import mdsample
from mdsample.samplers.likelihood import MODES

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """The oracles make many small torch ops: one thread is ~2x faster than two on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


JOINT = JointOracle()
SEQ = [0, 1, 1, 2, 1, 0, 1, 0]
MARKOV = MarkovOracle()
CHAIN = MARKOV.sample(1, 32, seed=3)


def _replicated(model, seq, reps, **kw):
    x = torch.as_tensor(seq).view(1, -1).repeat(reps, 1)
    return mdsample.likelihood(model, x, mask_id=model.mask_id, batch_size=4096, **kw)


def _assert_unbiased(est, truth, what):
    vals = -est.log_likelihood
    sd = float(vals.std())
    mean = float(vals.mean())
    assert abs(mean - truth) <= 4 * sd / math.sqrt(len(vals)), f"{what}: mean {mean:.4f} vs {truth:.4f} (sd {sd:.3f})"


def test_progress_bar(capsys):
    """A bar over the model calls: ceil(B * mc_samples / batch_size) of them; the estimate is unchanged."""
    x = MARKOV.sample(3, 16, seed=10)
    kw = dict(mask_id=MARKOV.mask_id, mc_samples=5, batch_size=4)
    est = mdsample.likelihood(MARKOV, x, progress=True, **kw)
    err = capsys.readouterr().err
    assert "likelihood" in err and "4/4" in err and "saved" not in err
    assert torch.equal(est.log_likelihood, mdsample.likelihood(MARKOV, x, **kw).log_likelihood)
    with pytest.raises(TypeError, match="progress"):
        mdsample.likelihood(MARKOV, x, progress="yes", **kw)


@pytest.mark.parametrize("mode", MODES)
def test_unbiased_on_enumerable_joint(mode):
    bern, count = JOINT.expected(SEQ)
    exact = -JOINT.log_prob(SEQ)
    assert abs(count - exact) < 1e-9  # the count-form ELBO is log p(x) for exact conditionals
    assert abs(bern - exact) < 0.01 * exact  # the Bernoulli form only misses its eps ends
    _assert_unbiased(_replicated(JOINT, SEQ, 400, mc_samples=8, mode=mode, seed=1), bern, f"bernoulli {mode}")
    _assert_unbiased(_replicated(JOINT, SEQ, 400, mc_samples=8, mode=mode, masking="count", seed=1), count,
                     f"count {mode}")


def test_unbiased_with_prompt():
    """Conditional likelihood log p(answer | prompt); the prompt is never masked."""
    bern, count = JOINT.expected(SEQ, prompt=3)
    assert abs(count + JOINT.log_prob(SEQ, prompt=3)) < 1e-9
    est = _replicated(JOINT, SEQ, 400, mc_samples=8, prompt_len=3, seed=2)
    assert bool((est.num_tokens == 5).all())
    _assert_unbiased(est, bern, "bernoulli prompt")
    _assert_unbiased(_replicated(JOINT, SEQ, 400, mc_samples=8, prompt_len=3, masking="count", seed=2), count,
                     "count prompt")
    # Per-sequence prompt lengths on the Markov chain (count form: exact).
    x = CHAIN.repeat(300, 1)
    prompt = torch.tensor([0, 5, 20]).repeat(100)
    est = mdsample.likelihood(MARKOV, x, mask_id=MARKOV.mask_id, prompt_len=prompt, mc_samples=8,
                              masking="count", batch_size=4096, seed=3)
    for p in (0, 5, 20):
        rows = prompt == p
        truth = -float(MARKOV.log_prob(CHAIN, prompt=p))
        vals = -est.log_likelihood[rows]
        assert abs(float(vals.mean()) - truth) <= 4 * float(vals.std()) / math.sqrt(int(rows.sum())), p


@pytest.fixture(scope="module")
def markov_runs():
    """R = 300 replicates of a 32-token chain, 16 draws each, for every (masking, mode)."""
    runs = {}
    for masking in ("bernoulli", "count"):
        for mode in MODES:
            runs[masking, mode] = _replicated(MARKOV, CHAIN[0], 300, mc_samples=16, mode=mode, masking=masking,
                                              seed=5)
    return runs


def test_markov_unbiased(markov_runs):
    exact = -float(MARKOV.log_prob(CHAIN))
    for (masking, mode), est in markov_runs.items():
        # The Bernoulli form leaves out t < eps and m > 1 - eps: at most ~2e-3 * L * log(16) nats here.
        slack = 0.0 if masking == "count" else 2e-3 * 32 * math.log(16)
        vals = -est.log_likelihood
        bound = 4 * float(vals.std()) / math.sqrt(len(vals)) + slack
        assert abs(float(vals.mean()) - exact) <= bound, (masking, mode)


def test_low_discrepancy_variance(markov_runs):
    """At equal compute (16 forward passes per sequence) the lattices cut the variance.

    Measured here (R = 300): Bernoulli stratified ~0.33x and shifted ~0.4x iid; count
    stratified ~0.12x and shifted ~0.2x; count stratified vs Bernoulli iid ~0.1x.
    Bounds leave room for the ~12% sampling error of a variance ratio at R = 300.
    """
    var = {key: float(est.log_likelihood.var()) for key, est in markov_runs.items()}
    ratios = {key: var[key] / var[key[0], "iid"] for key in var}
    print("variance ratios vs iid:", {f"{k[0]}/{k[1]}": round(v, 3) for k, v in ratios.items()})
    assert ratios["bernoulli", "stratified"] <= 0.5
    assert ratios["bernoulli", "shifted"] <= 0.6
    assert ratios["count", "stratified"] <= 0.5
    assert ratios["count", "shifted"] <= 0.5
    assert var["count", "stratified"] <= 0.5 * var["bernoulli", "iid"]


def test_stderr_is_calibrated(markov_runs):
    """The reported standard error (RMS over replicates) is within [0.84, 1.5] of the true spread (their SD).

    Deterministic at seed 5 (ratios 0.965-1.279). The bounds come from the ratio's sampling distribution, measured
    over seeds 100-199 of the same runs: per (masking, mode) mean 0.968-1.204, sd 0.036-0.052 (the sd of the R =
    300 replicates' spread, ~4%, dominates). The lattices' successive-difference stderr is conservative except
    on the shifted lattice (means 0.968 Bernoulli, 0.985 count); 0.84 is 3.1 sd below the lowest mean and >= 3.9 sd
    below the others, and 1.5 is 6 sd above the count stratified mean (1.204, the most conservative): a false
    alarm ~1e-3 per seed choice (normal tails of the measured spread), nearly all from Bernoulli shifted. A stderr
    20% too small (x0.8) fails: it takes five of the six seeded ratios below 0.84 (iid 1.03 / 1.02 to 0.82 / 0.81).
    """
    for key, est in markov_runs.items():
        ratio = float(est.stderr.pow(2).mean().sqrt()) / float(est.log_likelihood.std())
        assert 0.84 <= ratio <= 1.5, (key, ratio)


def _closed_form_weight(schedule, t, eps):
    """``(1 - eps) m'(t) / m(t)`` written out (likelihood takes m' by autograd), with c = 1 - schedule.eps:

    - LogLinear, ``m = c t``: ``(1 - eps) / t``;
    - Cosine, ``m = sin(pi c t / 2)``: ``(1 - eps) (pi c / 2) cot(pi c t / 2)``;
    - MDLMCosine, ``m = c (1 - cos(pi t / 2))``: ``(1 - eps) (pi / 2) sin(pi t / 2) / (1 - cos(pi t / 2))``.
    """
    c = 1.0 - schedule.eps
    if isinstance(schedule, mdsample.samplers.LogLinear):
        rate = 1.0 / t
    elif isinstance(schedule, mdsample.samplers.Cosine):
        rate = (math.pi * c / 2) / torch.tan(math.pi * c * t / 2)
    elif isinstance(schedule, mdsample.samplers.MDLMCosine):
        rate = (math.pi / 2) * torch.sin(math.pi * t / 2) / (1 - torch.cos(math.pi * t / 2))
    else:
        raise AssertionError(f"no closed form for {schedule!r}")
    return (1.0 - eps) * rate


def _naive(model, x, *, mc_samples, masking="bernoulli", mode="stratified", seed=0, prompt_len=0, cfg_scale=0.0,
           subs=True, eps=1e-3, schedule="loglinear"):
    """The estimator written as a plain loop: same Philox draws, full logits, float64 log_softmax over the
    vocabulary without the mask token (``subs``) or with it, closed-form schedule weights."""
    b, length = x.shape
    mask_id = model.mask_id
    answer = torch.arange(length) >= prompt_len
    n_ans = int(answer.sum())
    offsets = torch.arange(b)
    sched = mdsample.samplers.get_schedule(schedule)
    if masking == "bernoulli":
        t = mdsample.lowdisc_timesteps(mc_samples, eps=eps, mode=mode, seed=seed, offset=offsets)
        weight = _closed_form_weight(sched, t, eps)
    else:
        unit = mdsample.lowdisc_timesteps(mc_samples, eps=0.0, mode=mode, seed=seed, offset=offsets)
        k = torch.clamp(1 + torch.floor(n_ans * unit), max=n_ans)
        weight = n_ans / k
    values = torch.zeros(b, mc_samples, dtype=torch.float64)
    positions = torch.arange(b).view(b, 1) * length + torch.arange(length)
    for j in range(mc_samples):
        keys = dict(mask_id=mask_id, maskable=answer, seed=seed, offset=j, positions=positions)
        if masking == "bernoulli":
            xt = mdsample.forward_mask(x, t[:, j], schedule=sched, **keys)
        else:
            xt = mdsample.forward_mask(x, count=k[:, j].long(), **keys)
        logits = model(xt).double()
        if cfg_scale:
            uncond = model(torch.where(answer, xt, mask_id)).double()
            logits = uncond + (cfg_scale + 1) * (logits - uncond)
        if subs:
            logits[..., mask_id] = -math.inf
        logp = F.log_softmax(logits, -1).gather(-1, x.unsqueeze(-1)).squeeze(-1)
        values[:, j] = torch.where(xt == mask_id, -logp, 0.0).sum(1) * weight[:, j]
    return -values.mean(1)


@pytest.mark.parametrize("masking", ["bernoulli", "count"])
def test_matches_plain_loop(masking):
    x = MARKOV.sample(6, 24, seed=4)
    for kw in [dict(), dict(mode="shifted", prompt_len=4), dict(mode="iid", subs=False)]:
        got = mdsample.likelihood(MARKOV, x, mask_id=MARKOV.mask_id, mc_samples=5, batch_size=7, masking=masking,
                                  **kw)
        want = _naive(MARKOV, x, mc_samples=5, masking=masking, **kw)
        torch.testing.assert_close(got.log_likelihood, want, rtol=1e-5, atol=1e-4)


def test_schedules_match_plain_loop():
    """The cosine schedules end to end: forward masking at m(t) and the closed-form weights of _closed_form_weight."""
    x = MARKOV.sample(4, 16, seed=5)
    for schedule in ("cosine", "cosine-mdlm"):
        got = mdsample.likelihood(MARKOV, x, mask_id=MARKOV.mask_id, mc_samples=5, batch_size=7, schedule=schedule)
        want = _naive(MARKOV, x, mc_samples=5, schedule=schedule)
        torch.testing.assert_close(got.log_likelihood, want, rtol=1e-5, atol=1e-4, msg=schedule)


def test_time_weight_closed_forms():
    """_time_weight (autograd of m'/m) against the closed forms, deterministically at fixed t, also with a schedule
    eps that is not the likelihood's (the cosine's c = 1 - schedule.eps does not cancel; the others' does). The
    test_schedules check of the same weights is statistical (~5%); this one fails beyond 1e-9 relative."""
    from mdsample.samplers.likelihood import _time_weight

    t = torch.tensor([1e-3, 0.01, 0.1, 0.37, 0.5, 0.9, 1.0], dtype=torch.float64)
    S = mdsample.samplers
    for schedule in (S.LogLinear(), S.LogLinear(eps=0.0), S.Cosine(), S.Cosine(eps=0.05), S.MDLMCosine(),
                     S.MDLMCosine(eps=0.05)):
        for eps in (1e-3, 0.02):
            got = _time_weight(schedule, t, eps)
            torch.testing.assert_close(got, _closed_form_weight(schedule, t, eps), rtol=1e-9, atol=0,
                                       msg=f"{schedule!r} eps={eps}")
    # the closed forms themselves at points worked by hand (eps = schedule eps = 1e-3, so w = c = 1 - 1e-3)
    w = c = 1 - 1e-3
    assert math.isclose(float(_time_weight(S.LogLinear(), t[3:4], 1e-3)), w / 0.37, rel_tol=1e-12)
    # MDLM cosine at t = 1: sin(pi/2) / (1 - cos(pi/2)) = 1
    assert math.isclose(float(_time_weight(S.MDLMCosine(), t[6:7], 1e-3)), w * math.pi / 2, rel_tol=1e-12)
    want = w * (math.pi * c / 2) / math.tan(math.pi * c / 4)  # cosine at t = 1/2
    assert math.isclose(float(_time_weight(S.Cosine(), t[4:5], 1e-3)), want, rel_tol=1e-12)


class _FiniteMask(torch.nn.Module):
    """A tiny bidirectional model (as tests/test_chain_rule_likelihood.py's Mixer) whose mask logit is finite and
    takes half the probability mass, so the subs choice moves the NLLs; with a hidden/head split, so both scoring
    paths are covered."""

    V, mask_id = 12, 11

    def __init__(self, seed=0, d=8, max_len=32):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.randn(self.V, d, generator=g, dtype=torch.float64)
        self.pos = torch.randn(max_len, d, generator=g, dtype=torch.float64)
        self.out = torch.randn(d, self.V, generator=g, dtype=torch.float64) * 2
        self.out[:, self.mask_id] = 0.0
        self.vocab_size = self.V

    def hidden(self, x, attention_mask=None):
        e = self.emb[x]
        return torch.tanh(e + self.pos[: x.shape[1]] + e.mean(1, keepdim=True))

    def head(self, h):
        logits = h @ self.out
        # finite, and half the mass without subs: subs=False costs log 2 per scored token
        logits[..., self.mask_id] = logits[..., : self.mask_id].logsumexp(-1)
        return logits

    def forward(self, x, attention_mask=None):
        return self.head(self.hidden(x))


@pytest.mark.parametrize("masking", ["bernoulli", "count"])
def test_subs_matches_plain_loop_with_a_finite_mask_logit(masking):
    """subs=True normalises over the vocabulary without the mask token, subs=False with it: both equal the plain
    float64 loop, through the head (masked rows only) and the full-logits path. The oracles' mask logit is -inf,
    where subs changes nothing; here the two differ by log 2 per scored token, far above the tolerance."""
    model = _FiniteMask()
    x = torch.randint(0, model.mask_id, (5, 10), generator=torch.Generator().manual_seed(1))
    kw = dict(mc_samples=4, masking=masking, mode="shifted", prompt_len=2, seed=3)
    want = {subs: _naive(model, x, subs=subs, **kw) for subs in (True, False)}
    assert bool(((want[True] - want[False]) > 1.0).all())  # the mask token takes probability mass without subs
    for fn in (model, model.forward):  # hidden/head, and a bare callable: full logits scored by masked_nll
        for subs in (True, False):
            got = mdsample.likelihood(fn, x, mask_id=model.mask_id, batch_size=6, subs=subs, **kw)
            torch.testing.assert_close(got.log_likelihood, want[subs], rtol=1e-5, atol=1e-4,
                                       msg=f"{getattr(fn, '__name__', 'head')} subs={subs}")


def test_cfg_matches_plain_loop():
    x = MARKOV.sample(4, 16, seed=6)
    got = mdsample.likelihood(MARKOV, x, mask_id=MARKOV.mask_id, mc_samples=4, prompt_len=6, cfg_scale=1.5,
                              batch_size=5)
    want = _naive(MARKOV, x, mc_samples=4, prompt_len=6, cfg_scale=1.5)
    torch.testing.assert_close(got.log_likelihood, want, rtol=1e-5, atol=1e-4)


def test_head_path_scores_only_masked_rows():
    model = HeadJoint()
    x = torch.tensor(SEQ).repeat(10, 1)
    full = mdsample.likelihood(JOINT, x, mask_id=3, mc_samples=6, prompt_len=2, batch_size=8, seed=9)
    rows = mdsample.likelihood(model, x, mask_id=3, mc_samples=6, prompt_len=2, batch_size=8, seed=9)
    torch.testing.assert_close(rows.log_likelihood, full.log_likelihood, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rows.stderr, full.stderr, rtol=1e-6, atol=1e-6)
    # Only masked answer rows went through the head: far fewer than the 10 * 6 * 8 positions.
    assert 0 < model.head_rows < 10 * 6 * 6


def test_backends_agree(fast_backend, device):
    x = MARKOV.sample(3, 12, seed=7).to(device)
    kw = dict(mask_id=MARKOV.mask_id, mc_samples=3, batch_size=4, prompt_len=2)
    for masking in ("bernoulli", "count"):
        got = mdsample.likelihood(MARKOV, x, masking=masking, backend=fast_backend, **kw)
        ref = mdsample.likelihood(MARKOV, x, masking=masking, backend="reference", **kw)
        torch.testing.assert_close(got.log_likelihood, ref.log_likelihood, rtol=1e-5, atol=1e-4)


def test_batch_invariance():
    """Row b's estimate depends on (seed, b, its tokens): a prefix of the batch, or another batch_size, agrees."""
    x = MARKOV.sample(6, 20, seed=8)
    kw = dict(mask_id=MARKOV.mask_id, mc_samples=5, seed=4)
    full = mdsample.likelihood(MARKOV, x, batch_size=7, **kw)
    head = mdsample.likelihood(MARKOV, x[:2], batch_size=3, **kw)
    torch.testing.assert_close(head.log_likelihood, full.log_likelihood[:2], rtol=1e-6, atol=1e-6)
    assert not torch.equal(mdsample.likelihood(MARKOV, x, batch_size=7, **{**kw, "seed": 5}).log_likelihood,
                           full.log_likelihood)


def test_seed_sets_the_draws_so_a_corpus_loop_needs_one_per_call():
    """Row b of every call with the same seed uses the same times and masks the same positions, whatever its tokens:
    two batches of a corpus scored with the default seed get correlated errors, so their stderrs do not add as
    independent (the docstrings tell a corpus loop to pass a distinct seed per call). Another seed: fresh draws."""
    masks = []

    def recording(x):
        masks.append(x == MARKOV.mask_id)
        return MARKOV(x)

    def draws(x, **kw):
        masks.clear()
        est = mdsample.likelihood(recording, x, mask_id=MARKOV.mask_id, mc_samples=4, batch_size=64, **kw)
        return torch.cat(masks), est

    one, two = MARKOV.sample(3, 16, seed=11), MARKOV.sample(3, 16, seed=12)
    assert not torch.equal(one, two)
    for masking in ("bernoulli", "count"):
        same, est = draws(one, masking=masking)
        assert 0 < int(same.sum()) < same.numel()
        again, est_again = draws(one, masking=masking)
        assert torch.equal(again, same) and torch.equal(est_again.log_likelihood, est.log_likelihood)
        assert torch.equal(draws(two, masking=masking)[0], same)  # another batch, default seed: the same draws
        assert not torch.equal(draws(two, masking=masking, seed=1)[0], same)
        assert not torch.equal(draws(one, masking=masking, seed=1)[1].log_likelihood, est.log_likelihood)


def test_time_conditioned_model_gets_sigma():
    seen = []

    def model(x, *, sigma):
        seen.append(sigma)
        return MARKOV(x)

    x = MARKOV.sample(2, 10, seed=9)
    est = mdsample.likelihood(model, x, mask_id=MARKOV.mask_id, mc_samples=4, time_conditioned=True, batch_size=8)
    t = mdsample.lowdisc_timesteps(4, offset=torch.arange(2)).reshape(-1)
    want = -torch.log1p(-(1 - 1e-3) * t)
    torch.testing.assert_close(torch.cat(seen).double(), want, rtol=1e-6, atol=0)
    torch.testing.assert_close(est.log_likelihood, mdsample.likelihood(MARKOV, x, mask_id=MARKOV.mask_id,
                                                                       mc_samples=4, batch_size=8).log_likelihood)


def test_schedules():
    """Any schedule gives an unbiased estimate (weights m'/m by autograd): loglinear without eps, both cosines."""
    bern, _ = JOINT.expected(SEQ, sched_eps=0.0)
    est = _replicated(JOINT, SEQ, 400, mc_samples=8, schedule=mdsample.samplers.LogLinear(eps=0.0), seed=3)
    _assert_unbiased(est, bern, "loglinear eps=0")
    for schedule in (mdsample.samplers.Cosine(), mdsample.samplers.MDLMCosine()):
        bern, _ = JOINT.expected(SEQ, schedule=schedule)
        _assert_unbiased(_replicated(JOINT, SEQ, 400, mc_samples=8, schedule=schedule, seed=3), bern, repr(schedule))


def test_inference_mode():
    """Evaluation harnesses (SMDM's) run under torch.inference_mode; the weights' autograd derivative still works."""
    kw = dict(mask_id=MARKOV.mask_id, mc_samples=4, schedule="cosine", seed=1)
    want = mdsample.likelihood(MARKOV, CHAIN, **kw).log_likelihood
    with torch.inference_mode():
        got = mdsample.likelihood(MARKOV, CHAIN, **kw).log_likelihood
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_perplexity():
    x = MARKOV.sample(4, 16, seed=10)
    kw = dict(mask_id=MARKOV.mask_id, mc_samples=8, masking="count")
    est = mdsample.likelihood(MARKOV, x, **kw)
    ppl = mdsample.perplexity(MARKOV, x, **kw)
    nll = -float(est.log_likelihood.sum()) / 64
    assert math.isclose(ppl.nll_per_token, nll, rel_tol=1e-12)
    assert math.isclose(ppl.perplexity, math.exp(nll), rel_tol=1e-12)
    assert 0 < ppl.stderr < ppl.perplexity
    # The delta method computed independently: the gradient g of exp(-sum(ll) / tokens) in the per-sequence
    # estimates by autograd, se = sqrt(sum (g_b se_b)^2) for independent sequences. Sum of se_b instead of the
    # root of the sum of squares would be ~1.9x larger with these 4 sequences' stderrs.
    ll = est.log_likelihood.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.exp(-ll.sum() / 64), ll)
    want = float((g * est.stderr).pow(2).sum().sqrt())
    assert math.isclose(ppl.stderr, want, rel_tol=1e-9), (ppl.stderr, want)
    assert float(est.stderr.sum() / est.stderr.pow(2).sum().sqrt()) > 1.5  # the two formulas are far apart here


@pytest.mark.parametrize(
    "kwargs,exc,word",
    [
        (dict(x=torch.zeros(2, 3)), TypeError, "x"),
        (dict(x=torch.zeros(6, dtype=torch.long)), ValueError, "x"),
        (dict(x=torch.full((2, 4), 16)), ValueError, "mask_id"),
        (dict(mask_id=None, model=lambda x: MARKOV(x)), ValueError, "mask_id"),
        (dict(mc_samples=0), ValueError, "mc_samples"),
        (dict(mc_samples=2.0), TypeError, "mc_samples"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(mode="sobol"), ValueError, "mode"),
        (dict(masking="random"), ValueError, "masking"),
        (dict(prompt_len=4), ValueError, "prompt_len"),
        (dict(prompt_len=torch.tensor([1, 2, 3])), ValueError, "prompt_len"),
        (dict(prompt_len=1.5), TypeError, "prompt_len"),
        (dict(cfg_scale=1.0), ValueError, "prompt_len"),
        (dict(cfg_scale=-1.0, prompt_len=1), ValueError, "cfg_scale"),
        (dict(schedule="quadratic"), ValueError, "schedule"),
        (dict(eps=0.0), ValueError, "eps"),
        (dict(eps=1.0), ValueError, "eps"),
        (dict(masking="count", time_conditioned=True), ValueError, "time_conditioned"),
        (dict(subs=1), TypeError, "subs"),
        (dict(model=3), TypeError, "model"),
    ],
)
def test_bad_input(kwargs, exc, word):
    args = dict(model=MARKOV, x=MARKOV.sample(2, 4, seed=0), mask_id=MARKOV.mask_id, mc_samples=2)
    args.update(kwargs)
    with pytest.raises(exc, match=word):
        mdsample.likelihood(args.pop("model"), args.pop("x"), **args)


class _HFStyle:
    """MARKOV behind an HF-style wrapper: the mask id declared only as ``config.mask_token_id`` (Dream's
    spelling), and no ``mask_id`` attribute."""

    def __init__(self):
        self.config = type("Config", (), {"mask_token_id": MARKOV.mask_id, "vocab_size": MARKOV.V})()

    def __call__(self, x, **kw):
        return MARKOV(x, **kw)


@pytest.mark.parametrize("estimator", ["likelihood", "chain_rule_likelihood"])
def test_mask_id_defaults_to_the_declared_one(estimator):
    """Both estimators take the mask id a model declares in any of the spellings the samplers read; before,
    ``config.mask_token_id`` was refused here while the samplers used it."""
    fn = getattr(mdsample, estimator)
    x, kw = MARKOV.sample(2, 6, seed=1), dict(prompt_len=2, batch_size=8)
    if estimator == "likelihood":
        kw.update(mc_samples=3, seed=5)
    want = fn(MARKOV, x, mask_id=MARKOV.mask_id, **kw).log_likelihood
    torch.testing.assert_close(fn(_HFStyle(), x, **kw).log_likelihood, want, rtol=0, atol=0)


def _assert_compat_is_the_preset(call, *, masking, sign, slack=0.0, **preset):
    """A compat harness call ``call(seed) -> float`` on CHAIN's first row, prompt 5: at seed 11 exactly
    mdsample.likelihood's preset (shifted lattice, subs off, ``masking``, the ``preset`` options), times ``sign``; over 300 independent
    keys its mean is ``sign * log p(answer | prompt)`` within 4 standard errors (P(false alarm) ~ 6e-5) plus
    ``slack``; with seed None the key comes from torch's RNG, so reseeding torch repeats it. Returns the
    seed-11 value."""
    got = call(11)
    want = mdsample.likelihood(MARKOV, CHAIN, prompt_len=5, mc_samples=8, batch_size=4, mode="shifted",
                               masking=masking, subs=False, mask_id=MARKOV.mask_id, seed=11, **preset)
    assert isinstance(got, float) and got == sign * float(want.log_likelihood[0])
    vals = torch.tensor([call(s) for s in range(300)])
    truth = sign * float(MARKOV.log_prob(CHAIN, prompt=5)[0])
    assert abs(float(vals.mean()) - truth) <= 4 * float(vals.std()) / math.sqrt(len(vals)) + slack
    torch.manual_seed(2)
    a = call(None)
    torch.manual_seed(2)
    assert a == call(None)
    return got


def test_llada_get_log_likelihood_compat():
    """LLaDA's signature and estimator: mdsample.likelihood's LLaDA preset, unbiased for log p(answer | prompt)."""
    from mdsample.compat import llada

    prompt, answer = CHAIN[0, :5], CHAIN[0, 5:]
    kw = dict(mc_num=8, batch_size=4, mask_id=MARKOV.mask_id)
    got = _assert_compat_is_the_preset(lambda seed: llada.get_log_likelihood(MARKOV, prompt, answer, seed=seed, **kw),
                                       masking="count", sign=1.0)
    with pytest.raises(ValueError, match="answer"):
        llada.get_log_likelihood(MARKOV, prompt, answer[:0], **kw)
    with pytest.raises(ValueError, match="prompt"):
        llada.get_log_likelihood(MARKOV, CHAIN, answer, **kw)
    # whole batches, as upstream: mc_num 10 with batch_size 4 draws 8
    assert llada.get_log_likelihood(MARKOV, prompt, answer, seed=11, **{**kw, "mc_num": 10}) == got
    with pytest.raises(ValueError, match="mc_num .* batch_size"):
        llada.get_log_likelihood(MARKOV, prompt, answer, **{**kw, "mc_num": 3})


def test_smdm_eval_target_nll_mc_compat(monkeypatch):
    """SMDM's harness call: mdsample.likelihood's SMDM preset on prefix + target (mask probability t itself, as
    SMDM's: a loglinear schedule without its own eps), and about the exact NLL (up to the truncation of the
    time integral below eps: slack 2 eps nats per token, as test_padded_batch_...)."""
    from mdsample.compat import smdm

    prefix, target = CHAIN[0, :5], CHAIN[0, 5:]
    kw = dict(mc_num=8, batch_size=4, mask_id=MARKOV.mask_id)
    _assert_compat_is_the_preset(lambda seed: smdm.eval_target_nll_mc(MARKOV, prefix, target, seed=seed, **kw),
                                 masking="bernoulli", sign=-1.0, slack=2e-3 * 27 * math.log(16),
                                 schedule=mdsample.samplers.LogLinear(eps=0.0))
    with pytest.raises(ValueError, match="mc_num .* batch_size"):
        smdm.eval_target_nll_mc(MARKOV, prefix, target, **{**kw, "mc_num": 6})
    with pytest.raises(ValueError, match="cfg must"):
        smdm.eval_target_nll_mc(MARKOV, prefix, target, cfg=-1.0, **kw)
    # SMDM masks with probability t up to 1: a schedule with its own eps (mask rate 1 - eps at t = 1) differs
    # from it only on the rare uniform in ((1 - eps) t, t), which the seeded comparison above may never draw.
    seen = []
    monkeypatch.setattr(smdm, "likelihood", lambda *a, **k: seen.append(k["schedule"]) or mdsample.likelihood(*a, **k))
    smdm.eval_target_nll_mc(MARKOV, prefix, target, seed=0, **kw)
    t = torch.tensor([0.25, 1.0], dtype=torch.float64)
    torch.testing.assert_close(seen[0].mask_prob(t), t, rtol=0, atol=1e-15)


def test_padded_batch_of_different_lengths():
    """Right-padded chains of lengths 20 and 32 in one batch: padding is neither masked nor scored, and the
    estimates are unbiased for each chain's own log-likelihood (4 standard errors over 300 replicates each)."""
    short = MARKOV.sample(1, 20, seed=9)
    x = torch.zeros(2, 32, dtype=torch.long)
    x[0, :20], x[1] = short[0], CHAIN[0]
    am = torch.ones(2, 32, dtype=torch.long)
    am[0, 20:] = 0
    reps = 300
    for masking in ("count", "bernoulli"):
        est = mdsample.likelihood(MARKOV, x.repeat(reps, 1), attention_mask=am.repeat(reps, 1), mask_id=MARKOV.mask_id,
                                  mc_samples=4, masking=masking, batch_size=4096, seed=3)
        assert est.num_tokens[:2].tolist() == [20, 32]
        slack = 0.0 if masking == "count" else 2e-3 * 32 * math.log(16)
        for row, truth in ((0, -float(MARKOV.log_prob(short)[0])), (1, -float(MARKOV.log_prob(CHAIN)[0]))):
            vals = -est.log_likelihood[row::2]
            assert abs(float(vals.mean()) - truth) <= 4 * float(vals.std()) / math.sqrt(reps) + slack, (masking, row)
    unpadded = mdsample.likelihood(MARKOV, x, mask_id=MARKOV.mask_id, mc_samples=4, masking="count", seed=3)
    assert int(unpadded.num_tokens[0]) == 32  # without the mask the pads would be scored
    with pytest.raises(ValueError, match="attention_mask"):
        mdsample.likelihood(MARKOV, x, attention_mask=am[:1], mask_id=MARKOV.mask_id)
    with pytest.raises(TypeError, match="attention_mask must be bool or integer"):  # 0.5 read as a real token
        mdsample.likelihood(MARKOV, x, attention_mask=am * 0.5, mask_id=MARKOV.mask_id)
    with pytest.raises(ValueError, match=r"attention_mask must hold only 0 \(padding\) and 1"):
        mdsample.likelihood(MARKOV, x, attention_mask=am * 2, mask_id=MARKOV.mask_id)
    with pytest.raises(ValueError, match="real answer token"):
        mdsample.likelihood(MARKOV, x, attention_mask=am, prompt_len=torch.tensor([25, 3]), mask_id=MARKOV.mask_id)


def test_prompt_len_as_a_list_says_to_pass_a_tensor():
    with pytest.raises(TypeError, match="integer tensor"):
        mdsample.likelihood(MARKOV, MARKOV.sample(2, 6, seed=0), prompt_len=[1, 2], mask_id=MARKOV.mask_id,
                            mc_samples=2)
