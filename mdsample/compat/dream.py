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

from dataclasses import dataclass, fields
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
# Accepted and ignored: DreamGenerationConfig holds them (so upstream's ``GenerationConfig.update`` takes them, and eval
# harnesses pass pad / eos ids), but Dream's sampling loop never reads them.
_IGNORED = ("pad_token_id", "eos_token_id", "bos_token_id", "generation_kwargs")


@dataclass(eq=False)
class DreamOutput:
    """Dream's ``DreamModelOutput`` (a transformers ``ModelOutput``), without needing transformers: ``sequences``
    int64 ``[B, L]`` and, with ``output_history``, ``history``, the canvas after every step (a list of int64
    ``[B, L]``; None otherwise).

    As a ``ModelOutput``, it is also a mapping of its fields that are not None: ``out["sequences"]``, ``out[0]``,
    ``out.to_tuple()``, ``keys()`` / ``values()`` / ``items()``, ``"history" in out``, ``len`` and iteration (over
    keys) see ``history`` only when it was asked for.
    """

    sequences: torch.Tensor
    history: Optional[list] = None

    def _set(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def keys(self):
        """The set fields' names, as ``transformers.ModelOutput``."""
        return self._set().keys()

    def values(self):
        """The set fields' values, as ``transformers.ModelOutput``."""
        return self._set().values()

    def items(self):
        """``(name, value)`` of the set fields, as ``transformers.ModelOutput``."""
        return self._set().items()

    def to_tuple(self) -> tuple:
        """The fields that are not None, in order."""
        return tuple(self._set().values())

    def __getitem__(self, k):
        # A name indexes the mapping (KeyError for a None field); an int or slice the tuple view, as ModelOutput.
        return self._set()[k] if isinstance(k, str) else self.to_tuple()[k]

    def __contains__(self, k) -> bool:
        return k in self._set()

    def __iter__(self):
        return iter(self._set())

    def __len__(self) -> int:
        return len(self._set())


def _options(model: Any, generation_config: Any, kwargs: dict) -> dict:
    opts = dict(_DEFAULTS)
    if generation_config is not None:
        opts.update({k: getattr(generation_config, k) for k in _DEFAULTS if hasattr(generation_config, k)})
    for name in _UNSUPPORTED:
        if name in kwargs:
            raise ValueError(f"{name} is not supported: mdsample computes logits only for the rows it draws, "
                             "so there is no full logits tensor or per-step canvas to hand to a hook")
    unknown = sorted(set(kwargs) - set(_DEFAULTS) - set(_IGNORED))
    if unknown:  # upstream drops names its config lacks silently; a typo here should not pass unnoticed
        raise TypeError(f"diffusion_generate got unknown option(s) {unknown}; known: {sorted([*_DEFAULTS, *_IGNORED])}")
    opts.update((k, v) for k, v in kwargs.items() if k in _DEFAULTS)
    if opts["alg"] == "origin":
        opts["alg_temp"] = None  # upstream's "origin" branch never reads it (the sampler would refuse one > 0)
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
        if total <= plen:
            raise ValueError(f"the input length ({plen}) reaches the model's max_position_embeddings ({limit}): no "
                             "room for the default 20 new tokens")
    return total - plen


def diffusion_generate(model, inputs, generation_config=None, *, attention_mask=None, seed=None, backend="auto",
                       **kwargs):
    """Dream's ``diffusion_generate``: int64 ``[B, L]``, or a :class:`DreamOutput` with ``return_dict_in_generate``.

    Args:
        model: a Dream checkpoint (Hugging Face model), or an ``HFBackbone`` already aligned.
        inputs: int64 ``[B, P]`` prompt ids (left-padded, with ``attention_mask`` ``[B, P]``).
        generation_config: an object with Dream's option attributes (``DreamGenerationConfig``), or None.
        attention_mask: int/bool ``[B, P]`` (1 = real token) or None.
        seed: Philox key; None draws one from the torch global RNG (as upstream draws from it).
        backend: the sampling op's backend ("auto", "cuda", "triton", "cpu", "reference").
        kwargs: Dream's options (``max_new_tokens``, ``max_length``, ``steps``, ``eps``, ``alg``,
            ``alg_temp``, ``temperature``, ``top_p``, ``top_k``, ``num_return_sequences``,
            ``return_dict_in_generate``, ``output_history``, ``mask_token_id``); ``pad_token_id``,
            ``eos_token_id``, ``bos_token_id`` and ``generation_kwargs`` are accepted and ignored, as Dream's loop
            ignores them. ``alg_temp`` is ignored with ``alg="origin"``, as upstream.
    """
    opts = _options(model, generation_config, kwargs)
    inputs = C.V.as_tensor("inputs", inputs)
    if inputs.dtype not in C.V.INT_DTYPES or inputs.dim() != 2:
        raise ValueError(f"inputs must be an integer tensor [B, P] of token ids; got {inputs.dtype} of shape "
                         f"{tuple(inputs.shape)}")
    plen = inputs.shape[1]
    new = _new_tokens(model, opts, plen, explicit_max_length="max_length" in kwargs)
    n = C.integer("num_return_sequences", opts["num_return_sequences"], low=1)
    if n != 1:
        inputs = inputs.repeat_interleave(n, 0)
        attention_mask = None if attention_mask is None else C.V.as_tensor(
            "attention_mask", attention_mask).repeat_interleave(n, 0)
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
        return DreamOutput(sequences=x, history=history)
    return x
