"""Top-p / top-k truncation of the distribution a sampler draws from (Dream's ``sample_tokens``).

Dream applies, in this order, ``l / T`` (when T > 0), nucleus (top-p) truncation of
``softmax(l / T)`` and top-k truncation, then samples and scores confidences on the
truncated softmax. :func:`truncate` computes which tokens survive and sets the others to
``-inf`` in the logits' own dtype, so the exact sampling op then draws from (and reports
statistics of) the truncated distribution at the same temperature. Upstream fills with
``finfo.min`` instead of ``-inf``: both give those tokens probability exactly 0.

- top-k keeps every token whose logit is >= the k-th largest (ties at the k-th value
  all stay, as upstream's ``logits < topk(...)[..., -1]`` test keeps them);
- top-p keeps, in descending order of probability, each token whose preceding
  cumulative probability is <= p (so the first token always stays). Among equal
  logits the lower token id comes first (upstream's ``torch.sort`` leaves that order
  unspecified, so which of several tied boundary tokens it keeps is arbitrary).

The excluded token (the mask) is removed before top-p, so the nucleus is a nucleus of the
distribution mdsample samples (without the mask token; see samplers/llada.py).

This is a reference-speed step: a float32 softmax and a sort over ``[N, V]``, as upstream.
Without top-p / top-k a sampler never calls it and the fused op reads each row once.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _checks as C

__all__ = ["truncate", "truncation_args"]


def truncation_args(top_p, top_k) -> tuple[Optional[float], Optional[int]]:
    """Validated ``(top_p, top_k)``: None where the option is off (top_p >= 1 is off, as upstream)."""
    if top_p is not None:
        top_p = C.real("top_p", top_p, low=0.0, high=1.0)
        if top_p == 0.0:
            raise ValueError("top_p must be > 0 (None or 1 disables it); got 0")
        top_p = None if top_p >= 1.0 else top_p
    if top_k is not None:
        top_k = C.integer("top_k", top_k, low=1)
    return top_p, top_k


def truncate(logits: torch.Tensor, *, temperature: float, top_p: Optional[float], top_k: Optional[int],
             exclude: Optional[int] = None) -> torch.Tensor:
    """Logits ``[N, V]`` with the tokens outside the top-p / top-k set at ``-inf`` (a new tensor).

    Args:
        logits: float ``[N, V]`` (any float dtype; kept).
        temperature: float >= 0; top-p is taken of ``softmax(l / T)`` (of ``softmax(l)`` at T = 0).
        top_p: float in (0, 1) or None; top_k: int >= 1 or None (from :func:`truncation_args`).
        exclude: a token id set to ``-inf`` first (the mask token), or None.
    """
    out = logits.clone()
    if exclude is not None:
        out[:, exclude] = -torch.inf
    if top_p is not None and out.numel():
        scaled = out.to(torch.float32)
        if temperature > 0:
            scaled = scaled / temperature
        # a stable descending sort puts the lower id first among equal logits
        order = torch.sort(scaled, dim=1, descending=True, stable=True).indices
        cum = torch.softmax(scaled, dim=1).gather(1, order).cumsum(1)
        drop_sorted = torch.zeros_like(cum, dtype=torch.bool)
        drop_sorted[:, 1:] = cum[:, :-1] > top_p
        out.masked_fill_(torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted), -torch.inf)
    if top_k is not None and top_k < out.shape[1] and out.numel():
        kth = torch.topk(out, top_k, dim=1).values[:, -1:]
        out.masked_fill_(out < kth, -torch.inf)
    return out
