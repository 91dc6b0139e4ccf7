"""Noise schedules: formulas of MDLM / Duo, inverses, exact reveal probabilities; transfer counts and commit rules."""
import math

import pytest
import torch

from mdsample.samplers import SCHEDULES, LogLinear, Schedule, get_schedule, select, time_grid, transfer_counts

T = torch.linspace(0, 1, 101, dtype=torch.float64)


def test_formulas():
    eps = 1e-3
    assert torch.allclose(get_schedule("loglinear").alpha(T), 1 - (1 - eps) * T)
    assert torch.allclose(get_schedule("cosine").alpha(T), 1 - torch.cos(math.pi / 2 * (1 - (1 - eps) * T)))
    assert torch.allclose(get_schedule("cosine-mdlm").alpha(T), eps + (1 - eps) * torch.cos(math.pi * T / 2))
    ll = get_schedule("loglinear")
    assert torch.allclose(ll.sigma(T), -torch.log1p(-(1 - eps) * T))  # MDLM LogLinearNoise.total_noise


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_inverse_and_reveal_prob(name):
    s = get_schedule(name)
    assert torch.allclose(s.t_for_mask_prob(s.mask_prob(T)), T, atol=1e-9)
    t, u = T[1:], T[:-1]
    want = (s.alpha(u) - s.alpha(t)) / (1 - s.alpha(t))
    assert torch.allclose(s.reveal_prob(t, u), want, rtol=1e-9, atol=1e-12)
    assert float(s.reveal_prob(0.0, 0.0)) == 1.0  # guarded: no division by m_0 = 0 (BD3-LM's defect)


def test_loglinear_reveal_prob_is_exact_near_zero():
    s = LogLinear()
    assert float(s.reveal_prob(2e-5, 1e-5)) == 0.5
    assert float(s.reveal_prob(1e-5, 0.0)) == 1.0


def test_grid_and_bad_schedule():
    g = time_grid(4, 1e-5)
    assert g.dtype == torch.float64 and g[0] == 1 and g[-1] == 1e-5 and len(g) == 5
    with pytest.raises(ValueError, match="schedule"):
        get_schedule("linear")
    with pytest.raises(ValueError, match="eps"):
        LogLinear(eps=1.0)
    assert get_schedule(LogLinear(eps=0.0)).eps == 0.0
    assert isinstance(get_schedule("cosine"), Schedule)


def test_transfer_counts():
    got = transfer_counts(torch.tensor([7, 0, 3]), 3)
    assert got.tolist() == [[3, 2, 2], [0, 0, 0], [1, 1, 1]]
    assert torch.equal(transfer_counts(torch.tensor([[True, False, True]]), 2), torch.tensor([[1, 1]]))


def test_transfer_counts_and_time_grid_check_their_arguments():
    """steps=2.5 gave float counts summing to 5 for 4 masks, a count of 3.7 read as 3, steps=0 a
    ZeroDivisionError; time_grid(0) gave [1.0] and eps=-1 negative times."""
    m = torch.ones(1, 4, dtype=torch.bool)
    for steps, exc in ((2.5, TypeError), (True, TypeError), (0, ValueError), (-2, ValueError)):
        with pytest.raises(exc, match="steps must be"):
            transfer_counts(m, steps)
    for masked in (torch.tensor([3.7]), torch.ones(1, 4, dtype=torch.long), torch.tensor([[[True]]])):
        with pytest.raises(TypeError, match=r"masked must be integer counts \[B\] or a bool mask \[B, L\]"):
            transfer_counts(masked, 2)
    for steps, eps, match in ((0, 1e-3, "steps"), (2.0, 1e-3, "steps"), (3, -1.0, "eps"), (3, 1.0, "eps")):
        with pytest.raises((TypeError, ValueError), match=match):
            time_grid(steps, eps)
    assert time_grid(2, 0.0).tolist() == [1.0, 0.5, 0.0]


def test_select_checks_its_tensors():
    """k=2 gave an AttributeError, a float k=1.5 committed two, an int candidates mask a bare RuntimeError; the
    types and shapes are checked (free: no value is read). k <= 0 commits none, as documented."""
    c = torch.tensor([[0.5, 0.2, 0.9, 0.1]], dtype=torch.float64)
    cand = torch.tensor([[True, True, False, True]])
    assert not select(c, cand, k=torch.tensor([-1])).any()
    for kw, match in ((dict(k=2), "k must be an integer tensor"), (dict(k=torch.tensor([1.5])), "k must be"),
                      (dict(k=torch.tensor([1, 1])), r"k must be an integer tensor \[B=1\]")):
        with pytest.raises(TypeError, match=match):
            select(c, cand, **kw)
    with pytest.raises(TypeError, match="candidates must be a bool tensor of conf's shape"):
        select(c, cand.long(), k=torch.tensor([1]))
    with pytest.raises(TypeError, match="candidates must be a bool tensor of conf's shape"):
        select(c[:, :3], cand, threshold=0.5)
    with pytest.raises(TypeError, match=r"conf must be a float tensor \[B, L\]"):
        select(c[0], cand[0], threshold=0.5)


