"""Independence of draws with different counters (DESIGN.md §3).

Vocabulary: V = 4096 (two chunks) with the mass on 8 tokens, four per chunk, one in
each 512-token quarter of the chunk (the rest at logit -30, total mass 1e-10). A
token's bin is ``token // 512``: the chunk is decided by the first random number of
the draw (words 0-1), the quarter by the second (words 2-3), so a correlation in
either shows up in the 8 x 8 contingency table of two draws.

Pairs compared, for the same rows: offset k vs k + 1 and k + 2^32, seed s vs s + 1 and
s + 2^32, position p vs p + 2^32, and neighbouring positions 2i vs 2i + 1. A counter
word dropped or truncated makes the two draws equal, which the chi-square sees at once.
Then the two Philox domains: unmask_step's reveal coin against the token draw at the
same (seed, offset, position), and reveal coins at offsets k and k + 1.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ._stat_helpers import (
    assert_independent,
    contingency,
    per_backend,
    rows_per_call,
    sample,
    unmask,
)

V = 4096
HOT = [100, 700, 1300, 1900, 2148, 2748, 3348, 3948]  # token // 512 = 0 .. 7
SEED, OFFSET = 0x5EED_1234, 1_000_003


def hot_row() -> torch.Tensor:
    row = torch.full((V,), -30.0)
    row[HOT] = torch.log(torch.tensor([5.0, 7.0, 6.0, 10.0, 8.0, 9.0, 6.0, 8.0]))
    return row


def draw(positions: torch.Tensor, backend: str, *, seed=SEED, offset=OFFSET, exclude=None) -> np.ndarray:
    row = hot_row()
    out = []
    step = rows_per_call(backend, V)
    for s in range(0, len(positions), step):
        pos = positions[s:s + step]
        out.append(sample(
            row.expand(len(pos), V), seed=seed, offset=offset, positions=pos, exclude=exclude, backend=backend
        ))
    return (torch.cat(out) // 512).numpy()


PAIRS = {
    "offset+1": dict(offset=OFFSET + 1),
    "offset+2^32": dict(offset=OFFSET + 2**32),
    "seed+1": dict(seed=SEED + 1),
    "seed+2^32": dict(seed=SEED + 2**32),
    "position+2^32": dict(position_shift=2**32),
}


def sizes(backend):
    return per_backend(backend, cpu=1 << 15, reference=2048, triton=None)


@pytest.mark.parametrize("pair", list(PAIRS), ids=list(PAIRS))
def test_counters_independent(backend, pair):
    """Draws that differ in one counter part are independent: 8 x 8 chi-square (49 df),
    alpha 1e-6. False alarm <= 1e-6 per pair (asymptotic)."""
    n = sizes(backend)
    positions = torch.arange(n, dtype=torch.int64) * 3 + 5
    a = draw(positions, backend)
    kw = dict(PAIRS[pair])
    shift = kw.pop("position_shift", 0)
    b = draw(positions + shift, backend, **kw)
    assert not np.array_equal(a, b), f"{pair}: the two draws are identical"
    assert_independent(contingency(a, b, 8, 8), what=f"{pair} ({backend})")


def test_neighbouring_positions_independent(backend):
    """Tokens at positions 2i and 2i + 1 of one call are independent (8 x 8 chi-square,
    alpha 1e-6). False alarm <= 1e-6 (asymptotic)."""
    n = sizes(backend)
    t = draw(torch.arange(2 * n, dtype=torch.int64), backend)
    assert_independent(contingency(t[0::2], t[1::2], 8, 8), what=f"positions 2i vs 2i+1 ({backend})")


def test_reveal_coin_independent_of_token_draw(backend):
    """The reveal coin of unmask_step (domain REVEAL) and the token draw at the same
    (seed, offset, position) (domain TOKEN) are independent: 2 x 8 chi-square on
    (revealed, token bin of sample_categorical), and 2 x 2 on the coins at offsets k and
    k + 1; alpha 1e-6 each. False alarm <= 2e-6 (asymptotic)."""
    n = sizes(backend)
    mask_id = 0  # a token at logit -30: the draws are those of sample_categorical(exclude=0)
    positions = torch.arange(n, dtype=torch.int64) * 2 + 1
    row = hot_row()

    def coins(offset):
        out = []
        step = rows_per_call(backend, V)
        for s in range(0, n, step):
            pos = positions[s:s + step]
            x = torch.full((len(pos),), mask_id, dtype=torch.int64)
            new = unmask(
                row.expand(len(pos), V), x, mask_id=mask_id, reveal_prob=0.5, seed=SEED, offset=offset,
                positions=pos, backend=backend,
            )
            out.append(new != mask_id)
        return torch.cat(out).numpy().astype(np.int64)

    revealed = coins(OFFSET)
    tokens = draw(positions, backend, exclude=mask_id)
    assert_independent(contingency(revealed, tokens, 2, 8), what=f"reveal coin vs token draw ({backend})")
    assert_independent(contingency(revealed, coins(OFFSET + 1), 2, 2), what=f"reveal coins at offsets k, k+1 ({backend})")
