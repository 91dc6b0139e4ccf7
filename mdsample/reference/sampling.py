"""Float64 reference of mdsample's categorical draw: the specification every backend follows.

The algorithm (one per row, specified here and in csrc/sampling_cpu.cpp):

1. Scores. ``g_i`` = logit (with guidance: ``l_u + (w + 1)(l_c - l_u)``, and
   ``-inf`` when either side is ``-inf``); the ``exclude`` token gets ``-inf``.
   A NaN or ``+inf`` score, or no finite score, makes the row bad (token -1).
2. Temperature 0: the lowest index of ``max g`` (argmax); no randomness is used.
3. Otherwise ``a_i = g_i / T``. The vocabulary is cut in chunks of
   ``CHUNK = 2048`` tokens; chunk ``c`` has ``m_c = max a_i`` and
   ``S_c = sum exp(a_i - m_c)``, and weight ``W_c = S_c exp(m_c - M)``.
4. One Philox call (domain TOKEN) gives 128 bits: ``u1`` from words 0-1 and
   ``u2`` from words 2-3, each a centred 52-bit uniform.
5. Level 1 (inverse CDF over chunks): the first chunk whose running sum of
   ``W`` exceeds ``u1 * sum W``. Level 2 (inverse CDF inside it): the first
   token whose running sum of ``exp(a_i - m_c)`` exceeds ``u2 * S_c``, where
   the compiled kernels recompute ``S_c`` in float64 for this one chunk so the
   draw inside it is exact to double precision.

Why this algorithm: it is exact (P(token) = W_c / sum W * w_i / S_c), it reads
each logit once from memory, and it needs two random numbers per row instead
of a Philox draw and two logarithms per token (DESIGN.md §3); the chunk sums
are independent so GPUs split them across CTAs and merge without a second
pass. The only inexactness is float rounding in the sums (relative ~1e-7),
far below the 1e-3 frequency budget of DESIGN.md §4.

This module computes the same thing over a dense ``[N, V]`` float64 tensor: it
is the ground truth of the tests and the naive baseline of the benchmarks.
"""
from __future__ import annotations

import math

import torch

from .philox import DOMAIN_TOKEN, draw_words, uniform52

CHUNK = 2048


def guided_scores(logits: torch.Tensor, guidance: torch.Tensor | None, guidance_scale: float) -> torch.Tensor:
    """Float64 scores ``[N, V]`` from logits ``[N, V]`` and optional unconditional logits ``[N, V]``."""
    g = logits.to(torch.float64, copy=True)  # written below (exclude): never the caller's float64 tensor
    if guidance is None:
        return g
    u = guidance.to(torch.float64)
    combined = u + (guidance_scale + 1.0) * (g - u)
    return torch.where(torch.isneginf(g) | torch.isneginf(u), -math.inf, combined)


