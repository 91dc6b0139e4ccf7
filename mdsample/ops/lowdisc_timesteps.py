"""``mdsample.lowdisc_timesteps``: Philox-keyed low-discrepancy diffusion times (DESIGN.md §5)."""
from __future__ import annotations

import torch

from .. import _backends
from ..reference.philox import MAX_POSITION
from . import _validate as V
from ._likelihood import MODE_CODE, run_timesteps
from .library import lowdisc_timesteps_op

MODES = tuple(MODE_CODE)


def lowdisc_timesteps(n, *, eps=1e-3, mode="stratified", seed=0, offset=0, device=None, dtype=torch.float64,
                      backend="auto"):
    """``n`` diffusion times in ``[eps, 1]`` whose Monte Carlo averages have low variance.

    Point ``i`` comes from the lattice point ``t~_i`` in [0, 1) as
    ``t_i = (1 - eps) * t~_i + eps`` (MDLM ``_sample_t``), where

    - ``"stratified"``: ``t~_i = (u_i + i) / n``, one uniform in each stratum
      ``[i/n, (i+1)/n)`` (MDLM's low-discrepancy sampler);
    - ``"shifted"``: ``t~_i = (u + i / n) mod 1``, one shared uniform shift of the
      regular lattice (VDM / SMDM likelihood evaluation);
    - ``"iid"``: ``t~_i = u_i``, plain Monte Carlo (the baseline).

    ``u_i`` is the centred 52-bit uniform of Philox draw (seed, offset, position ``i``,
    domain TIMESTEP); the shifted lattice uses position 0 for its one ``u``. So the
    times are a pure function of (n, eps, mode, seed, offset) on every backend, and
    distinct ``offset`` values give independent lattices.

    Args:
        n: number of times, int >= 0.
        eps: lower end, float in [0, 1) (MDLM: 1e-3; 0 gives lattice points in [0, 1)).
        mode: ``"stratified"``, ``"shifted"`` or ``"iid"``.
        seed: int (64-bit), the Philox key.
        offset: int, or int64 tensor ``[...]`` of lattice offsets: the result is then
            ``[..., n]``, one independent lattice per offset.
        device: where the result lives (default: the offset tensor's device, else CPU).
        dtype: ``torch.float64`` (default) or ``torch.float32`` (rounded from float64).
        backend: "auto", "cuda", "triton", "cpu" or "reference".

    Returns:
        float ``[n]`` (or ``[..., n]`` for a tensor offset), sorted for ``"stratified"``.
    """
    n = V.int_number("n", n, low=0, high=MAX_POSITION + 1)
    eps = V.finite_number("eps", eps, low=0.0)
    if eps >= 1.0:
        raise ValueError(f"eps must be in [0, 1); got {eps}")
    mode = V.choice("mode", mode, MODES)
    seed = V.int64_bits("seed", seed)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64; got {dtype}")
    if V.is_array(offset):
        offset = V.as_tensor("offset", offset)
        if device is None:
            device = offset.device
    device = torch.device("cpu") if device is None else torch.device(device)
    if isinstance(offset, torch.Tensor):
        lead = offset.shape
        offsets = V.per_row("offset", offset, lead, offset.device, torch.int64, kind="int").to(device)
    else:
        lead = torch.Size([])
        offsets = V.per_row("offset", offset, torch.Size([1]), device, torch.int64, kind="int")
    chosen = _backends.resolve(backend, device.type)
    if torch.compiler.is_compiling():
        t = lowdisc_timesteps_op(offsets, n, eps, mode, seed, chosen)
    else:
        t = run_timesteps(n, eps=eps, mode=mode, seed=seed, offset=offsets, backend=chosen)
    return t.view(*lead, n).to(dtype)
