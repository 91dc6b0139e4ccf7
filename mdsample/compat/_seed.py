"""Philox keys for drop-ins whose upstream signature has no seed."""
from __future__ import annotations

import torch


def key_from_global_rng(seed) -> int:
    """``seed`` if given, else a 63-bit key drawn from the torch global (CPU) RNG.

    Upstream functions consume the global RNG on every call; drawing the key from it
    keeps ``torch.manual_seed`` reproducibility and gives each call fresh randomness.
    """
    if seed is not None:
        return seed
    return int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))


def call_key(seed, random: bool) -> int:
    """The Philox key of a drop-in call: ``seed`` if given; else, for a call that draws random numbers,
    one from the torch global RNG, and 0 for a deterministic one (which then consumes no RNG state)."""
    if seed is not None or random:
        return key_from_global_rng(seed)
    return 0
