"""Duo's posterior step against the float64 formula, and sample_duo against its exact distribution.

Chi-square tests at false-alarm rate ALPHA = 1e-3 each, fixed seeds.
"""
import itertools
from collections import defaultdict

import pytest
import torch

import mdsample
from mdsample.samplers import duo_posterior_step, get_schedule, time_grid
from sampler_oracles import chi_square_pvalue, count_rows

ALPHA = 1e-3


def posterior_f64(xhat, xt, alpha_t, alpha_s):
    """ALGORITHMS.md's Duo posterior q(. | x_t) over V tokens, float64 [V], from x_hat [V]."""
    xhat = xhat.to(torch.float64)
    vocab = xhat.shape[0]
    a_ts = alpha_t / alpha_s
    onehot = torch.zeros(vocab, dtype=torch.float64)
    onehot[xt] = 1.0
    num = (alpha_t * vocab * xhat * onehot + (a_ts - alpha_t) * onehot + (alpha_s - alpha_t) * xhat
           + (1 - a_ts) * (1 - alpha_s) / vocab)
    return num / (alpha_t * vocab * xhat[xt] + 1 - alpha_t)


@pytest.mark.parametrize("alpha_t,alpha_s,temperature,xt", [
    (0.3, 0.6, 1.0, 2),
    (0.05, 0.2, 0.7, 0),
    (0.9, 1.0, 1.0, 4),   # the ancestral noise-removal step
    (0.4, 0.5, 0.0, 1),   # x_hat one-hot at the argmax
])
def test_posterior_step_matches_float64_formula(alpha_t, alpha_s, temperature, xt):
    g = torch.Generator().manual_seed(1)
    row = torch.randn(5, generator=g, dtype=torch.float32) * 2
    n = 20000
    logits = row.expand(n, 5)  # rows read in place, no copy
    x = torch.full((n,), xt)
    out = duo_posterior_step(logits, x, alpha_t=alpha_t, alpha_s=alpha_s, temperature=temperature, seed=4)
    if temperature > 0:
        xhat = torch.softmax(row.double() / temperature, -1)
    else:
        xhat = torch.nn.functional.one_hot(row.argmax(), 5).double()
    q = posterior_f64(xhat, xt, alpha_t, alpha_s)
    assert abs(float(q.sum()) - 1) < 1e-12
    counts = {(v,): int((out == v).sum()) for v in range(5)}
    assert chi_square_pvalue(counts, {(v,): float(q[v]) for v in range(5)}) > ALPHA


class TableModel:
    """A deterministic uniform-state denoiser: logits [L, V] looked up by the whole input state."""

    def __init__(self, vocab=3, length=2, seed=0, time_conditioned=False):
        g = torch.Generator().manual_seed(seed)
        self.V, self.L = vocab, length
        self.vocab_size = vocab
        self.table = torch.randn(vocab ** length, length, vocab, generator=g, dtype=torch.float64) * 1.5
        self.powers = torch.tensor([vocab ** (length - 1 - i) for i in range(length)])
        self.tc, self.sigmas, self.calls = time_conditioned, [], []

    def __call__(self, x, **kw):
        assert ("sigma" in kw) == self.tc
        if self.tc:
            self.sigmas.append(kw["sigma"])
        self.calls.append(x.shape[0])
        return self.table[(x * self.powers).sum(1)]


def exact_duo(model, steps, schedule, eps, noise_removal="greedy"):
    sched = get_schedule(schedule)
    grid = time_grid(steps, eps)
    states = list(itertools.product(range(model.V), repeat=model.L))
    dist = {s: 1 / len(states) for s in states}
    for k in range(steps):
        a_t, a_s = float(sched.alpha(grid[k])), float(sched.alpha(grid[k + 1]))
        new = defaultdict(float)
        for s, p in dist.items():
            xhat = torch.softmax(model.table[model.index(s)], -1)
            qs = [posterior_f64(xhat[i], s[i], a_t, a_s) for i in range(model.L)]
            for t in states:
                new[t] += p * float(torch.prod(torch.stack([qs[i][t[i]] for i in range(model.L)])))
        dist = dict(new)
    if noise_removal == "greedy":
        out = defaultdict(float)
        for s, p in dist.items():
            out[tuple(model.table[model.index(s)].argmax(-1).tolist())] += p
        dist = dict(out)
    return dist


TableModel.index = lambda self, s: sum(a * self.V ** (self.L - 1 - i) for i, a in enumerate(s))


