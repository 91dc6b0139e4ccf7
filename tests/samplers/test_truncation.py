"""Top-p / top-k truncation (samplers/truncation.py) against a sorted Python list, both nucleus rules."""
import math

import pytest
import torch

from mdsample.samplers.truncation import _nucleus, truncate
from sampler_oracles import reference_truncate

V, MASK = 12, 11
RULES = ["dream", "bd3lm"]


def _near_boundary(row, T, top_p):
    r = row.clone()
    r[MASK] = -math.inf
    cum = torch.softmax(r / T if T > 0 else r, 0).sort(descending=True).values.cumsum(0)
    return bool(((cum - top_p).abs() < 1e-5).any())


@pytest.mark.parametrize("rule", RULES)
def test_truncate_matches_a_sorted_list_with_ties(rule):
    g = torch.Generator().manual_seed(0)
    logits = torch.randint(-3, 3, (40, V), generator=g).double() * 0.7  # many ties
    logits[:20] += torch.randn(20, V, generator=g, dtype=torch.float64)
    for T in (0.0, 0.5, 1.3):
        for top_p, top_k in ((0.3, None), (0.77, None), (0.95, 4), (None, 1), (None, 5), (0.6, 2)):
            got = truncate(logits, temperature=T, top_p=top_p, top_k=top_k, exclude=MASK, rule=rule)
            for r in range(logits.shape[0]):
                want = reference_truncate(logits[r], T, top_p, top_k, MASK, rule)
                if top_p is not None:  # well posed only away from exact float boundaries
                    assert not _near_boundary(logits[r], T, top_p)
                assert torch.equal(torch.isinf(got[r]), torch.isinf(want)), (T, top_p, top_k, r)
                assert torch.equal(got[r][~torch.isinf(got[r])], logits[r][~torch.isinf(want)])


def test_the_rules_differ_by_the_crossing_token():
    """Dream keeps the token whose mass crosses p, BD3-LM drops it (unless it is the first)."""
    row = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.2)]])
    dream = torch.isfinite(truncate(row, temperature=1.0, top_p=0.6, top_k=None, rule="dream"))
    bd3lm = torch.isfinite(truncate(row, temperature=1.0, top_p=0.6, top_k=None, rule="bd3lm"))
    assert dream.tolist() == [[True, True, False]] and bd3lm.tolist() == [[True, False, False]]
    first = torch.isfinite(truncate(row, temperature=1.0, top_p=0.4, top_k=None, rule="bd3lm"))
    assert first.tolist() == [[True, False, False]]


@pytest.mark.parametrize("rule", RULES)
def test_nucleus_search_widens_to_the_full_sort_set(rule):
    """The top-k search starts small and widens only where the nucleus is not inside yet: any start gives
    the full sort's set (flat rows need several widenings; tied rows exercise the boundary rule)."""
    g = torch.Generator().manual_seed(3)
    x = torch.cat([torch.randn(30, 700, generator=g) * 0.3,                      # flat: a wide nucleus
                   torch.randn(30, 700, generator=g) * 8,                        # peaked
                   torch.randint(-2, 2, (30, 700), generator=g).float()])         # ties
    for top_p in (0.5, 0.9):
        full = _nucleus(x, top_p, first=700, rule=rule)
        for first in (1, 3, 20):
            assert torch.equal(_nucleus(x, top_p, first=first, rule=rule), full), (top_p, first)
        for r in (0, 31, 65, 89):  # and the full sort's set is the sorted-list rule
            want = torch.isfinite(reference_truncate(x[r].double(), 0.0, top_p, None, None, rule))
            assert torch.equal(full[r], want), (top_p, r)


@pytest.mark.parametrize("rule", RULES)
def test_sync_free_nucleus_is_the_same_set(rule):
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(20, 300, generator=g) * s for s in (0.3, 3.0)] +
                  [torch.randint(-2, 2, (20, 300), generator=g).float()])
    for top_p in (0.3, 0.9):
        assert torch.equal(_nucleus(x, top_p, sync_free=True, rule=rule), _nucleus(x, top_p, rule=rule))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("sync_free", [False, True])
def test_top_p_at_a_temperature_where_l_over_t_overflows_keeps_the_argmax(rule, sync_free):
    """At T = 1e-40, l / T is +-inf for every nonzero logit; the softmax was NaN and the set kept the lowest id.
    softmax(l / T) is then the argmax's (shared equally by tied maxima: Dream's rule keeps both at p = 0.9,
    BD3-LM's drops the second, whose mass crosses p)."""
    logits = torch.tensor([[1.0, 3.0, 2.0, -1.0], [1.0, 3.0, 3.0, -1.0], [-2.0, -1.0, -3.0, -4.0]])
    want = torch.tensor([[False, True, False, False], [False, True, rule == "dream", False],
                         [False, True, False, False]])
    for T in (1e-40, 1e-37, 2.0**-149):
        got = truncate(logits, temperature=T, top_p=0.9, top_k=None, rule=rule, sync_free=sync_free)
        assert torch.equal(torch.isfinite(got), want), T
        assert torch.equal(got[want], logits[want])
