"""Triton backend of the samplers' Philox uniforms (mdsample/ops/uniforms.py).

One program per block of positions: the four Philox words of (seed, offset, position,
domain) from the sampling kernels' ``_philox_words``, their two centred 52-bit uniforms
from ``_uniform52``, stored as ``out[0]`` and ``out[1]``. Bitwise the reference's.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._device import on_device_of
from .sampling import _philox_words, _uniform52

_BLOCK = 1024


@triton.jit
def _uniforms_kernel(seed_ptr, seed_val, offset_ptr, offset_val, position_ptr, out_ptr, n,
                     HAS_SEED_PTR: tl.constexpr, HAS_OFFSET_PTR: tl.constexpr, DOMAIN: tl.constexpr,
                     BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # n + i may pass 2^31
    live = i < n
    # Load.
    seed = tl.load(seed_ptr) if HAS_SEED_PTR else seed_val
    offset = tl.load(offset_ptr) if HAS_OFFSET_PTR else offset_val
    position = tl.load(position_ptr + i, mask=live, other=0)
    # Compute.
    w0, w1, w2, w3 = _philox_words(seed, offset, position, DOMAIN)
    # Store.
    tl.store(out_ptr + i, _uniform52(w0, w1), mask=live)
    tl.store(out_ptr + n + i, _uniform52(w2, w3), mask=live)


def uniforms(seed, offset, positions: torch.Tensor, domain: int) -> torch.Tensor:
    """``[2, n]`` float64 for contiguous int64 ``positions`` ``[n]``; seed / offset an int or a one-value tensor."""
    n = positions.numel()
    out = torch.empty((2, n), dtype=torch.float64, device=positions.device)
    if n:
        seed_t, offset_t = isinstance(seed, torch.Tensor), isinstance(offset, torch.Tensor)
        with on_device_of(out):
            _uniforms_kernel[(triton.cdiv(n, _BLOCK),)](
                seed if seed_t else positions, 0 if seed_t else seed, offset if offset_t else positions,
                0 if offset_t else offset, positions, out, n, HAS_SEED_PTR=seed_t, HAS_OFFSET_PTR=offset_t,
                DOMAIN=domain, BLOCK=_BLOCK)
    return out