@pytest.mark.parametrize("schedule,noise_removal,tc", [
    ("loglinear", "greedy", False),
    ("cosine", "none", True),
])
def test_sample_duo_matches_exact_distribution(schedule, noise_removal, tc):
    model = TableModel(time_conditioned=tc)
    n, steps = 8000, 3
    x = torch.cat([mdsample.sample_duo(model, batch_size=n // 2, length=2, vocab_size=3, steps=steps,
                                       schedule=schedule, seed=s, noise_removal=noise_removal, time_conditioned=tc)
                   for s in range(2)])
    exact = exact_duo(model, steps, schedule, 1e-5, noise_removal)
    assert chi_square_pvalue(count_rows(x), exact) > ALPHA
    if tc:
        sched = get_schedule(schedule)
        want = sched.sigma(time_grid(steps, 1e-5)[0]).float()
        assert torch.allclose(model.sigmas[0], want.expand(n // 2))


def test_cache_forwards_only_changed_sequences():
    model = TableModel()
    mdsample.sample_duo(model, batch_size=500, length=2, vocab_size=3, steps=40, schedule="loglinear")
    assert model.calls[0] == 500
    # Late steps keep most sequences unchanged: far fewer sequence-forwards than 41 x 500.
    assert sum(model.calls) < 0.6 * 41 * 500


def test_reproducible_batch_invariant_and_padded_vocab():
    model = TableModel(vocab=4)  # logits carry one padding column beyond vocab_size = 3
    big = mdsample.sample_duo(model, batch_size=40, length=2, vocab_size=3, steps=4, schedule="loglinear", seed=2)
    assert big.shape == (40, 2) and bool(((big >= 0) & (big < 3)).all())
    small = mdsample.sample_duo(model, batch_size=6, length=2, vocab_size=3, steps=4, schedule="loglinear", seed=2)
    assert torch.equal(big[:6], small)


@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(vocab_size=0), ValueError, "vocab_size"),
    (dict(vocab_size=9), ValueError, "vocab_size"),
    (dict(schedule="geometric"), ValueError, "schedule"),
    (dict(steps=-1), ValueError, "steps"),
    (dict(noise_removal="x"), ValueError, "noise_removal"),
    (dict(temperature=-2.0), ValueError, "temperature"),
])
def test_bad_arguments_name_the_argument(kwargs, exc, name):
    args = dict(batch_size=2, length=2, vocab_size=3, steps=2, schedule="loglinear")
    args.update(kwargs)
    with pytest.raises(exc, match=name):
        mdsample.sample_duo(TableModel(), **args)


def test_posterior_step_bad_input():
    logits = torch.randn(4, 5)
    with pytest.raises(ValueError, match="alpha"):
        duo_posterior_step(logits, torch.zeros(4, dtype=torch.long), alpha_t=0.6, alpha_s=0.3)
    with pytest.raises(ValueError, match="x"):
        duo_posterior_step(logits, torch.full((4,), 5), alpha_t=0.3, alpha_s=0.6)
    with pytest.raises(TypeError, match="x"):
        duo_posterior_step(logits, torch.zeros(4), alpha_t=0.3, alpha_s=0.6)
    x = torch.zeros(4, dtype=torch.long)
    for a_t, a_s in ((False, True), ("0.3", "0.6")):  # float() turned them into numbers before the check
        with pytest.raises(TypeError, match="alpha_t must be a real number"):
            duo_posterior_step(logits, x, alpha_t=a_t, alpha_s=a_s)
    with pytest.raises(ValueError, match=r"positions must be an integer tensor of x's shape \(4,\)"):
        duo_posterior_step(logits, x, alpha_t=0.3, alpha_s=0.6, positions=torch.zeros(5, dtype=torch.long))


@pytest.mark.parametrize("bad, message", [(float("nan"), "contains NaN"), (float("inf"), r"contains \+inf"),
                                          (None, "has no finite logit")])
def test_posterior_step_bad_logits_raise(bad, message):
    """A bad row would make x_hat[x_t] NaN and fall to the uniform component unseen: it raises, naming it."""
    logits = torch.randn(2, 3, 5)
    if bad is None:
        logits[1, 2] = float("-inf")
    else:
        logits[1, 2, 3] = bad
    with pytest.raises(ValueError, match=rf"logits\[1, 2\] {message} \(row 5 of 6\)"):
        duo_posterior_step(logits, torch.zeros(2, 3, dtype=torch.long), alpha_t=0.3, alpha_s=0.6, seed=1)


def test_posterior_step_tiny_temperature_is_argmax():
    """T = 1e-38 overflows l / T in float32; it must act as the one-hot x_hat of T = 0, draw for draw."""
    logits = torch.randn(4000, 5, generator=torch.Generator().manual_seed(0)) * 5
    x = torch.randint(0, 5, (4000,), generator=torch.Generator().manual_seed(1))
    kw = dict(alpha_t=0.3, alpha_s=0.6, seed=7, offset=2)
    assert torch.equal(duo_posterior_step(logits, x, temperature=1e-38, **kw),
                       duo_posterior_step(logits, x, temperature=0.0, **kw))
