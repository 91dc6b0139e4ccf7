"""Drop-in for SMDM's ``diff_sample(model, tokenizer, prompt, ...)`` (its conditional-generation evaluation).

``x = smdm.diff_sample(model, tokenizer, prompt, alg="greddy", steps=256, temperature=0.,
cfg_scale=2., context_length=1024)`` takes upstream's arguments and defaults and runs
:func:`mdsample.sample_smdm`, whose docstring lists the few documented differences. ``tokenizer``
is accepted and unused, as upstream; ``dim`` is the mask token id (32000: SMDM's vocabulary of
32000 text tokens plus the mask); ``device`` places the canvas (upstream hard-codes CUDA; here
None means the prompt's device).
"""
from __future__ import annotations

import re

import torch

from ..models.protocol import device_of
from ..samplers import _checks as C
from ..samplers.smdm import sample_smdm
from ._seed import call_key

__all__ = ["diff_sample"]


def diff_sample(model, tokenizer=None, prompt=None, batch_size=1, alg="origin", steps=512, temperature=1.,
                cfg_scale=2., context_length=2048, eps=1e-5, dim=32000, device=None, *, seed=None, backend="auto"):
    """SMDM's ``diff_sample``: int64 ``[B, context_length]``, the prompt followed by the generated tokens.

    Args:
        model: ``model(x int64 [B, L]) -> logits [B, L, V]`` (SMDM's ``TransEncoder``), or any backbone.
        tokenizer: unused (upstream's signature).
        prompt: int64 ``[B, P]`` prompt ids, P <= ``context_length`` (mask ids in it, SMDM's padding, are
            filled too); None: ``batch_size`` unconditional sequences (needs ``cfg_scale=0``: upstream's
            default 2.0 guides by the prompt).
        batch_size: sequences when ``prompt`` is None (upstream takes B from the prompt).
        alg: ``"origin"`` or ``"greddy"`` (upstream's spelling; ``"greedy"`` too).
        steps, temperature, cfg_scale, context_length, eps: as upstream.
        dim: the mask token id.
        device: where the canvas lives (None: the prompt's device, else the model's).
        seed: Philox key; None draws one from the torch global RNG (upstream draws from it).
        backend: sampling-op backend.
    """
    if prompt is None and cfg_scale:
        raise ValueError(f"cfg_scale={cfg_scale} guides by the prompt, and prompt is None: pass cfg_scale=0. for "
                         "unconditional samples")
    batch_size = C.integer("batch_size", batch_size, low=1)  # upstream takes B from a given prompt
    context_length = C.integer("context_length", context_length, low=1)
    if prompt is None:  # no prompt tokens: an empty prompt puts the canvas on device (else the model's)
        prompt = torch.zeros((batch_size, 0), dtype=torch.int64, device=device or device_of(model) or "cpu")
    else:
        prompt = C.token_ids("prompt", prompt, dims=(2,), device=device)
    if prompt.shape[1] > context_length:
        raise ValueError(f"context_length ({context_length}) must be at least the prompt's width ({prompt.shape[1]})")
    needs_key = temperature != 0 or alg == "origin"
    try:
        return sample_smdm(model, prompt, length=context_length, steps=steps, alg=alg, temperature=temperature,
                           cfg_scale=cfg_scale, eps=eps, mask_id=dim, seed=call_key(seed, needs_key),
                           backend=backend)
    except (TypeError, ValueError) as exc:  # upstream calls the mask id dim
        raise type(exc)(re.sub(r"\bmask_id\b", "dim", str(exc))) from None
