"""Philox4x32-10 and mdsample's counter layout in plain PyTorch (int64 lanes).

Mirrors ``csrc/include/mdsample/philox.h`` word for word; the C++ header, the
Triton kernels and this file must agree bitwise (tests/test_philox.py).

Counter layout: ``c0 = position[31:0]``, ``c1 = position[47:32] | domain << 16``,
``c2 = offset[31:0]``, ``c3 = offset[63:32]``; key = ``seed`` (low, high word).
"""
from __future__ import annotations

import torch

DOMAIN_TOKEN = 0
DOMAIN_REVEAL = 1
DOMAIN_TIMESTEP = 2
DOMAIN_FORWARD_MASK = 3
MAX_POSITION = (1 << 48) - 1

_M32 = 0xFFFFFFFF
_ROUND_A = 0xD2511F53
_ROUND_B = 0xCD9E8D57
_KEY_A = 0x9E3779B9
_KEY_B = 0xBB67AE85


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # a * b needs 64 unsigned bits; int64 holds 63, so split b in 16-bit halves.
    t_lo = a * (b & 0xFFFF)
    t_hi = a * (b >> 16)
    s = ((t_hi & 0xFFFF) << 16) + t_lo
    return (t_hi >> 16) + (s >> 32), s & _M32


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Random123 philox4x32_10 on int64 tensors holding uint32 values.

    Args: counter words ``c0..c3`` and key words ``k0, k1``, int64 tensors (or
    ints) in [0, 2^32), broadcastable. Returns four int64 tensors in [0, 2^32).
    """
    c0, c1, c2, c3, k0, k1 = (torch.as_tensor(v, dtype=torch.int64) for v in (c0, c1, c2, c3, k0, k1))
    for _ in range(10):
        hi0, lo0 = _mulhilo(_ROUND_A, c0)
        hi1, lo1 = _mulhilo(_ROUND_B, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _KEY_A) & _M32
        k1 = (k1 + _KEY_B) & _M32
    return c0, c1, c2, c3


def draw_words(seed: torch.Tensor, offset: torch.Tensor, position: torch.Tensor, domain: int):
    """The four Philox words of draw (seed, offset, position, domain).

    Args: ``seed``, ``offset``, ``position``: int64 tensors, broadcastable
    (seed and offset reinterpret their 64 bits as unsigned). Returns four int64
    tensors of uint32 values.
    """
    seed, offset, position = (torch.as_tensor(v, dtype=torch.int64) for v in (seed, offset, position))
    return philox4x32_10(
        position & _M32,
        ((position >> 32) & 0xFFFF) | (domain << 16),
        offset & _M32,
        (offset >> 32) & _M32,
        seed & _M32,
        (seed >> 32) & _M32,
    )


def uniform52(hi: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    """Centred uniform (k + 0.5) * 2^-52 in float64 from two uint32 words (k: 52 bits; exact, never 0 or 1)."""
    k = (hi << 20) | (lo >> 12)
    return (k.to(torch.float64) + 0.5) * 2.0**-52
