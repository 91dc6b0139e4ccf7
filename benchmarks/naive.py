"""The sampling formulas users run today, written from the upstream descriptions (ALGORITHMS.md).

The categorical draws take logits ``[N, V]`` (any float dtype) and return tokens ``[N]`` int64;
they are the baselines of benchmarks/bench_sampling.py, and the fp32 ones are the biased samplers
that tests/stats shows failing the many-tail test. The dInfer decoder steps take a block's logits
``[B, block, V]`` and are the baselines of benchmarks/bench_decoders.py.
"""
from __future__ import annotations

import torch


def mdlm_fp32(logits: torch.Tensor) -> torch.Tensor:
    """MDLM ``_sample_categorical`` on fp32 probabilities: argmax(p / (1e-10 - log(u + 1e-10)))."""
    p = logits.float().softmax(-1)
    gumbel = 1e-10 - (torch.rand_like(p) + 1e-10).log()
    return (p / gumbel).argmax(-1)


def mdlm_fp64(logits: torch.Tensor) -> torch.Tensor:
    """The same race in float64 (Duo, BD3-LM, scaling-dllms): the full [N, V] float64 noise tensor."""
    p = logits.double().softmax(-1)
    gumbel = 1e-10 - (torch.rand_like(p) + 1e-10).log()
    return (p / gumbel).argmax(-1)


def llada_fp64(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """LLaDA ``add_gumbel_noise`` then argmax: exp(l) / (-log u)^T in float64 (T = 0: the logits' argmax)."""
    if temperature == 0:
        return logits.argmax(-1)
    l = logits.double()
    return (l.exp() / (-torch.rand_like(l).log()) ** temperature).argmax(-1)


def vllm_fp32(logits: torch.Tensor) -> torch.Tensor:
    """vLLM's exponential race: softmax probs / Exp(1) noise from ``exponential_``, fp32."""
    p = logits.float().softmax(-1)
    return (p / torch.empty_like(p).exponential_()).argmax(-1)


def dinfer_threshold(logits: torch.Tensor, masked: torch.Tensor, threshold: float, temperature: float):
    """dInfer's threshold decoder step on a block's logits ``[B, block, V]`` and its masked positions, bool
    ``[B, block]``: LLaDA's float64 Gumbel noise (T > 0), float32 softmax over ``[B, block, V]``, cutoff
    ``min(tau, max p(x0) - 1e-5)``. Returns (x0 int64, commit bool), both ``[B, block]``."""
    x0 = llada_fp64(logits, temperature)
    conf = logits.float().softmax(-1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    conf = torch.where(masked, conf, -torch.inf)
    cut = (conf.max(1, keepdim=True).values - 1e-5).clamp(-1000, threshold)
    return x0, (conf >= cut) & masked


def dinfer_credit(logits: torch.Tensor, masked: torch.Tensor, credit: torch.Tensor, threshold: float,
                  temperature: float, alpha: float = 0.7, gamma: float = 0.2, beta: float = 0.8):
    """dInfer's credit decoder step: the dense float32 credit ``[B, block, V]`` (updated in place), then
    the threshold step on ``logits + alpha * log(credit + 1)``; ``masked`` bool ``[B, block]``. Returns
    (x0 int64, commit bool), both ``[B, block]``."""
    credit.mul_(beta)
    p1, v1 = logits.float().softmax(-1).max(-1)
    credit.scatter_add_(2, v1.unsqueeze(-1), (p1.pow(gamma) * masked).unsqueeze(-1))
    return dinfer_threshold(logits + alpha * torch.log(credit + 1), masked, threshold, temperature)


def dinfer_hierarchy(logits: torch.Tensor, masked: torch.Tensor, threshold: float, low_threshold: float,
                     temperature: float):
    """dInfer's hierarchy decoder step: float64 Gumbel noise (T > 0), ``log_softmax`` over ``[B, block, V]``
    in the logits' dtype, then per run of adjacent masks (``masked`` bool ``[B, block]``) its maximum if >
    low_threshold, every confidence > threshold, and the top-1. Returns (x0 int64, commit bool), ``[B, block]``."""
    x0 = llada_fp64(logits, temperature)
    conf = logits.log_softmax(-1).gather(-1, x0.unsqueeze(-1)).squeeze(-1).exp()
    conf = torch.where(masked, conf, torch.finfo(conf.dtype).min)
    starts = masked & ~torch.cat([torch.zeros_like(masked[:, :1]), masked[:, :-1]], 1)
    run = torch.where(masked, starts.long().cumsum(1) - 1, 0)
    run_max = torch.full_like(conf, torch.finfo(conf.dtype).min).scatter_reduce(1, run, conf, "amax")
    commit = (conf == run_max.gather(1, run)) & (conf > low_threshold) | (conf > threshold)
    commit |= torch.nn.functional.one_hot(conf.argmax(1), masked.shape[1]).bool()
    return x0, commit & masked


FORMULAS = {"mdlm_fp32": mdlm_fp32, "mdlm_fp64": mdlm_fp64, "llada_fp64": llada_fp64, "vllm_fp32": vllm_fp32}
