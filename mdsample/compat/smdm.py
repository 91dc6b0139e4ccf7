"""Drop-in for SMDM's ``diff_sample(model, tokenizer, prompt, ...)`` (its conditional-generation evaluation).

``x = smdm.diff_sample(model, tokenizer, prompt, alg="greddy", steps=256, temperature=0.,
cfg_scale=2., context_length=1024)`` takes upstream's arguments and defaults and runs
:func:`mdsample.sample_smdm`, whose docstring lists the few documented differences. ``tokenizer``
is accepted and unused, as upstream; ``dim`` is the mask token id (32000: SMDM's vocabulary of
32000 text tokens plus the mask); ``device`` places the canvas (upstream hard-codes CUDA; here
None means the prompt's device).
"""
from __future__ import annotations

import torch

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
        prompt: int64 ``[B, P]`` prompt ids; None: ``batch_size`` unconditional sequences (needs
            ``cfg_scale=0``: upstream's default 2.0 guides by the prompt).
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
    if prompt is None and device is not None:  # no prompt tokens: an empty one puts the canvas on device
        prompt = torch.zeros((C.integer("batch_size", batch_size, low=1), 0), dtype=torch.int64, device=device)
    elif prompt is not None and device is not None:
        prompt = C.token_ids("prompt", prompt, dims=(2,), device=device)
    needs_key = temperature != 0 or alg == "origin"
    return sample_smdm(model, prompt, length=context_length, steps=steps, alg=alg, temperature=temperature,
                       cfg_scale=cfg_scale, eps=eps, mask_id=dim, batch_size=batch_size,
                       seed=call_key(seed, needs_key), backend=backend)
