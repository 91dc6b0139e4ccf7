"""BD3-LM's low-entropy check: degenerate (repetitive) samples are rejected or cut.

After each block whose end lies past ``window`` tokens, BD3-LM computes the unigram entropy
(nats) of the last ``window`` (256) tokens of the sample so far and, below the threshold (4),
either rejects the sample and draws a new one (fixed length) or ends it before that window
(variable length). Rejection changes the output law to the model's law conditioned on no
check failing; a row's retries must therefore be independent draws, keyed by the attempt.
"""
from __future__ import annotations

import torch

from ._random import seed_value

__all__ = ["unigram_entropy", "attempt_seed"]

_GOLDEN = 0x9E3779B97F4A7C15  # odd: attempt keys seed + a * _GOLDEN (mod 2^64) are distinct for a < 2^64


def unigram_entropy(tokens: torch.Tensor) -> torch.Tensor:
    """Float64 ``[B]``: the entropy in nats of each row's token frequencies (int64 ``[B, W]``, W >= 1).

    ``-sum_v (c_v / W) log(c_v / W)`` over the distinct tokens of a row (upstream: ``torch.unique``
    counts and ``torch.special.entr`` in float32; here float64, one sort for the whole batch).
    """
    s = tokens.sort(dim=1).values
    starts = torch.ones_like(s, dtype=torch.bool)
    starts[:, 1:] = s[:, 1:] != s[:, :-1]
    run = starts.long().cumsum(1) - 1                      # index of each token's run in its row
    counts = torch.zeros(s.shape, dtype=torch.float64, device=s.device).scatter_add_(
        1, run, torch.ones_like(s, dtype=torch.float64))
    p = counts / s.shape[1]
    return torch.special.entr(p).sum(1)                    # entr(0) = 0: unused run slots add nothing


def attempt_seed(seed: int, attempt: int) -> int:
    """The Philox key of a row's ``attempt``-th draw (attempt 0: ``seed`` itself), as signed int64."""
    return seed_value("seed", (seed + attempt * _GOLDEN) % 2**64)