def test_select_rules():
    conf = torch.tensor([[0.2, 0.9, 0.5, 0.95, 0.5, 0.1]], dtype=torch.float64)
    cand = torch.tensor([[True, True, True, True, True, False]])
    top2 = select(conf, cand, k=torch.tensor([2]))
    assert top2.tolist() == [[False, True, False, True, False, False]]
    tie = select(conf, cand, k=torch.tensor([3]))  # 0.5 twice: the lower position wins
    assert tie.tolist() == [[False, True, True, True, False, False]]
    assert select(conf, cand, threshold=0.96).tolist() == [[False, False, False, True, False, False]]
    assert select(conf, cand, threshold=0.5).tolist() == [[False, True, True, True, True, False]]
    # factor 1: thresholds 1 - 1/(j+1) = 0.667, 0.75, 0.8, ... for j = 2, 3, 4: accepts 0.9, stops at 0.5.
    assert select(conf, cand, factor=1.0).tolist() == [[False, True, False, True, False, False]]
    # Upstream would also commit the last candidate when only it fails; mdsample commits the passing prefix.
    c2 = torch.tensor([[0.99, 0.98, 0.1]], dtype=torch.float64)
    assert select(c2, torch.ones(1, 3, dtype=torch.bool), factor=0.5).tolist() == [[True, True, False]]
    assert not select(conf, torch.zeros_like(cand), threshold=0.0).any()


def _hierarchy_reference(conf, cand, low, high):
    """dInfer's hierarchy rule for one row, position by position (every tie of a run's maximum; the top-1 the
    lowest of its ties)."""
    idx = [i for i in range(len(cand)) if cand[i]]
    if not idx:
        return set()
    take = {max(idx, key=lambda i: (conf[i], -i))}  # the top-1
    run = []
    for i in idx + [None]:
        if run and (i is None or i != run[-1] + 1):
            best = max(conf[j] for j in run)
            if best > low:
                take |= {j for j in run if conf[j] == best}
            run = []
        if i is not None:
            run.append(i)
    if high is not None:
        take |= {i for i in idx if conf[i] > high}
    return take


def test_select_hierarchy():
    conf = torch.tensor([[0.5, 0.3, 0.9, 0.2, 0.6, 0.6, 0.1, 0.95]], dtype=torch.float64)
    cand = torch.tensor([[1, 1, 0, 1, 1, 1, 0, 1]], dtype=torch.bool)
    # runs {0, 1}, {3, 4, 5}, {7}: the best of each above 0.4 (both of the tie 0.6, 0.6), and the top-1
    assert select(conf, cand, low_threshold=0.4)[0].nonzero().flatten().tolist() == [0, 4, 5, 7]
    assert select(conf, cand, low_threshold=0.5)[0].nonzero().flatten().tolist() == [4, 5, 7]  # strict: 0.5 fails
    assert select(conf, cand, low_threshold=0.99)[0].nonzero().flatten().tolist() == [7]  # the top-1 always
    assert select(conf, cand, low_threshold=0.99, threshold=0.3)[0].nonzero().flatten().tolist() == [0, 4, 5, 7]
    assert select(conf, cand, low_threshold=0.99, threshold=0.5)[0].nonzero().flatten().tolist() == [4, 5, 7]
    tied = torch.tensor([[0.7, 0.2, 0.7]], dtype=torch.float64)  # two runs' maxima tie for the top-1
    assert select(tied, torch.tensor([[True, False, True]]), low_threshold=0.9)[0].tolist() == [True, False, False]
    assert not select(conf, torch.zeros_like(cand), low_threshold=0.0).any()
    with pytest.raises(ValueError, match="exactly one of"):
        select(conf, cand, low_threshold=0.4, factor=1.0)
    with pytest.raises(ValueError, match="exactly one of"):
        select(conf, cand, k=torch.tensor([1]), threshold=0.5)
    with pytest.raises(ValueError, match="exactly one of"):
        select(conf, cand)


def test_select_hierarchy_matches_a_row_by_row_reference():
    g = torch.Generator().manual_seed(0)
    conf = torch.randint(0, 6, (64, 12), generator=g).double() / 5  # coarse values: many ties
    cand = torch.rand(64, 12, generator=g) < 0.7
    for low, high in [(0.4, None), (0.3, 0.7), (-1.0, None), (0.9, 0.5)]:
        got = select(conf, cand, low_threshold=low, threshold=high)
        for r in range(64):
            want = _hierarchy_reference(conf[r].tolist(), cand[r].tolist(), low, high)
            assert set(got[r].nonzero().flatten().tolist()) == want, (low, high, r)


def test_select_dinfer_threshold_cutoff():
    conf = torch.tensor([[0.5, 0.5 - 5e-6, 0.3, 0.5 - 2e-5, 0.95]], dtype=torch.float64)
    cand = torch.tensor([[True, True, True, True, False]])
    # Fast-dLLM: the top-1 only; dInfer: also every candidate within 1e-5 of it
    assert select(conf, cand, threshold=0.9).tolist() == [[True, False, False, False, False]]
    assert select(conf, cand, threshold=0.9, near_top=1e-5).tolist() == [[True, True, False, False, False]]
    assert select(conf, cand, threshold=0.3, near_top=1e-5).tolist() == [[True, True, True, True, False]]
    assert not select(conf, torch.zeros_like(cand), threshold=0.0, near_top=1e-5).any()
    for bad in (dict(near_top=1e-5, k=torch.tensor([1])), dict(near_top=-1.0, threshold=0.5),
                dict(near_top=1e-5, threshold=0.5, low_threshold=0.4)):
        with pytest.raises(ValueError, match="near_top"):
            select(conf, cand, **bad)
