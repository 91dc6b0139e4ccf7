"""``exclude`` (DESIGN.md §4): the excluded token is never returned, even when it holds
almost all the mass, and the rest is renormalised exactly.

Cases: the excluded token alone in the last chunk (V = 2049, exclude 2048: that
chunk's weight must become 0), and the excluded token inside the first chunk
(V = 2100, exclude 5), and token 0 (V = 2100: "no exclusion" must not be spelled as id 0). The excluded token has logit +30 (probability 1 - 3e-10
before exclusion); the others are N(0, 1).
"""
from __future__ import annotations

import pytest
import torch

from ._stat_helpers import (
    assert_g_test,
    assert_tokens,
    group_counts,
    quantile_bins,
    per_backend,
    sample,
    sample_counts,
    softmax64,
)

CASES = {"alone-in-last-chunk": (2049, 2048), "inside-first-chunk": (2100, 5), "token-zero": (2100, 0)}


def exclude_row(vocab: int, excluded: int, dtype=torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(vocab)
    row = torch.randn(vocab, generator=gen, dtype=torch.float64)
    row[excluded] = 30.0
    return row.to(dtype)


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_exclude_never_returned_and_renormalised(backend, case):
    """The excluded token never comes back (deterministic check), and the other tokens match
    softmax over them: G-test on 32 equal-mass bins of tokens sorted by probability (alpha
    1e-6) and every token's count (exact binomial, Bonferroni, 1e-6 in all).
    False alarm <= 2e-6 per case."""
    vocab, excluded = CASES[case]
    n = per_backend(backend, cpu=1 << 18, reference=8000, triton=48)
    row = exclude_row(vocab, excluded)
    probs = softmax64(row, exclude=excluded)
    counts = sample_counts(row, n, backend=backend, seed=4242, offset=vocab, exclude=excluded)
    assert counts[excluded] == 0, f"excluded token {excluded} returned {counts[excluded]} times in {n} draws"
    what = f"renormalised distribution without token {excluded} ({backend})"
    _, c, p = group_counts(counts, probs, quantile_bins(probs, n))
    assert_g_test(c, p, what=what)
    assert_tokens(counts, n, probs, what=what)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_exclude_temperature_zero(backend, case, dtype):
    """At T = 0 the argmax skips the excluded token (the lowest index of the next-best value,
    planted as a tie). Deterministic: false alarm 0."""
    vocab, excluded = CASES[case]
    row = exclude_row(vocab, excluded, torch.float64)
    second = row[torch.arange(vocab) != excluded].max()
    row[[1000, 3]] = second + 1.0  # a tie for the best allowed token: 3 must win
    row = row.to(dtype)
    rows = per_backend(backend, cpu=64, reference=16, triton=4)
    tokens = sample(
        row.expand(rows, vocab), temperature=0.0, exclude=excluded, seed=torch.arange(rows), backend=backend
    )
    assert tokens.tolist() == [3] * rows
