"""Zipf-shaped G-test (DESIGN.md §4): a language-model-like distribution, the tail binned
by decade of probability.

p(rank r) proportional to (r + 2.7)^-1.1, the ranks scattered over the vocabulary by
a fixed permutation. Compiled backends use V = 50000 (25 chunks; probabilities from
0.057 down to 1.2e-6), the reference V = 6000. Tokens of p >= 1e-2 are bins of their
own, every other token falls in the bin of its probability decade (decades expecting
fewer than 20 draws merge upwards): ~10 bins, so a sampler that over- or under-samples
a range of probabilities moves whole bins and is not diluted over thousands of degrees
of freedom. A per-token check (Bonferroni over all tokens) catches single-token errors.
"""
from __future__ import annotations

import pytest
import torch

from ._stat_helpers import (
    assert_g_test,
    assert_tokens,
    decade_bins,
    group_counts,
    per_backend,
    sample_counts,
    softmax64,
)


def zipf_row(vocab: int, dtype: torch.dtype, exponent: float = 1.1, shift: float = 2.7) -> torch.Tensor:
    gen = torch.Generator().manual_seed(vocab)
    ranks = torch.randperm(vocab, generator=gen).to(torch.float64)
    return (-exponent * torch.log(ranks + shift)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_zipf_g_test(backend, dtype):
    """G-test of the head tokens (p >= 1e-2, a bin each) and the tail binned by decade of
    probability against the exact softmax of the stored logits (alpha 1e-6), and every
    token's count (exact binomial, Bonferroni, 1e-6 in all). False alarm <= 2e-6 per dtype."""
    if backend == "reference" and dtype != torch.float32:
        pytest.skip("the float64 reference reads every dtype the same way; fp32 covers it")
    vocab, n = per_backend(backend, cpu=(50000, 1 << 16), reference=(6000, 8000), triton=None)
    row = zipf_row(vocab, dtype)
    probs = softmax64(row)
    counts = sample_counts(row, n, backend=backend, seed=31337, offset=vocab)
    labels, names = decade_bins(probs, n)
    assert sum(1 for s in names if s.startswith("p in")) >= 3, "design error: the tail should span decades"
    what = f"Zipf V={vocab} ({dtype}, {backend})"
    _, c, p = group_counts(counts, probs, labels)
    assert_g_test(c, p, names, what=what)
    assert_tokens(counts, n, probs, what=what)
