"""Effective temperature (DESIGN.md §4): fit T_eff to sampled frequencies by maximum
likelihood; |T_eff / T - 1| < 1e-3.

Zheng et al. (arXiv 2409.02908) found that fp32 Gumbel noise lowers the effective
temperature of masked diffusion samplers; a temperature applied with too coarse a
1/T, or logits rounded before scaling, shift it as well.

Model: the sampler draws token i with probability q_i(theta) proportional to
exp(theta l_i), theta = 1 / T_eff. The maximum-likelihood theta solves
mean_observed(l) = E_theta[l]; its standard error is 1 / sqrt(N Var_theta(l)), so
the relative error of T_eff is 1 / sqrt(N Var(log q)). The logits are built as
``l = T log q`` so that the sampled distribution q is the design at every T.

Design (V = 512, one chunk): one head token of mass 0.5 and 511 tokens with
probabilities log-uniform over five decades (p from 1.1e-2 down to 1.1e-7; the
whole distribution spans 6.7 decades): Var(log q) = 6.24 nats^2. Among the designs
tried this gives the most information per token read (the cost of a draw grows
with V, the information only with (log V)^2): 2^22 draws resolve T_eff / T to a
standard error of 1.96e-4, 1/5.1 of the contract's 1e-3.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import optimize, stats

from ._stat_helpers import Z_BOUND, assert_budget, per_backend, sample_counts, softmax64

V = 512
BOUND = 1e-3  # DESIGN.md §4: |T_eff / T - 1| < 1e-3


def design_q() -> np.ndarray:
    tail = np.exp(np.linspace(math.log(1e-2), math.log(1e-7), V - 1))
    tail = tail / tail.sum() * 0.5
    q = np.concatenate([[0.5], tail])
    perm = np.random.default_rng(8).permutation(V)  # scatter the probabilities over the ids
    return q[perm]


def design_logits(temperature: float) -> torch.Tensor:
    return torch.from_numpy(temperature * np.log(design_q())).to(torch.float32)


def fit_temperature(counts: np.ndarray, logits: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood T_eff of counts ``[V]`` under q(theta) ~ exp(theta l), and the standard
    error of T_eff / T_eff (from the Fisher information at the estimate)."""
    l = np.asarray(logits, dtype=np.float64)
    n = counts.sum()
    target = float((counts * l).sum() / n)

    def moments(theta):
        a = theta * l
        w = np.exp(a - a.max())
        w /= w.sum()
        mean = float((w * l).sum())
        return mean, float((w * (l - mean) ** 2).sum())

    theta = optimize.brentq(lambda t: moments(t)[0] - target, 1e-3, 1e3, xtol=1e-14, rtol=1e-13)
    var = moments(theta)[1]
    rel_se = 1.0 / (theta * math.sqrt(n * var))  # se(theta) / theta = se(T) / T to first order
    return 1.0 / theta, rel_se


def relative_se(temperature: float, n: int) -> float:
    """Standard error of T_eff / T for n draws of the design (Fisher information)."""
    q = softmax64(design_logits(temperature), temperature)
    lq = np.log(q)
    var = float((q * (lq - (q * lq).sum()) ** 2).sum())
    return 1.0 / math.sqrt(n * var)


def bound_for(temperature: float, n: int) -> float:
    """The tested bound: 1e-3 where the draws resolve it at >= 5 sigma, else 5 standard errors."""
    return max(BOUND, Z_BOUND * relative_se(temperature, n))


@pytest.mark.parametrize("temperature", [0.7])
def test_effective_temperature(backend, temperature):
    """|T_eff / T - 1| <= max(1e-3, 5 se).

    T = 0.7 (not a power of two: a 1/T rounded to bf16 would be off by 8e-4).
    Compiled backends: 2^22 draws (~20 s on 2 cores) give se = 1.96e-4, so the bound is the
    contract's 1e-3 = 5.1 se: false alarm 2 P(Z > 5.1) = 3.4e-7. The float64 reference (2^13
    draws, se = 4.4e-3) is held to 5 se = 2.2e-2 (false alarm 5.7e-7): resolving 1e-3 needs
    ~4M draws, ~20 min of the reference. False alarm <= 5.7e-7 (normal limit of the MLE).
    """
    n = per_backend(backend, cpu=1 << 22, reference=1 << 13, triton=None)
    bound = bound_for(temperature, n)
    assert_budget(2 * stats.norm.sf(bound / relative_se(temperature, n)), 5.8e-7)

    logits = design_logits(temperature)
    counts = sample_counts(logits, n, backend=backend, seed=606, offset=int(temperature * 100), temperature=temperature)
    # The sampled law is softmax(l / T_eff): fit theta against l / T.
    t_ratio, rel_se = fit_temperature(counts, logits.double().numpy() / temperature)
    assert abs(t_ratio - 1.0) <= bound, (
        f"T_eff / T = {t_ratio:.6f} (se {rel_se:.2e}) at T = {temperature}: off by more than {bound:.2e}"
    )


def test_effective_temperature_fit_has_power():
    """The fit itself: exact multinomial draws (numpy, 2^22) at T pass, and draws at
    T x (1 + 2e-3) fail the 1e-3 bound (at 2^22 draws the shift is 10 standard errors).
    False alarm: 2 P(Z > 5.1) + P(Z > 5.1) < 5e-7."""
    n = 1 << 22
    assert bound_for(1.0, n) == BOUND
    logits = design_logits(1.0).double().numpy()
    rng = np.random.default_rng(2024)
    exact = rng.multinomial(n, softmax64(torch.from_numpy(logits)))
    t_ratio, _ = fit_temperature(exact, logits)
    assert abs(t_ratio - 1.0) <= BOUND
    hot = rng.multinomial(n, softmax64(torch.from_numpy(logits), 1.002))
    t_ratio, _ = fit_temperature(hot, logits)
    assert abs(t_ratio - 1.0) > BOUND, f"a 2e-3 temperature error went unnoticed: fitted {t_ratio}"
