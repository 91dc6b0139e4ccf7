"""Temperature (DESIGN.md §4, §5): frequencies follow softmax(l / T); T = 0 is argmax.

The vocabulary (V = 2100) spans two chunks. Temperature is given as a per-row
tensor that alternates T and 0, so one call also checks that rows at
temperature 0 and rows at T do not leak into each other.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ._stat_helpers import (
    assert_g_test,
    assert_tokens,
    group_counts,
    quantile_bins,
    per_backend,
    rows_per_call,
    sample,
    softmax64,
)

V = 2100


def temperature_row() -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    return (2.5 * torch.randn(V, generator=gen, dtype=torch.float64)).to(torch.float32)


def lowest_argmax(rows: torch.Tensor) -> torch.Tensor:
    """Lowest index of the maximum of each row ``[N, V]`` (exact, float64)."""
    g = rows.to(torch.float64)
    idx = torch.arange(g.shape[-1]).expand_as(g)
    return torch.where(g == g.amax(-1, keepdim=True), idx, g.shape[-1]).amin(-1)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_frequencies(backend, temperature):
    """Rows at temperature T match softmax(l / T): G-test on 32 equal-mass bins of tokens
    sorted by probability (alpha 1e-6) and every token's count (exact binomial, Bonferroni,
    1e-6 in all); rows at T = 0 in the same call give the argmax (deterministic).

    False alarm <= 2e-6 per temperature.
    """
    n = per_backend(backend, cpu=1 << 18, reference=8000, triton=None)
    row = temperature_row()
    probs = softmax64(row, temperature)
    argmax = int(lowest_argmax(row[None])[0])

    counts = np.zeros(V, dtype=np.int64)
    step = rows_per_call(backend, V)
    for start in range(0, n, step):
        b = min(step, n - start)
        temp = torch.where(torch.arange(b) % 2 == 0, temperature, 0.0).to(torch.float32)
        tok = sample(
            row.expand(b, V), temperature=temp, seed=99, offset=int(temperature * 10),
            positions=torch.arange(start, start + b), backend=backend,
        )
        assert bool((tok[1::2] == argmax).all()), "a temperature-0 row did not return the argmax"
        hot = tok[0::2]
        assert int(hot.min()) >= 0 and int(hot.max()) < V
        counts += np.bincount(hot.numpy(), minlength=V)
    n_hot = int(counts.sum())
    what = f"temperature {temperature} ({backend})"
    _, c, p = group_counts(counts, probs, quantile_bins(probs, n_hot))
    assert_g_test(c, p, what=what)
    assert_tokens(counts, n_hot, probs, what=what)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_temperature_zero_is_argmax_and_ignores_seed(backend, dtype):
    """T = 0 gives the lowest-index argmax of each row (random rows with planted exact ties),
    identical for two different seeds / offsets. Deterministic: false alarm 0."""
    rows = per_backend(backend, cpu=256, reference=64, triton=8)
    gen = torch.Generator().manual_seed(21)
    vocab = 3000
    logits = (3.0 * torch.randn(rows, vocab, generator=gen)).to(dtype)
    # plant exact ties of the maximum in half of the rows, some across the chunk boundary
    for r in range(0, rows, 2):
        j = torch.randint(0, vocab, (3,), generator=gen)
        logits[r, j] = logits[r].max()
    expected = lowest_argmax(logits)
    a = sample(logits, temperature=0.0, seed=1, offset=0, backend=backend)
    b = sample(
        logits, temperature=torch.zeros(rows), seed=torch.arange(rows) * 7919 + 3, offset=12345, backend=backend
    )
    assert torch.equal(a, expected), f"T=0 is not the lowest-index argmax in rows {torch.nonzero(a != expected).flatten().tolist()}"
    assert torch.equal(a, b), "T=0 depends on the seed / offset"
