"""The sampling formulas users run today, written from the upstream descriptions (ALGORITHMS.md).

Each takes logits ``[N, V]`` (any float dtype) and returns tokens ``[N]`` int64.
They are the baselines of benchmarks/bench_sampling.py, and the fp32 ones are
the biased samplers that tests/stats shows failing the many-tail test.
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
    """LLaDA ``add_gumbel_noise`` then argmax: exp(l) / (-log u)^T in float64."""
    l = logits.double()
    noise = torch.rand_like(l)
    return (l.exp() / (-noise.log()) ** temperature).argmax(-1)


def vllm_fp32(logits: torch.Tensor) -> torch.Tensor:
    """vLLM's exponential race: softmax probs / Exp(1) noise from ``exponential_``, fp32."""
    p = logits.float().softmax(-1)
    return (p / torch.empty_like(p).exponential_()).argmax(-1)


FORMULAS = {"mdlm_fp32": mdlm_fp32, "mdlm_fp64": mdlm_fp64, "llada_fp64": llada_fp64, "vllm_fp32": vllm_fp32}
