"""The samplers' own Philox uniforms (reveal coins, orders, first-hitting times), in one launch.

``philox_uniforms(positions, seed=, offset=, domain=)`` returns, for every position, the
two centred 52-bit uniforms of Philox draw (seed, offset, position, domain): words 0-1
and words 2-3, bit for bit :func:`mdsample.reference.philox.draw_words` +
:func:`~mdsample.reference.philox.uniform52`. The reference spells Philox in int64 tensor
ops, ~560 of them per call: on a GPU that is ~560 launches per sampler step, more than the
sampling op itself; the compiled and Triton backends make it one kernel. ``seed`` and
``offset`` may be 0-dim int64 device tensors (CUDA-graph replays read them in place); no
value goes to the host.
"""
from __future__ import annotations

import torch

from .. import _backends
from ..reference.philox import draw_words, uniform52
from . import _validate as V
from ._launch import launch


def _one_value(name: str, value, device: torch.device):
    """``value`` as the launchers take it: a Python int (signed 64-bit bits) or a one-element int64 tensor."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype != torch.int64:
            raise ValueError(f"{name} must be an int or a one-element int64 tensor; got {value.dtype} {tuple(value.shape)}")
        V.check_device(name, value, device)
        return value.reshape(())
    return V.int64_bits(name, value)


def philox_uniforms(positions: torch.Tensor, *, seed, offset, domain: int,
                    backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent centred uniforms in (0, 1), float64, shaped like ``positions``.

    Args:
        positions: int64 tensor of row identities in [0, 2^48) (any shape and strides).
        seed: int (signed or unsigned 64-bit) or a one-element int64 tensor on ``positions``' device.
        offset: the same kinds: the step counter.
        domain: Philox counter domain (``mdsample.reference.philox.DOMAIN_*``).
        backend: "auto", "cuda", "triton", "cpu" or "reference" (bitwise the same on every one).
    """
    if not isinstance(positions, torch.Tensor) or positions.dtype != torch.int64:
        raise TypeError(f"positions must be an int64 tensor; got {getattr(positions, 'dtype', type(positions).__name__)}")
    device = positions.device
    seed, offset = _one_value("seed", seed, device), _one_value("offset", offset, device)
    chosen = _backends.resolve(backend, device.type)
    if chosen == "reference":
        as_t = lambda v: v if isinstance(v, torch.Tensor) else torch.tensor(v, dtype=torch.int64, device=device)  # noqa: E731
        w0, w1, w2, w3 = draw_words(as_t(seed), as_t(offset), positions, domain)
        return uniform52(w0, w1), uniform52(w2, w3)
    flat = positions.reshape(-1).contiguous()
    if chosen == "triton":
        from ..triton import uniforms as tri

        out = tri.uniforms(seed, offset, flat, domain)
    else:
        out = torch.empty((2, flat.numel()), dtype=torch.float64, device=device)
        keys = {}
        for name, v in (("seed", seed), ("offset", offset)):
            keys[name], keys[name + "_val"] = (v.data_ptr(), 0) if isinstance(v, torch.Tensor) else (0, v)
        launch("uniforms", device, **keys, position=flat.data_ptr(), n=flat.numel(), domain=domain,
               out=out.data_ptr())
    return out[0].view(positions.shape), out[1].view(positions.shape)
