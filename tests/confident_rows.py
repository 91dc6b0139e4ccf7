"""Rows whose top token is near-certain, p = 1 - tail for tails down to 1e-13, and what they give
(tests/softmax_truth.py: a float64 log_softmax is 0.1% off at the 1e-13 tail).

A float32 sum that holds the top token's own e^0 = 1 rounds a tail under its ulp (6e-8) away and
blurs one of 1e-4 by a few percent (fp32 adds of 2048 small terms to 1): the top token's log p, its
entropy and its masked NLL came out as 0 or some percent off on the cpu and cuda kernels. Kept out
of the sum, they are good to fp32 rounding: ``RTOL`` relative per row.
"""
import math

import torch
from softmax_truth import softmax_truth

RTOL = 1e-5
TAILS = [1e-3, 1e-5, 1e-7, 1e-13]


def confident_rows(vocab: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """[len(TAILS), vocab] logits of ``dtype``: token 0 holds score 0 and the others share ``tail``."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for tail in TAILS:
        rest = torch.randn(vocab - 1, generator=g, dtype=torch.float64) * 0.5
        rest = rest - torch.logsumexp(rest, 0) + math.log(tail)
        rows.append(torch.cat([torch.zeros(1, dtype=torch.float64), rest]))
    return torch.stack(rows).to(dtype)


def truth(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 (log p of token 0, entropy) per row of the logits as stored."""
    logp, _, entropy = softmax_truth(logits, torch.zeros(len(logits), dtype=torch.long))
    return logp, entropy


def assert_close_per_row(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    rel = ((got.double().cpu() - want) / want).abs()
    assert bool((rel <= RTOL).all()), f"{what}: relative errors {rel.tolist()} for tails {TAILS}"
