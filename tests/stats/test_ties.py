"""Exact ties at logit magnitudes 0, 20 and 40 (DESIGN.md §4).

Eight tokens share the largest logit ``L`` exactly; they sit on both sides of
both chunk boundaries of a V = 4100 vocabulary (indices 2047 | 2048 and
4095 | 4096), so the level-1 pick among chunks and the level-2 pick inside a
chunk both have to split ties evenly. The other 4092 tokens have logits in
[L - 10, L - 5] and hold ~41% of the mass. At temperature 0 the lowest tied
index must come back, whatever the seed.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from ._stat_helpers import (
    ALPHA,
    assert_g_test,
    group_counts,
    per_backend,
    sample,
    sample_counts,
    softmax64,
)

V = 4100
TIED = [7, 100, 2046, 2047, 2048, 2049, 4095, 4099]
LEVELS = [0.0, 20.0, 40.0]
DTYPES = [torch.float32, torch.bfloat16]


def tie_row(level: float, dtype: torch.dtype, tied=TIED, vocab: int = V) -> torch.Tensor:
    """Logits ``[vocab]``: ``level`` exactly at ``tied``, the rest in [level - 10, level - 5]."""
    gen = torch.Generator().manual_seed(11)
    row = level - 5.0 - 5.0 * torch.rand(vocab, generator=gen, dtype=torch.float64)
    row[list(tied)] = level
    row = row.to(dtype)
    assert int((row == row.max()).sum()) == len(tied), "dtype rounding made extra ties"
    return row


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("level", LEVELS)
def test_exact_ties_uniform(backend, level, dtype):
    """Tied tokens are equally likely, and every bin has its exact frequency.

    Two checks at alpha = 1e-6 each: a chi-square test that draws of the 8 tied tokens are
    uniform among them (7 df), and a G-test of 11 bins (each tied token, and the other tokens
    of each of the 3 chunks) against the exact softmax (10 df).
    False alarm <= 2 x 1e-6 = 2e-6 per case (asymptotic chi-square).
    """
    n = per_backend(
        backend, cpu=1 << 16, reference=4000,
        triton=160 if (level == 40.0 and dtype == torch.float32) else None,
    )
    row = tie_row(level, dtype)
    probs = softmax64(row)
    counts = sample_counts(row, n, backend=backend, seed=77, offset=int(level) + (dtype == torch.bfloat16))

    tied = counts[TIED]
    assert tied.sum() * 1.0 / len(TIED) >= 5, "too few tied draws for the chi-square test"
    chi2, p_uniform = stats.chisquare(tied)
    assert p_uniform >= ALPHA, f"tied tokens not uniform (L={level}, {dtype}): counts {tied.tolist()}, p={p_uniform:.2e}"

    labels = np.array([len(TIED) + i // 2048 for i in range(V)])  # others: bin per chunk
    for b, t in enumerate(TIED):
        labels[t] = b
    _, c, p = group_counts(counts, probs, labels)
    names = [f"tied token {t}" for t in TIED] + [f"other tokens of chunk {k}" for k in range(3)]
    if n * p.min() < 5:  # tiny interpreter runs: pool the non-tied bins
        c = np.concatenate([c[: len(TIED)], [c[len(TIED):].sum()]])
        p = np.concatenate([p[: len(TIED)], [p[len(TIED):].sum()]])
        names = names[: len(TIED)] + ["other tokens"]
    assert_g_test(c, p, names, what=f"ties at L={level} ({dtype}, {backend})")


TIE_SETS = {
    "across-chunks": (TIED, 7),
    "later-chunks": ([2049, 2050, 4099], 2049),
    "whole-vocab": (list(range(V)), 0),
}


@pytest.mark.parametrize("ties", list(TIE_SETS), ids=list(TIE_SETS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("level", LEVELS)
def test_ties_temperature_zero_lowest_index(backend, level, dtype, ties):
    """Temperature 0 returns the lowest tied index for every seed, offset and position.

    Deterministic: false alarm 0.
    """
    tied, lowest = TIE_SETS[ties]
    rows = per_backend(backend, cpu=512, reference=64, triton=4)
    if ties == "whole-vocab":
        row = torch.full((V,), level, dtype=dtype)
    else:
        row = tie_row(level, dtype, tied)
    gen = torch.Generator().manual_seed(5)
    seed = torch.randint(-(2**62), 2**62, (rows,), generator=gen)
    offset = torch.randint(0, 2**62, (rows,), generator=gen)
    positions = torch.randint(0, 2**48, (rows,), generator=gen)
    tokens = sample(
        row.expand(rows, V), temperature=0.0, seed=seed, offset=offset, positions=positions, backend=backend
    )
    assert tokens.tolist() == [lowest] * rows, f"argmax with ties should be {lowest}: got {sorted(set(tokens.tolist()))}"
