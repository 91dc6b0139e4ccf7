"""Zipf-shaped G-test (DESIGN.md §4): a language-model-like distribution, the tail binned
by decade of probability.

p(rank r) proportional to (r + 2.7)^-1.1, the ranks scattered over the vocabulary by
a fixed permutation. Compiled backends use V = 50000 (25 chunks; probabilities from
~0.1 down to ~1e-6), the reference V = 6000. Tokens expecting >= 20 draws are bins of
their own, every other token falls in the bin of its probability decade (decades
expecting fewer than 20 draws merge upwards). A sampler that over- or under-samples
a range of probabilities moves whole decade bins.
"""
from __future__ import annotations

import pytest
import torch

from ._stat_helpers import (
    assert_g_test,
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
    """G-test of the head tokens and the decade-binned tail against the exact softmax of the
    stored logits, alpha 1e-6. False alarm <= 1e-6 per dtype (asymptotic chi-square)."""
    if backend == "reference" and dtype != torch.float32:
        pytest.skip("the float64 reference reads every dtype the same way; fp32 covers it")
    vocab, n = per_backend(backend, cpu=(50000, 1 << 16), reference=(6000, 8000), triton=None)
    row = zipf_row(vocab, dtype)
    probs = softmax64(row)
    counts = sample_counts(row, n, backend=backend, seed=31337, offset=vocab)
    labels, names = decade_bins(probs, n)
    assert sum(1 for s in names if s.startswith("p in")) >= 2, "design error: the tail should span decades"
    _, c, p = group_counts(counts, probs, labels)
    assert_g_test(c, p, names, what=f"Zipf V={vocab} ({dtype}, {backend})")
