"""End of sequence in block-wise samplers: which rows are finished, and the EOS fill.

Blocks are final once complete, so a row whose finished blocks hold an EOS token has its
text up to that EOS fixed: later blocks can only change what follows it. Samplers given an
``eos_id`` stop forwarding such rows and fill every position after the first EOS with EOS,
which leaves the text up to the first EOS exactly as a full run would produce it.
"""
from __future__ import annotations

import torch

__all__ = ["finished", "fill_after_eos"]


def finished(x: torch.Tensor, start: int, end: int, eos_id: int) -> torch.Tensor:
    """Bool ``[B]``: rows of ``x`` (int64 ``[B, L]``) with an EOS in ``[start, end)``."""
    return (x[:, start:end] == eos_id).any(1)


def fill_after_eos(x: torch.Tensor, eos_id: int, start: int = 0) -> torch.Tensor:
    """``x`` (int64 ``[B, L]``) with every position after the first EOS at or past ``start`` set to EOS (new tensor)."""
    hit = x[:, start:] == eos_id
    after = (hit.cumsum(1) - hit.long()) > 0  # strictly after the first EOS
    out = x.clone()
    out[:, start:] = x[:, start:].masked_fill(after, eos_id)
    return out
