"""Noise schedules and time grids of masked / uniform-state diffusion (float64 throughout).

A schedule gives the signal level ``alpha_t`` (probability that a token is still clean
at time t in [0, 1]) and the mask probability ``m_t = 1 - alpha_t``. Samplers use:

- ``reveal_prob(t, s) = (alpha_s - alpha_t) / (1 - alpha_t) = (m_t - m_s) / m_t``: the
  chance that a masked position is revealed going from t to s < t (MDLM's ancestral
  step: q[mask] = m_s, q[token] = p_x0 * (m_t - m_s), normalised);
- ``sigma(t) = -log alpha_t``: the time conditioning of MDLM / Duo backbones;
- ``t_for_mask_prob(m)``: the inverse, for first-hitting times.

Schedules (``eps`` is the schedule's own epsilon, 1e-3 as in MDLM and Duo):

- ``"loglinear"``: ``alpha_t = 1 - (1 - eps) t``  (MDLM LogLinearNoise / Duo LogLinear;
  MDLM's ``ddpm_cache`` update uses ``m_t = t``, which gives the same reveal_prob).
- ``"cosine"``: ``alpha_t = 1 - cos(pi/2 (1 - (1 - eps) t))``  (Duo / scaling-dllms Cosine,
  ALGORITHMS.md).
- ``"cosine-mdlm"``: ``alpha_t = eps + (1 - eps) cos(pi t / 2)``  (the MDLM repository's
  CosineNoise, total noise ``-log(eps + (1 - eps) cos(pi t / 2))``).

Mask probabilities are computed without cancellation (``m`` directly, never ``1 - alpha``
of a rounded alpha) so reveal probabilities stay exact near t = 0.
"""
from __future__ import annotations

import math
from typing import Union

import torch

from . import _checks as C

__all__ = ["Schedule", "LogLinear", "Cosine", "MDLMCosine", "get_schedule", "time_grid", "SCHEDULES"]

Time = Union[float, torch.Tensor]


def _t64(t: Time) -> torch.Tensor:
    return t.to(torch.float64) if isinstance(t, torch.Tensor) else torch.tensor(float(t), dtype=torch.float64)


class Schedule:
    """Base class: subclasses define :meth:`mask_prob` and :meth:`t_for_mask_prob` (float64 tensors in and out)."""

    name = "schedule"

    def __init__(self, eps: float = 1e-3):
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 <= float(eps) < 1.0:
            raise ValueError(f"schedule eps must be a float in [0, 1); got {eps!r}")
        self.eps = float(eps)

    def mask_prob(self, t: Time) -> torch.Tensor:
        """``m_t = 1 - alpha_t`` (float64)."""
        raise NotImplementedError

    def t_for_mask_prob(self, m: Time) -> torch.Tensor:
        """The time t with ``mask_prob(t) = m`` (float64)."""
        raise NotImplementedError

    def alpha(self, t: Time) -> torch.Tensor:
        """``alpha_t`` (float64)."""
        return 1.0 - self.mask_prob(t)

    def sigma(self, t: Time) -> torch.Tensor:
        """``sigma_t = -log alpha_t = -log1p(-m_t)`` (float64)."""
        return -torch.log1p(-self.mask_prob(t))

    def reveal_prob(self, t: Time, s: Time) -> torch.Tensor:
        """``(m_t - m_s) / m_t``: a masked position's chance of being revealed from t to s (float64).

        1 where ``m_t = 0`` (nothing can still be masked there; guards upstream's divide by zero).
        """
        m_t, m_s = self.mask_prob(t), self.mask_prob(s)
        safe = torch.where(m_t > 0, m_t, 1.0)
        return torch.where(m_t > 0, ((m_t - m_s) / safe).clamp(0.0, 1.0), 1.0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps})"


class LogLinear(Schedule):
    """``alpha_t = 1 - (1 - eps) t`` (MDLM / Duo log-linear)."""

    name = "loglinear"

    def mask_prob(self, t):
        return (1.0 - self.eps) * _t64(t)

    def t_for_mask_prob(self, m):
        return _t64(m) / (1.0 - self.eps)

    def reveal_prob(self, t, s):
        # (t - s) / t exactly: the (1 - eps) factor cancels.
        t, s = _t64(t), _t64(s)
        return torch.where(t > 0, ((t - s) / torch.where(t > 0, t, 1.0)).clamp(0.0, 1.0), 1.0)


class Cosine(Schedule):
    """``alpha_t = 1 - cos(pi/2 (1 - (1 - eps) t))`` (Duo / scaling-dllms cosine)."""

    name = "cosine"

    def mask_prob(self, t):
        # cos(pi/2 - x) = sin(x): exact 0 at t = 0 and no cancellation near it.
        return torch.sin(0.5 * math.pi * (1.0 - self.eps) * _t64(t))

    def t_for_mask_prob(self, m):
        return torch.asin(_t64(m).clamp(0.0, 1.0)) * (2.0 / math.pi) / (1.0 - self.eps)


class MDLMCosine(Schedule):
    """``alpha_t = eps + (1 - eps) cos(pi t / 2)`` (the MDLM repository's CosineNoise)."""

    name = "cosine-mdlm"

    def mask_prob(self, t):
        # (1 - eps)(1 - cos x) = 2 (1 - eps) sin^2(x / 2): no cancellation near t = 0.
        return 2.0 * (1.0 - self.eps) * torch.sin(0.25 * math.pi * _t64(t)) ** 2

    def t_for_mask_prob(self, m):
        half = (_t64(m) / (2.0 * (1.0 - self.eps))).clamp(0.0, 1.0).sqrt()
        return torch.asin(half) * (4.0 / math.pi)


SCHEDULES = {cls.name: cls for cls in (LogLinear, Cosine, MDLMCosine)}


def get_schedule(schedule) -> Schedule:
    """A :class:`Schedule` from a name in :data:`SCHEDULES` or a :class:`Schedule` instance."""
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, str) and schedule in SCHEDULES:
        return SCHEDULES[schedule]()
    raise ValueError(f"schedule must be one of {sorted(SCHEDULES)} or a Schedule instance; got {schedule!r}")


def time_grid(steps: int, eps: float) -> torch.Tensor:
    """MDLM's grid ``linspace(1, eps, steps + 1)`` as float64 ``[steps + 1]`` (on the CPU); ``steps`` an int
    >= 1, ``eps`` in ``[0, 1)``."""
    steps = C.integer("steps", steps, low=1)
    eps = C.real("eps", eps, low=0.0, high=1.0, high_inclusive=False)
    return torch.linspace(1.0, eps, steps + 1, dtype=torch.float64)
