"""Drop-in for Dream's ``model.diffusion_generate(inputs, generation_config=None, **kwargs)``.

``out = dream.diffusion_generate(model, input_ids, attention_mask=..., max_new_tokens=256,
steps=256, temperature=0.2, top_p=0.95, alg="entropy", alg_temp=0.,
return_dict_in_generate=True, output_history=True)`` takes the same options as the method
(from ``generation_config`` first, keyword arguments overriding them) and runs
:func:`mdsample.sample_dream`, whose docstring lists the few documented differences.

The model is the Dream checkpoint itself: it is wrapped with
``mdsample.models.hf_backbone(model, logits_shift=1)`` (Dream's output at i - 1 scores
token i; ``.model`` / ``.lm_head`` give logits only for the rows drawn), and a model whose
``config.model_type`` is Dream's gets its attention the way Dream's loop passes it
(``mask_format="dream"``: ``"full"``, or a ``[B, 1, L, L]`` mask with position ids for a padded
batch); other models get the ``[B, L]`` mask. A model already wrapped in an ``HFBackbone`` is
used as is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..models.hf import HFBackbone, hf_backbone
from ..samplers import _checks as C
from ..samplers.dream import _sample_dream
from ._seed import call_key

__all__ = ["diffusion_generate", "DreamOutput", "MASK_ID"]

MASK_ID = 151666  # Dream's <|mask|>

# Dream's generation options and their defaults (DreamGenerationConfig).
_DEFAULTS = dict(temperature=0.0, top_p=None, top_k=None, max_length=20, max_new_tokens=None, eps=1e-3, steps=512,
                 alg="origin", alg_temp=None, num_return_sequences=1, return_dict_in_generate=False,
                 output_history=False, mask_token_id=None)
_UNSUPPORTED = ("generation_tokens_hook_func", "generation_logits_hook_func")


@dataclass
class DreamOutput:
    """Dream's ``DreamModelOutput``: ``sequences`` int64 ``[B, L]`` and, with ``output_history``, the
    canvas after every step (a tuple of ``[B, L]``)."""

    sequences: torch.Tensor
    history: Optional[tuple] = None


def _options(model: Any, generation_config: Any, kwargs: dict) -> dict:
    opts = dict(_DEFAULTS)
    if generation_config is not None:
        opts.update({k: getattr(generation_config, k) for k in _DEFAULTS if hasattr(generation_config, k)})
    for name in _UNSUPPORTED:
        if name in kwargs:
            raise ValueError(f"{name} is not supported: mdsample computes logits only for the rows it draws, "
                             "so there is no full logits tensor or per-step canvas to hand to a hook")
    unknown = sorted(set(kwargs) - set(_DEFAULTS))
    if unknown:
        raise TypeError(f"diffusion_generate got unknown option(s) {unknown}; known: {sorted(_DEFAULTS)}")
    opts.update(kwargs)
    if opts["mask_token_id"] is None:
        for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
            if getattr(source, "mask_token_id", None) is not None:
                opts["mask_token_id"] = source.mask_token_id
                break
        else:
            opts["mask_token_id"] = MASK_ID
    return opts


def _new_tokens(model: Any, opts: dict, plen: int, *, explicit_max_length: bool) -> int:
    """Tokens to generate, by upstream's rule: ``max_new_tokens``; else an explicit ``max_length``
    (total length); else the default 20 new tokens, capped by ``max_position_embeddings``."""
    if opts["max_new_tokens"] is not None:
        return opts["max_new_tokens"]
    if explicit_max_length or opts["max_length"] != _DEFAULTS["max_length"]:
        new = opts["max_length"] - plen
        if new <= 0:
            raise ValueError(f"max_length ({opts['max_length']}) must exceed the input length ({plen}); "
                             "or give max_new_tokens")
        return new
    total = plen + opts["max_length"]
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int):
        total = min(total, limit)
    return total - plen


def diffusion_generate(model, inputs, generation_config=None, *, attention_mask=None, seed=None, backend="auto",
                       **kwargs):
    """Dream's ``diffusion_generate``: int64 ``[B, L]``, or a :class:`DreamOutput` with ``return_dict_in_generate``.

    Args:
        model: a Dream checkpoint (Hugging Face model), or an ``HFBackbone`` already aligned.
        inputs: int64 ``[B, P]`` prompt ids (left-padded, with ``attention_mask`` ``[B, P]``).
        generation_config: an object with Dream's option attributes (``DreamGenerationConfig``), or None.
        seed: Philox key; None draws one from the torch global RNG (as upstream draws from it).
        kwargs: Dream's options (``max_new_tokens``, ``max_length``, ``steps``, ``eps``, ``alg``,
            ``alg_temp``, ``temperature``, ``top_p``, ``top_k``, ``num_return_sequences``,
            ``return_dict_in_generate``, ``output_history``, ``mask_token_id``).
    """
    opts = _options(model, generation_config, kwargs)
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 2:
        raise ValueError(f"inputs must be an int64 tensor [B, P]; got {getattr(inputs, 'shape', type(inputs))}")
    plen = inputs.shape[1]
    new = _new_tokens(model, opts, plen, explicit_max_length="max_length" in kwargs)
    n = C.integer("num_return_sequences", opts["num_return_sequences"], low=1)
    if n != 1:
        inputs = inputs.repeat_interleave(n, 0)
        attention_mask = None if attention_mask is None else attention_mask.repeat_interleave(n, 0)
    backbone = model
    if not isinstance(model, HFBackbone):
        dream_type = str(getattr(getattr(model, "config", None), "model_type", "")).lower() == "dream"
        backbone = hf_backbone(model, logits_shift=1, mask_format="dream" if dream_type else "2d")
    history = [] if (opts["return_dict_in_generate"] and opts["output_history"]) else None
    needs_key = opts["temperature"] != 0 or opts["alg"] == "origin" or bool(opts["alg_temp"])
    key = call_key(seed, needs_key)
    x = _sample_dream(backbone, inputs, max_new_tokens=new, steps=opts["steps"], alg=opts["alg"],
                      alg_temp=opts["alg_temp"], temperature=opts["temperature"], top_p=opts["top_p"],
                      top_k=opts["top_k"], eps=opts["eps"], mask_id=opts["mask_token_id"],
                      attention_mask=attention_mask, seed=key, backend=backend, progress=False,
                      on_step=None if history is None else (lambda step, canvas: history.append(canvas)))
    if opts["return_dict_in_generate"]:
        return DreamOutput(sequences=x, history=None if history is None else tuple(history))
    return x
