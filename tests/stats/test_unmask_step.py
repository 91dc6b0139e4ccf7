"""unmask_step (DESIGN.md §5): reveal frequency, SUBS exclusion of the mask, carry-over.

Sequences [B, L] over V = 64 tokens; the mask token holds most of the mass
(logit +8 against N(0, 1)), so a draw that forgot to exclude it would return it
almost always. Each sequence has its own reveal probability ([B, 1] tensor)
cycling through 0, 0.01, 0.3, 0.5, 0.97 and 1.
"""
from __future__ import annotations

import numpy as np
import torch

from ._stat_helpers import (
    MIN_EXPECTED,
    assert_g_test,
    assert_z,
    assert_tokens,
    group_counts,
    quantile_bins,
    per_backend,
    softmax64,
    unmask,
)

V = 64
MASK = 37
L = 256
PROBS = [0.0, 0.01, 0.3, 0.5, 0.97, 1.0]


def unmask_row() -> torch.Tensor:
    gen = torch.Generator().manual_seed(64)
    row = torch.randn(V, generator=gen)
    row[MASK] = 8.0
    return row


def test_unmask_step(backend):
    """Per reveal probability r in (0, 1): the revealed fraction of masked positions is
    Binomial(n_r, r) (z-test at the |z| = 5 level; 4 values); the revealed tokens follow
    softmax without the mask (G-test on 32 equal-mass bins, alpha 1e-6, and every token's
    count, exact binomial with Bonferroni, 1e-6 in all). Deterministic: r = 0 reveals
    nothing, r = 1 everything; unmasked positions are unchanged; x is not modified; no
    revealed token is the mask. False alarm <= 4 x 5.7e-7 + 2e-6 = 4.3e-6.
    """
    b = per_backend(backend, cpu=1536, reference=96, triton=2)
    gen = torch.Generator().manual_seed(2025)
    row = unmask_row()
    masked = torch.rand(b, L, generator=gen) < 0.75
    x = torch.where(masked, MASK, torch.randint(0, V, (b, L), generator=gen))
    x[~masked & (x == MASK)] = 0
    x_before = x.clone()
    reveal_prob = torch.tensor(PROBS, dtype=torch.float64).repeat(b // len(PROBS) + 1)[:b].view(b, 1)
    positions = torch.arange(b * L, dtype=torch.int64).view(b, L) + 10**9

    new, revealed = unmask(
        row.expand(b, L, V), x, mask_id=MASK, reveal_prob=reveal_prob, seed=8080, offset=17,
        positions=positions, return_revealed=True, backend=backend,
    )
    assert torch.equal(x, x_before), "unmask_step modified x"
    assert new.shape == (b, L) and new.dtype == torch.int64
    assert torch.equal(new[~masked], x[~masked]), "an unmasked position changed"
    assert bool((new[masked & ~revealed] == MASK).all())
    assert int(new.min()) >= 0 and int(new.max()) < V
    assert torch.equal(revealed, masked & (new != MASK))
    r = reveal_prob.expand(b, L)
    assert not bool(revealed[r == 0.0].any()), "reveal_prob 0 revealed a position"
    assert bool(revealed[(r == 1.0) & masked].all()), "reveal_prob 1 left a masked position (or drew the mask)"

    # Reveal frequencies.
    inner = [p for p in PROBS if 0.0 < p < 1.0]
    n_masked = [int(masked[r == p].sum()) for p in inner]
    hits = [int(revealed[r == p].sum()) for p in inner]
    assert sum(n_masked) > 0
    for p, m, k in zip(inner, n_masked, hits):
        if m == 0:  # tiny interpreter runs cover only the first reveal probabilities
            continue
        assert_z([f"reveal_prob {p}"], [k], m, [p], what=f"reveal frequency ({backend})")

    # Revealed tokens: softmax without the mask.
    tokens = new[revealed].numpy()
    probs = softmax64(row, exclude=MASK)
    counts = np.bincount(tokens, minlength=V)
    assert counts[MASK] == 0
    assert_tokens(counts, len(tokens), probs, what=f"revealed tokens ({backend})")
    if len(tokens) >= 2 * MIN_EXPECTED:  # at least two bins (not so in tiny interpreter runs)
        _, c, pb = group_counts(counts, probs, quantile_bins(probs, len(tokens)))
        assert_g_test(c, pb, what=f"revealed tokens ({backend})")


def test_unmask_step_scalar_prob_and_greedy(backend):
    """A float reveal_prob and temperature 0: every revealed token is the argmax without the
    mask (deterministic), and the reveal fraction is Binomial (z-test at the |z| = 5 level).
    False alarm <= 5.7e-7."""
    b = per_backend(backend, cpu=256, reference=32, triton=2)
    row = unmask_row()
    x = torch.full((b, L), MASK, dtype=torch.int64)
    new = unmask(
        row.expand(b, L, V), x, mask_id=MASK, reveal_prob=0.25, temperature=0.0, seed=3, offset=4, backend=backend
    )
    allowed = row.clone()
    allowed[MASK] = -float("inf")
    best = int(allowed.argmax())
    revealed = new != MASK
    assert bool((new[revealed] == best).all()), "a greedy reveal is not the argmax without the mask"
    n = b * L
    assert_z(["reveal_prob 0.25"], [int(revealed.sum())], n, [0.25], what=f"scalar reveal_prob ({backend})")
