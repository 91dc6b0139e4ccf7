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

They come from :func:`mdsample.ops.uniforms.philox_uniforms`: one kernel per call on the
compiled and Triton backends (the reference's int64 tensor spelling of Philox is ~560
ops, which on a GPU is ~560 launches per sampler step).
"""
from __future__ import annotations

import torch

from ..ops._validate import int64_bits
from ..ops.uniforms import philox_uniforms
from ..reference.philox import DOMAIN_REVEAL, DOMAIN_TIMESTEP, DOMAIN_TOKEN

__all__ = ["DOMAIN_REVEAL", "DOMAIN_TIMESTEP", "DOMAIN_TOKEN", "seed_value", "uniforms", "reveal_coins"]


seed_value = int64_bits  # a Python int seed / offset as signed int64 (unsigned 64-bit values keep their bits)


def uniforms(seed: int, offset, positions: torch.Tensor, domain: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent centred 52-bit uniforms in (0, 1), float64, shaped like ``positions``.

    Args:
        seed: int (signed or unsigned 64-bit), or a 0-dim int64 tensor on ``positions``' device
            (no host-to-device copy: CUDA-graph capturable).
        offset: int or a one-element int64 tensor (the step counter).
        positions: int64 tensor of row identities in [0, 2^48).
        domain: Philox counter domain (``DOMAIN_*``).
    """
    key = seed if isinstance(seed, torch.Tensor) else seed_value("seed", seed)
    return philox_uniforms(positions, seed=key, offset=offset, domain=domain)


def reveal_coins(x: torch.Tensor, mask_id: int, reveal_prob, seed: int, offset, positions: torch.Tensor) -> torch.Tensor:
    """Bool ``[...]``: masked positions of ``x`` (int64 ``[...]``) revealed this step.

    ``reveal_prob``: float or float64 tensor broadcastable to ``x``. Same coin as
    ``unmask_step`` with the same (seed, offset, positions).
    """
    u, _ = uniforms(seed, offset, positions, DOMAIN_REVEAL)
    return (x == mask_id) & (u < reveal_prob)