def _first_over(cum: torch.Tensor, weights: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Index of the first running sum > target per row; the last positive weight if none."""
    idx = (cum <= target.unsqueeze(-1)).sum(-1)
    n = cum.shape[-1]
    positions = torch.arange(n, device=cum.device).expand_as(weights)
    last_positive = torch.where(weights > 0, positions, -1).amax(-1)
    return torch.where(idx >= n, last_positive, idx)


def sample_rows(
    logits: torch.Tensor,
    *,
    temperature: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
    position: torch.Tensor,
    exclude: int = -1,
    guidance: torch.Tensor | None = None,
    guidance_scale: float = 0.0,
    active: torch.Tensor | None = None,
    fallback: torch.Tensor | None = None,
    stats_temperature: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Draw one token per row.

    Args:
        logits: ``[N, V]`` any float dtype.
        temperature: ``[N]`` float32, 0 = argmax.
        seed, offset, position: ``[N]`` int64 Philox key and counter parts.
        exclude: token id never returned (-1: none).
        guidance: ``[N, V]`` unconditional logits or None; ``guidance_scale`` is w.
        active: ``[N]`` bool or None; inactive rows return ``fallback`` ([N] int64, or -1).
        stats_temperature: ``[N]`` float32; when given, also return stats.

    Returns:
        tokens ``[N]`` int64 (-1 for bad rows) and, with ``stats_temperature``,
        stats ``[N, 4]`` float32: logprob and prob of the token, top1 - top2
        probability margin and entropy, all of ``softmax(g / stats_temperature)``.
    """
    n, v = logits.shape
    device = logits.device
    g = guided_scores(logits, guidance, guidance_scale)
    if 0 <= exclude < v:
        g[:, exclude] = -math.inf
    bad = torch.isnan(g).any(-1) | torch.isposinf(g).any(-1) | ~torch.isfinite(g).any(-1)

    # Temperature 0: lowest index of the maximum (torch.argmax does not promise which tie).
    gmax = g.amax(-1, keepdim=True)
    idx = torch.arange(v, device=device)
    argmax = torch.where(g == gmax, idx, v).amin(-1)

    t = temperature.to(torch.float64).unsqueeze(-1)
    # T = +inf: the kernels' clamped scale 2^-126 (-inf / inf would be NaN, and the row would draw token 0).
    a = torch.where(t > 0, g / torch.where(t > 0, torch.where(torch.isinf(t), 2.0 ** 126, t), 1.0), -math.inf)
    nc = -(-v // CHUNK)
    a = torch.nn.functional.pad(a, (0, nc * CHUNK - v), value=-math.inf).view(n, nc, CHUNK)
    m = a.amax(-1)
    finite_m = torch.where(torch.isfinite(m), m, 0.0)
    w = torch.exp(a - finite_m.unsqueeze(-1))
    s = w.sum(-1)
    big_m = m.amax(-1, keepdim=True)
    weights = s * torch.exp(torch.where(torch.isfinite(m), m - torch.where(torch.isfinite(big_m), big_m, 0.0), -math.inf))

    w0, w1, w2, w3 = draw_words(seed, offset, position, DOMAIN_TOKEN)
    u1, u2 = uniform52(w0, w1), uniform52(w2, w3)
    cum = weights.cumsum(-1)
    chunk = _first_over(cum, weights, u1 * cum[:, -1]).clamp_min(0)
    inner_w = w.gather(1, chunk.view(n, 1, 1).expand(n, 1, CHUNK)).squeeze(1)
    inner_cum = inner_w.cumsum(-1)
    inner = _first_over(inner_cum, inner_w, u2 * inner_cum[:, -1])
    sampled = chunk * CHUNK + inner

    tokens = torch.where(temperature > 0, sampled, argmax)
    tokens = torch.where(bad, -1, tokens)
    if active is not None:
        fb = fallback if fallback is not None else torch.full_like(tokens, -1)
        tokens = torch.where(active, tokens, fb)

    stats = None
    if stats_temperature is not None:
        stats = row_stats(g, tokens.clamp(0, v - 1), stats_temperature)
        invalid = bad | (tokens < 0)
        if active is not None:
            invalid = invalid | ~active
        stats = stats.masked_fill(invalid.unsqueeze(1), math.nan)  # no boolean-index write: no host sync
    return tokens, stats


def shifted_scores(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``z = y - max`` ``[N, V]``, ``e^z`` ``[N, V]`` and ``tail`` ``[N]`` of float64 scores ``y`` ``[N, V]``.

    ``tail`` sums e^z over all but one maximum, so that log(sum e^z) = log1p(tail) keeps a near-certain
    token's log p (log_softmax takes the log of a sum near 1: -1e-13 came out 0.1% off). Shifting by the
    max first also keeps log(number of tied maxima) at huge |y| (tiny temperatures), which y - logsumexp(y)
    would round away. Rows without a finite maximum give NaN or -inf (callers mask them).
    """
    ymax, top = y.max(-1, keepdim=True)
    z = y - torch.where(torch.isfinite(ymax), ymax, 0.0)
    e = torch.exp(z)
    return z, e, e.scatter(-1, top, 0.0).sum(-1)


def row_stats(g: torch.Tensor, tokens: torch.Tensor, stats_temperature: torch.Tensor) -> torch.Tensor:
    """float32 ``[N, 4]`` (logprob and prob of ``tokens``, top1 - top2 margin, entropy) of ``softmax(g / T)``.

    ``g`` is float64 ``[N, V]`` scores, ``tokens`` ``[N]`` int64 in ``[0, V)``, ``T`` ``[N]`` float32. From
    :func:`shifted_scores`: the margin is -expm1(z2) / sum (not a difference of two near-equal
    probabilities: a near-tie's margin came out 19% off) and the entropy log1p(tail) - sum(e^z z) / sum
    adds two terms >= 0. 1 / T is held in [2^-126, 3e38], as the kernels hold their float32 scale
    (``inv_temperature`` of csrc/include/mdsample/online.h).
    """
    scale = (1.0 / stats_temperature.to(torch.float64)).clamp(2.0**-126, 3e38)
    z, e, tail = shifted_scores(g * scale.unsqueeze(-1))
    log_sum = torch.log1p(tail)
    tok_logp = z.gather(1, tokens.unsqueeze(-1)).squeeze(1) - log_sum
    z2 = z.topk(2, -1).values[:, 1] if z.shape[1] > 1 else torch.full_like(tail, -math.inf)
    margin = -torch.expm1(z2) / (1.0 + tail)
    entropy = log_sum - torch.where(e > 0, e * z, 0.0).sum(-1) / (1.0 + tail)
    return torch.stack([tok_logp, tok_logp.exp(), margin, entropy], -1).to(torch.float32)
