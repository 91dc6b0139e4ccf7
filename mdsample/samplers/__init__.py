"""Samplers of masked / uniform-state diffusion LMs, for any backbone (DESIGN.md §6).

- :func:`sample_mdlm`: MDLM ancestral (SUBS), first-hitting, semi-AR strides, SMDM CFG.
- :func:`generate`: LLaDA semi-AR remasking, Dream confidences, Fast-dLLM threshold / factor.
- :func:`sample_duo`: Duo uniform-state ancestral posterior.
- :func:`sample_bd3lm`: BD3-LM block diffusion with the exact block-causal KV cache.
- :func:`sample_dream`: Dream's whole-canvas ``diffusion_generate`` (origin / confidence orders, top-p / top-k).
- :func:`sample_smdm`: SMDM's whole-context sampler (origin / greedy, unsupervised CFG).

Built on :func:`mdsample.sample_categorical` and :func:`mdsample.unmask_step`; a backbone
is seen only through :mod:`mdsample.models.protocol`.
"""
from .bd3lm import sample_bd3lm
from .dream import DREAM_ALGS, sample_dream
from .duo import duo_posterior_step, sample_duo
from .graph_step import StepGraphs
from .llada import REMASKING, generate
from .mdlm import sample_mdlm
from .remasking import select, transfer_counts
from .smdm import SMDM_ALGS, sample_smdm
from .schedules import SCHEDULES, Cosine, LogLinear, MDLMCosine, Schedule, get_schedule, time_grid

__all__ = [
    "sample_mdlm",
    "generate",
    "StepGraphs",
    "sample_duo",
    "sample_bd3lm",
    "sample_dream",
    "DREAM_ALGS",
    "sample_smdm",
    "SMDM_ALGS",
    "duo_posterior_step",
    "REMASKING",
    "select",
    "transfer_counts",
    "Schedule",
    "LogLinear",
    "Cosine",
    "MDLMCosine",
    "SCHEDULES",
    "get_schedule",
    "time_grid",
]
