"""Float64 reference of the likelihood ops: the specification every backend follows.

Three ops (DESIGN.md §5), each a pure function of its inputs and the Philox keys:

``lowdisc_timesteps``: point ``i`` of an ``n``-point lattice on [0, 1), from
the centred 52-bit uniform ``u`` of draw (seed, offset, position, domain TIMESTEP),
words 0-1 (``position = i``; the shifted lattice uses one ``u`` at position 0):

- stratified ``t~_i = (u_i + i) / n``  (MDLM ``_sample_t``: one uniform per stratum)
- shifted    ``t~_i = (u_0 + i / n) mod 1``  (VDM / SMDM: one shared shift)
- iid        ``t~_i = u_i``

then ``t_i = (1 - eps) * t~_i + eps`` (a product then a sum, no FMA), in [eps, 1].

``forward_mask``: token ``(b, i)`` has the centred 52-bit uniform ``u`` of draw
(seed_b, offset_b, position_bi, domain FORWARD_MASK), words 0-1. Only maskable tokens
are masked. Bernoulli variant: masked iff ``u < p_b`` with ``p_b = 1 - alpha(t_b)``.
Exact-count variant: the ``k_b`` maskable tokens of smallest ``(u, i)`` are masked,
a uniformly random ``k_b``-subset because the ``u`` are i.i.d.

``masked_nll``: ``out_b = sum_i w_bi * (logsumexp(g_bi) - g_bi[x0_bi])`` over rows
with ``x_t == mask_id`` and ``w != 0`` (other rows are not read), where ``g`` are
the scores: the logits, or ``l_u + (s + 1)(l_c - l_u)`` with guidance, and ``-inf``
at the ``exclude`` token. A NaN or ``+inf`` score, a row without a finite score or a
target outside the vocabulary makes the row (and its sequence) NaN.

This module computes them densely (``[N, V]`` float64 for masked_nll): the ground
truth of the tests and the naive baseline of the benchmarks.
"""
from __future__ import annotations

import math

import torch

from .philox import DOMAIN_FORWARD_MASK, DOMAIN_TIMESTEP, draw_words, uniform52
from .sampling import guided_scores, shifted_scores

TIMESTEP_MODES = ("stratified", "shifted", "iid")


def lattice_points(mode: str, u: torch.Tensor, n: int) -> torch.Tensor:
    """Lattice points ``t~`` ``[..., n]`` float64 on [0, 1) from the uniforms ``u`` ``[..., n]``
    (the shifted mode reads only ``u[..., :1]``)."""
    i = torch.arange(n, dtype=torch.float64, device=u.device)
    if mode == "stratified":
        return (u + i) / n
    if mode == "shifted":
        x = u[..., :1] + i / n
        return torch.where(x >= 1.0, x - 1.0, x)  # x < 2: one subtraction is the mod, exactly
    return u


def lowdisc_timesteps(n: int, *, eps: float, mode: str, seed: int, offset: torch.Tensor) -> torch.Tensor:
    """Timesteps ``[G, n]`` float64 in [eps, 1] for the ``G`` lattice offsets ``offset`` (int64 ``[G]``)."""
    positions = torch.arange(n, dtype=torch.int64, device=offset.device)
    if mode == "shifted":
        positions = torch.zeros_like(positions)
    w0, w1, _, _ = draw_words(torch.tensor(seed, dtype=torch.int64), offset.view(-1, 1), positions, DOMAIN_TIMESTEP)
    unit = lattice_points(mode, uniform52(w0, w1), n)
    return (1.0 - eps) * unit + eps


def forward_mask_uniforms(seed: torch.Tensor, offset: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """Float64 ``[B, L]`` uniforms of the forward-mask draws.

    ``seed``/``offset``: int64 ``[B]``; ``position``: int64 ``[B, L]``.
    """
    w0, w1, _, _ = draw_words(seed.view(-1, 1), offset.view(-1, 1), position, DOMAIN_FORWARD_MASK)
    return uniform52(w0, w1)


def forward_mask(
    x0: torch.Tensor,
    *,
    mask_id: int,
    seed: torch.Tensor,
    offset: torch.Tensor,
    position: torch.Tensor,
    maskable: torch.Tensor | None = None,
    prob: torch.Tensor | None = None,
    count: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x_t`` int64 ``[B, L]`` from ``x0`` int64 ``[B, L]``.

    Args:
        mask_id: the mask token.
        seed, offset: int64 ``[B]``; position: int64 ``[B, L]``.
        maskable: bool ``[B, L]`` or None (all maskable).
        prob: float64 ``[B]`` Bernoulli mask probability, or
        count: int64 ``[B]`` exact number of maskable tokens to mask (clamped to [0, #maskable]).
    """
    u = forward_mask_uniforms(seed, offset, position)
    allowed = torch.ones_like(x0, dtype=torch.bool) if maskable is None else maskable
    if prob is not None:
        hit = allowed & (u < prob.view(-1, 1))
    else:
        # Rank by (u, index): sort by index is the identity, then a stable sort by u.
        key = torch.where(allowed, u, math.inf)
        order = torch.sort(key, dim=-1, stable=True).indices
        rank = torch.empty_like(order)
        rank.scatter_(-1, order, torch.arange(x0.shape[-1], device=x0.device).expand_as(order))
        hit = allowed & (rank < count.view(-1, 1))
    return torch.where(hit, mask_id, x0)


def masked_nll(
    logits: torch.Tensor,
    target: torch.Tensor,
    xt: torch.Tensor,
    *,
    mask_id: int,
    n_seqs: int,
    length: int,
    weight: torch.Tensor | None = None,
    exclude: int = -1,
    guidance: torch.Tensor | None = None,
    guidance_scale: float = 0.0,
) -> torch.Tensor:
    """Per-sequence weighted NLL ``[n_seqs]`` float32 (computed in float64).

    Args:
        logits: ``[N, V]`` any float dtype, ``N = n_seqs * length`` rows in sequence order.
        target, xt: int64 ``[N]``: x0 and x_t of each row.
        weight: float32 ``[N]`` or None (1).
        exclude: token id dropped from the softmax (-1: none).
        guidance: ``[N, V]`` unconditional logits or None; ``guidance_scale`` is w.
    """
    n, v = logits.shape
    w = torch.ones(n, dtype=torch.float64, device=logits.device) if weight is None else weight.to(torch.float64)
    read = (xt == mask_id) & (w != 0)
    rows = read.nonzero().squeeze(-1)
    g = guided_scores(logits[rows], None if guidance is None else guidance[rows], guidance_scale)
    if 0 <= exclude < v:
        g[:, exclude] = -math.inf
    tgt = target[rows]
    in_vocab = (tgt >= 0) & (tgt < v)
    bad = torch.isnan(g).any(-1) | torch.isposinf(g).any(-1) | ~torch.isfinite(g).any(-1) | ~in_vocab
    z, _, tail = shifted_scores(g)
    nll = torch.log1p(tail) - z.gather(1, tgt.clamp(0, v - 1).unsqueeze(-1)).squeeze(-1)
    value = torch.where(bad, math.nan, w[rows] * nll)
    per_row = torch.zeros(n, dtype=torch.float64, device=logits.device).index_put_((rows,), value)
    return per_row.view(n_seqs, length).sum(-1).to(torch.float32)
