"""Which masked positions a LLaDA / Dream / Fast-dLLM step commits.

Every rule ranks the candidate positions of a row by confidence, highest first, ties
to the lower position (upstream uses ``torch.topk``, whose tie order is unspecified),
and commits a prefix of that ranking:

- LLaDA fixed schedule: the top ``k`` with ``k`` from :func:`transfer_counts`;
- Fast-dLLM threshold: the top-1 and every other candidate with confidence >= tau;
- Fast-dLLM factor: the top-1, then the j-th (j >= 2, 1-based) while
  ``c_(j) >= 1 - f / (j + 1)``. Upstream's loop also commits the least confident
  candidate whenever only that one fails (it cannot tell "stopped at the last" from
  "passed all"); mdsample commits exactly the passing prefix.
- dInfer threshold (``near_top=d`` beside ``threshold``): every candidate with confidence >=
  ``min(tau, c_(1) - d)`` (dInfer: d = 1e-5), so the top-1 and any within d of it too.
- dInfer hierarchy (``low_threshold``): the candidates of a row fall into runs of adjacent
  positions; the most confident of each run (every position tied with the run's maximum, as
  upstream) is committed if its confidence > ``low_threshold``, and so is every candidate >
  ``threshold`` (if given), and the top-1 always (the lowest position among ties). Upstream's
  ``HierarchyDecoder`` takes batch 1; this takes any batch.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from . import _checks as C

__all__ = ["transfer_counts", "select", "confidence", "logprob_with", "CONFIDENCES"]

CONFIDENCES = ("low_confidence", "entropy", "margin")


def transfer_counts(masked: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's ``get_num_transfer_tokens``: tokens to commit per step of a block.

    Args:
        masked: integer ``[B]`` number of masked positions in the block (or bool ``[B, L]``).
        steps: steps per block, an int >= 1.

    Returns:
        int64 ``[B, steps]``: ``M // steps`` each, plus one for the first ``M % steps`` steps.
    """
    masked = C.V.as_tensor("masked", masked)
    steps = C.integer("steps", steps, low=1)
    if not ((masked.dim() == 2 and masked.dtype == torch.bool) or (masked.dim() == 1 and masked.dtype in C.V.INT_DTYPES)):
        raise TypeError(f"masked must be integer counts [B] or a bool mask [B, L]; got {masked.dtype} of shape "
                        f"{tuple(masked.shape)}")
    if masked.dim() == 2:
        masked = masked.sum(1)
    masked = masked.to(torch.int64)
    base = (masked // steps).unsqueeze(1)
    rem = (masked % steps).unsqueeze(1)
    return base + (torch.arange(steps, device=masked.device).unsqueeze(0) < rem).to(torch.int64)


def confidence(stats, rule: str) -> torch.Tensor:
    """Confidence float64 ``[...]`` of the drawn tokens under ``rule`` (one of :data:`CONFIDENCES`).

    ``stats``: the :class:`mdsample.ops.sampling.SampleResult` of the draw (``return_stats=True``):
    ``"low_confidence"`` = p(x0) (LLaDA), ``"entropy"`` = sum p log p (Dream's ``neg_entropy``),
    ``"margin"`` = p1 - p2 (Dream's ``topk_margin``).
    """
    if rule == "low_confidence":
        return stats.prob.to(torch.float64)
    if rule == "entropy":
        return -stats.entropy.to(torch.float64)
    if rule == "margin":
        return stats.margin.to(torch.float64)
    raise ValueError(f"confidence rule must be one of {CONFIDENCES}; got {rule!r}")


def logprob_with(logits: torch.Tensor, tokens: torch.Tensor, logprob: torch.Tensor, token_id: int) -> torch.Tensor:
    """float32 ``[...]``: ``log p(tokens)`` under the softmax over all V, from ``logprob`` under the softmax
    without ``token_id`` (what :func:`mdsample.sample_categorical` returns with ``exclude=token_id``).

    ``logits`` ``[..., V]`` (the rows drawn from), ``tokens`` int64 ``[...]`` (-1 rows give NaN or garbage;
    mask them), ``logprob`` float ``[...]``. Two gathers: the row's normaliser is recovered from the drawn
    token's logprob and ``token_id``'s logit is added back, so V is not read again (upstream LLaDA / dInfer
    softmaxes keep the mask token in). Written as ``logprob - softplus(l_id - lse)`` so that the rounding of
    the recovered normaliser ``lse`` (an ulp of the logit, 2e-6 at 24) only enters through the mask token's
    small share: ``at - logaddexp(lse, l_id)`` lost it whole, and two near-certain tokens tied.
    """
    at = logits.gather(-1, tokens.clamp_min(0).unsqueeze(-1)).squeeze(-1).float()
    logprob = logprob.float()
    return logprob - torch.nn.functional.softplus(logits[..., token_id].float() - (at - logprob))


def select(conf: torch.Tensor, candidates: torch.Tensor, *, k: Optional[torch.Tensor] = None,
           threshold: Optional[float] = None, factor: Optional[float] = None, near_top: Optional[float] = None,
           low_threshold: Optional[float] = None) -> torch.Tensor:
    """Positions to commit, bool ``[B, L]``; fixed shapes, no host sync (the module docstring states each rule).

    Args:
        conf: float ``[B, L]`` confidences (any value off the candidates; they are ignored).
        candidates: bool ``[B, L]``.
        k: integer ``[B]``: commit the top k (LLaDA; k <= 0 commits none, its values are not read); or
        threshold: float: Fast-dLLM threshold rule (dInfer's with ``near_top``); or
        factor: float: Fast-dLLM factor rule; or
        low_threshold: float: dInfer's hierarchy rule (``threshold`` optional beside it, then strict).
        Exactly one of k / threshold / factor / low_threshold, except threshold with low_threshold.
        near_top: float >= 0 with ``threshold``: dInfer's cutoff ``min(threshold, c_(1) - near_top)``.
    """
    given = [name for name, v in (("k", k), ("threshold", threshold if low_threshold is None else None),
                                  ("factor", factor), ("low_threshold", low_threshold)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"select needs exactly one of k, threshold, factor, low_threshold; got {given or 'none'}")
    if near_top is not None and (threshold is None or low_threshold is not None or near_top < 0):
        raise ValueError(f"near_top (dInfer's cutoff) is a float >= 0 for the threshold rule; got {near_top!r}")
    if not (isinstance(conf, torch.Tensor) and conf.dim() == 2 and conf.is_floating_point()):
        raise TypeError(f"conf must be a float tensor [B, L]; got {getattr(conf, 'dtype', type(conf).__name__)} "
                        f"of shape {tuple(getattr(conf, 'shape', ()))}")
    if not (isinstance(candidates, torch.Tensor) and candidates.dtype == torch.bool and candidates.shape == conf.shape):
        raise TypeError(f"candidates must be a bool tensor of conf's shape {tuple(conf.shape)}; got "
                        f"{getattr(candidates, 'dtype', type(candidates).__name__)} of shape "
                        f"{tuple(getattr(candidates, 'shape', ()))}")
    if k is not None and not (isinstance(k, torch.Tensor) and k.dtype in C.V.INT_DTYPES and k.shape == conf.shape[:1]):
        raise TypeError(f"k must be an integer tensor [B={conf.shape[0]}]; got {getattr(k, 'dtype', type(k).__name__)}"
                        f" of shape {tuple(getattr(k, 'shape', ()))}")
    if low_threshold is not None:
        return _hierarchy(conf, candidates, low_threshold, threshold)
    conf = torch.where(candidates, conf, -torch.inf)
    order = torch.sort(conf, dim=1, descending=True, stable=True).indices
    ranked = conf.gather(1, order)
    rank = torch.arange(conf.shape[1], device=conf.device).unsqueeze(0)
    n_cand = candidates.sum(1, keepdim=True)
    if k is not None:
        take = rank < k.unsqueeze(1)
    elif threshold is not None:
        cut = threshold if near_top is None else torch.clamp(ranked[:, :1] - near_top, max=threshold)
        take = (rank == 0) | (ranked >= cut)
    else:
        ok = (ranked >= 1.0 - factor / (rank + 2).to(conf.dtype)) | (rank == 0)
        take = ok.to(torch.int8).cumprod(1).bool()
    take &= rank < n_cand
    return torch.zeros_like(candidates).scatter(1, order, take)


def _hierarchy(conf: torch.Tensor, candidates: torch.Tensor, low: float, high: Optional[float]) -> torch.Tensor:
    conf = torch.where(candidates, conf, -torch.inf)
    b, n = conf.shape
    pos = torch.arange(n, device=conf.device).expand(b, n)
    starts = candidates & ~F.pad(candidates[:, :-1], (1, 0))
    run = torch.where(candidates, starts.cumsum(1), 0)  # run id from 1; 0 collects the non-candidates
    run_max = conf.new_full((b, n + 1), -torch.inf).scatter_reduce(1, run, conf, "amax")
    take = candidates & (conf == run_max.gather(1, run)) & (conf > low)
    if high is not None:
        take |= candidates & (conf > high)
    top = conf.argmax(1, keepdim=True)  # the first maximum: ties to the lower position
    return take | (candidates & (pos == top))
