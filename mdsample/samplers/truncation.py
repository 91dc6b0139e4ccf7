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
  cumulative probability is <= p (Dream's rule, ``rule="dream"``: the token that crosses p
  stays) or whose own cumulative probability is <= p (BD3-LM's ``_nucleus_sample``,
  ``rule="bd3lm"``: the crossing token goes); the first token always stays. Among equal
  logits the lower token id comes first (upstream's ``torch.sort`` leaves that order
  unspecified, so which of several tied boundary tokens it keeps is arbitrary).

The excluded token (the mask) is removed before top-p, so the nucleus is a nucleus of the
distribution mdsample samples (without the mask token; see samplers/llada.py).

Cost: a float32 softmax over ``[N, V]`` and a top-k search instead of upstream's full sort (:func:`_nucleus`).
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


def _nucleus(scaled: torch.Tensor, top_p: float, first: int = 64, *, sync_free: bool = False,
             rule: str = "dream") -> torch.Tensor:
    """Bool ``[N, V]``: the top-p set of ``softmax(scaled)`` (float32 ``[N, V]``), as a full stable sort gives it.

    The nucleus is usually a few tokens, so it is found among the ``first`` largest logits
    (``topk``) and the search widens (x8) only for the rows whose nucleus is not inside yet. The
    set is then ``scaled >= last kept logit``, except in rows where logits tie with it beyond the
    nucleus: there the lower ids among the tied stay (a stable sort's order). ``sync_free``
    (CUDA-graph steps): one pass over the whole row and the tie rule everywhere, no host reads.
    ``rule``: "dream" or "bd3lm" (module docstring); either way a window whose last cumulative
    probability is <= p may hold only part of the nucleus, so the widening test is the same.
    """
    vocab = scaled.shape[1]
    if sync_free:
        first = vocab
    probs = torch.softmax(scaled, dim=1)
    last = torch.empty((scaled.shape[0], 1), dtype=scaled.dtype, device=scaled.device)
    kept = torch.empty((scaled.shape[0],), dtype=torch.int64, device=scaled.device)
    rows, k = None, min(first, vocab)  # rows None: every row (no gather on the first pass)
    while True:
        sub, sub_p = (scaled, probs) if rows is None else (scaled[rows], probs[rows])
        top = torch.topk(sub, k, dim=1)  # values descending
        cum = sub_p.gather(1, top.indices).cumsum(1)
        # sorted position j stays iff j == 0 or cum[j - 1] <= top_p ("dream") / cum[j] <= top_p ("bd3lm"):
        # a prefix either way, since cum is nondecreasing
        if rule == "dream":
            n = 1 + (cum[:, :-1] <= top_p).sum(1)
        else:
            n = (cum <= top_p).sum(1).clamp_(min=1)
        val = top.values.gather(1, (n - 1).unsqueeze(1))
        if rows is None:
            kept.copy_(n)
            last.copy_(val)
        else:
            kept[rows], last[rows] = n, val
        if k == vocab:
            break
        open_ = cum[:, -1] <= top_p
        if not bool(open_.any()):
            break
        idx = torch.arange(sub.shape[0], device=sub.device)[open_]
        rows, k = (idx if rows is None else rows[idx]), min(8 * k, vocab)
    if sync_free:
        return _stable_prefix(scaled, last, kept)
    keep = scaled >= last
    over = keep.sum(1) != kept
    if bool(over.any()):  # ties at the boundary beyond the nucleus
        r = over.nonzero().squeeze(1)
        keep[r] = _stable_prefix(scaled[r], last[r], kept[r])
    return keep


def _stable_prefix(row: torch.Tensor, last: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Bool ``[n, V]``: the first ``kept`` tokens of each row in (logit descending, id ascending) order,
    given the last one's logit ``last`` ``[n, 1]``: all above it, then the lowest ids among the tied."""
    above, ties = row > last, row == last
    room = (kept - above.sum(1)).unsqueeze(1)
    return above | (ties & (ties.long().cumsum(1) <= room))


def truncate(logits: torch.Tensor, *, temperature: float, top_p: Optional[float], top_k: Optional[int],
             exclude: Optional[int] = None, sync_free: bool = False, rule: str = "dream") -> torch.Tensor:
    """Logits ``[N, V]`` with the tokens outside the top-p / top-k set at ``-inf`` (a new tensor).

    Args:
        logits: float ``[N, V]`` (any float dtype; kept).
        temperature: float >= 0; top-p is taken of ``softmax(l / T)`` (of ``softmax(l)`` at T = 0).
        top_p: float in (0, 1) or None; top_k: int >= 1 or None (from :func:`truncation_args`).
        exclude: a token id set to ``-inf`` first (the mask token), or None.
        sync_free: no host reads (the fixed-shape, graph-captured steps); the same set.
        rule: which tokens top-p keeps, "dream" or "bd3lm" (module docstring).
    """
    if rule not in ("dream", "bd3lm"):
        raise ValueError(f"rule must be 'dream' or 'bd3lm'; got {rule!r}")
    out = logits.clone()
    if exclude is not None:
        out[:, exclude] = -torch.inf
    if top_p is not None and out.numel():
        scaled = out.to(torch.float32)
        if temperature > 0:
            divided = scaled / temperature
            if temperature < 1.0:  # l / T can overflow float32 only at T < 1
                # Scores at +-inf made the softmax NaN and kept the lowest id, not the argmax: such rows are
                # shifted by their max first (the order, ties included, is the same; the mass is).
                top = scaled.amax(1, keepdim=True)
                shifted = (scaled - torch.where(torch.isfinite(top), top, 0.0)) / temperature
                overflow = (torch.isinf(divided) & torch.isfinite(scaled)).any(1, keepdim=True)
                divided = torch.where(overflow, shifted, divided)
            scaled = divided
        out.masked_fill_(~_nucleus(scaled, top_p, sync_free=sync_free, rule=rule), -torch.inf)
    if top_k is not None and top_k < out.shape[1] and out.numel():
        kth = torch.topk(out, top_k, dim=1).values[:, -1:]
        out.masked_fill_(out < kth, -torch.inf)
    return out
