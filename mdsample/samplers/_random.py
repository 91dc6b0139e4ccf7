"""Philox-keyed uniforms for the samplers' own random decisions (reveal coins, orders, times).

The token draws go through :func:`mdsample.sample_categorical` / :func:`mdsample.unmask_step`;
the samplers also need a few uniforms that precede any logits (DESIGN.md §6: reveal
decisions before logits). They come from the same counter-based Philox4x32-10 with the
same key/counter layout (DESIGN.md §3), so they depend only on (seed, offset, position,
domain), never on batch size, row order or the torch global RNG.

The reveal coin here is, bit for bit, the coin of ``unmask_step`` (domain REVEAL,
words 0-1, centred 52-bit uniform, revealed iff ``u < p``): a sampler that draws coins
first and then samples only the revealed rows returns the same tokens as
``unmask_step`` on the full logits with the same keys.

Layering note: the public ops do not expose a coin-only / uniform op yet, so this file
calls the Philox of ``mdsample.reference.philox`` (a few integer ops on ``[B, L]``
int64, no logits) directly. It is the only sampler file that reaches below ``ops``.
"""
from __future__ import annotations

import numbers

import torch

from ..reference.philox import DOMAIN_REVEAL, DOMAIN_TIMESTEP, DOMAIN_TOKEN, draw_words, uniform52

__all__ = ["DOMAIN_REVEAL", "DOMAIN_TIMESTEP", "DOMAIN_TOKEN", "seed_value", "uniforms", "reveal_coins"]


def seed_value(name: str, seed) -> int:
    """A Python int seed / offset as signed int64 (unsigned 64-bit values keep their bits)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {type(seed).__name__}")
    seed = int(seed)
    if not -(2**63) <= seed < 2**64:
        raise ValueError(f"{name} must fit in 64 bits; got {seed}")
    return seed - 2**64 if seed >= 2**63 else seed


def uniforms(seed: int, offset, positions: torch.Tensor, domain: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent centred 52-bit uniforms in (0, 1), float64, shaped like ``positions``.

    Args:
        seed: int (signed or unsigned 64-bit), or a 0-dim int64 tensor on ``positions``' device
            (no host-to-device copy: CUDA-graph capturable).
        offset: int or int64 tensor broadcastable to ``positions`` (the step counter).
        positions: int64 tensor of row identities in [0, 2^48).
        domain: Philox counter domain (``DOMAIN_*``).
    """
    key = seed if isinstance(seed, torch.Tensor) else torch.tensor(seed_value("seed", seed), dtype=torch.int64,
                                                                   device=positions.device)
    off = offset if isinstance(offset, torch.Tensor) else torch.tensor(int(offset), dtype=torch.int64,
                                                                        device=positions.device)
    w0, w1, w2, w3 = draw_words(key, off, positions, domain)
    return uniform52(w0, w1), uniform52(w2, w3)


def reveal_coins(x: torch.Tensor, mask_id: int, reveal_prob, seed: int, offset, positions: torch.Tensor) -> torch.Tensor:
    """Bool ``[...]``: masked positions of ``x`` (int64 ``[...]``) revealed this step.

    ``reveal_prob``: float or float64 tensor broadcastable to ``x``. Same coin as
    ``unmask_step`` with the same (seed, offset, positions).
    """
    u, _ = uniforms(seed, offset, positions, DOMAIN_REVEAL)
    return (x == mask_id) & (u < reveal_prob)
