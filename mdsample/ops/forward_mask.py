"""``mdsample.forward_mask``: fused forward (noising) process of masked diffusion (DESIGN.md §5)."""
from __future__ import annotations

import math
import numbers

import torch

from .. import _backends
from ..reference.philox import MAX_POSITION
from . import _validate as V
from ._likelihood import run_forward_mask
from .library import forward_mask_op

SCHEDULES = ("loglinear", "cosine")


def mask_prob(schedule, t: torch.Tensor, eps: float) -> torch.Tensor:
    """``1 - alpha(t)`` (float64) of a named schedule, or of an object with ``mask_prob(t)``.

    ``"loglinear"``: ``(1 - eps) t`` (MDLM); ``"cosine"``: ``cos(pi/2 (1 - (1 - eps) t))``
    (Duo); both agree with :mod:`mdsample.samplers.schedules`.
    """
    t = t.to(torch.float64)
    if schedule == "loglinear":
        return (1.0 - eps) * t
    if schedule == "cosine":
        return torch.cos(0.5 * math.pi * (1.0 - (1.0 - eps) * t))
    prob = torch.as_tensor(schedule.mask_prob(t), dtype=torch.float64, device=t.device)
    if prob.shape != t.shape:
        raise ValueError(f"schedule.mask_prob(t) must return one probability per t, shape {tuple(t.shape)}; "
                         f"{type(schedule).__name__}.mask_prob returned shape {tuple(prob.shape)}")
    return prob


def _check_schedule(schedule) -> None:
    if isinstance(schedule, str):
        V.choice("schedule", schedule, SCHEDULES)
    elif not callable(getattr(schedule, "mask_prob", None)):
        raise TypeError(f"schedule must be one of {SCHEDULES} or an object with mask_prob(t); "
                        f"got {type(schedule).__name__}")


def forward_mask(x0, t=None, *, mask_id, schedule="loglinear", eps=1e-3, maskable=None, seed=0, offset=0,
                 positions=None, count=None, check=True, backend="auto"):
    """Mask tokens of ``x0`` as the forward process of masked diffusion does, in one fused pass.

    Each maskable token ``i`` of sequence ``b`` has its own uniform ``u_bi``: the
    centred 52-bit uniform of Philox draw (seed_b, offset_b, position_bi, domain
    FORWARD_MASK). Then either

    - Bernoulli (``t`` given): the token is masked iff ``u_bi < 1 - alpha(t_b)``,
      i.e. with probability ``1 - alpha(t_b)`` independently (MDLM / SMDM); or
    - exact count (``count`` given, LLaDA ``get_log_likelihood``): exactly
      ``k_b = count_b`` maskable tokens are masked, those of smallest ``u_bi`` (ties,
      which need two equal 52-bit draws, to the lowest index): a uniformly random
      ``k_b``-subset. ``k_b`` larger than the number of maskable tokens masks them all.

    Tokens that are not maskable (e.g. the prompt) are never masked; a token already
    equal to ``mask_id`` stays masked. The result depends only on (seed, offset,
    positions), not on the batch or the backend.

    Args:
        x0: integer token ids ``[..., L]`` (``[B, L]`` typically). Not modified.
        t: float in [0, 1] or float tensor broadcastable to the sequence dims ``[...]``
            (one time per sequence). Pass ``t`` or ``count``, not both.
        mask_id: the mask token id (int >= 0).
        schedule: ``"loglinear"`` (``1 - alpha = (1 - eps) t``), ``"cosine"``
            (``cos(pi/2 (1 - (1 - eps) t))``) or an object with ``mask_prob(t)``
            returning float64 (e.g. a :class:`mdsample.samplers.Schedule`).
        eps: the named schedules' epsilon, in [0, 1).
        maskable: bool broadcastable to ``[..., L]``; default every token.
        seed, offset: int or int64 tensor broadcastable to ``[...]``: Philox key and counter.
        positions: int64 broadcastable to ``[..., L]``, in [0, 2^48): each token's identity
            in the counter (default: its flat index). Pass (sequence, token) ids to make a
            sequence's mask independent of how it is batched.
        count: int or integer tensor broadcastable to ``[...]``, >= 0: exact-count variant.
        check: validate values (ranges of t, count, positions) with one host sync, after the kernel.
        backend: "auto", "cuda", "triton", "cpu" or "reference".

    Returns:
        ``x_t``: int64 ``[..., L]``.
    """
    x0 = V.int_tokens("x0", x0)
    device, shape = x0.device, x0.shape
    lead, length = shape[:-1], shape[-1]
    batch = math.prod(lead)
    mask_id = V.int_number("mask_id", mask_id, low=0, high=2**63 - 1)
    checking = V.flag("check", check) and not torch.compiler.is_compiling()
    pending = []  # value checks, read together after the kernel (V.defer: they can only spoil masks)

    if (t is None) == (count is None):
        raise ValueError("forward_mask needs exactly one of t (Bernoulli masking) and count (exact-count masking)")
    prob = counts = None
    _check_schedule(schedule)  # checked with count too, where they are unused: a typo there raised nothing
    eps = V.finite_number("eps", eps, low=0.0)
    if eps >= 1.0:
        raise ValueError(f"eps must be in [0, 1); got {eps}")
    if t is not None:
        if isinstance(t, numbers.Number) and not isinstance(t, torch.Tensor):
            t = V.finite_number("t", t, low=0.0)
        tt = V.per_row("t", t, lead, device, torch.float64, kind="float")
        if checking:
            V.defer(pending, ~((tt >= 0) & (tt <= 1)).all(), "t must lie in [0, 1] for every sequence")
        prob = mask_prob(schedule, tt, eps).reshape(batch).contiguous()
        if checking:
            V.defer(pending, ~((prob >= 0) & (prob <= 1)).all(), "schedule.mask_prob(t) must lie in [0, 1]")
    else:
        counts = V.per_row("count", count, lead, device, torch.int64, kind="int")
        if checking:
            V.defer(pending, (counts < 0).any(), "count must be >= 0 for every sequence")

    position = None
    if positions is not None:
        position = V.per_row("positions", positions, shape, device, torch.int64, kind="int").view(batch, length)
        if checking:
            V.defer(pending, ~((position >= 0) & (position <= MAX_POSITION)).all(), "positions must lie in [0, 2^48)")
    elif checking and x0.numel() > MAX_POSITION + 1:
        raise ValueError(f"x0 has {x0.numel()} tokens: more than 2^48 default positions")
    allowed = None
    if maskable is not None:
        allowed = V.per_row("maskable", maskable, shape, device, torch.bool, kind="bool").view(batch, length)

    seeds = V.per_row("seed", seed, lead, device, torch.int64, kind="int")
    offsets = V.per_row("offset", offset, lead, device, torch.int64, kind="int")
    x0_rows = x0.reshape(batch, length).contiguous()
    chosen = _backends.resolve(backend, device.type)
    args = dict(mask_id=mask_id, seed=seeds, offset=offsets, position=position, maskable=allowed, prob=prob,
                count=counts)
    if torch.compiler.is_compiling():
        out = forward_mask_op(x0_rows, backend=chosen, **args)
    else:
        out = run_forward_mask(x0_rows, backend=chosen, **args)
    V.raise_pending(pending)
    return out.view(shape)
