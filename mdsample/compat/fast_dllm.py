"""Drop-ins for Fast-dLLM's LLaDA ``generate.py``: ``generate``, ``generate_with_prefix_cache``,
``generate_with_dual_cache``, each returning ``(x, nfe)``.

Same signatures as upstream (``model, prompt, steps, gen_length, block_length, temperature,
remasking, mask_id, threshold, factor``) and the same algorithms (ALGORITHMS.md): LLaDA's
fixed schedule, or Fast-dLLM's threshold / factor rule, with no cache, the prefix cache (a full
forward at each block start, then block + suffix against the cached prefix) or the dual cache
(then only the block). They run :func:`mdsample.generate` with ``cache=None`` / ``"prefix"`` /
``"dual"``, whose docstring lists the documented differences (mask token never drawn, ties to
the lower position, the factor rule's exact prefix); batches of any size work in every mode
(upstream's dual cache assumes batch 1), left-padded ones too with the keyword-only
``attention_mask`` ``[B, P]`` (1 = real token; not in upstream's signature). The cached modes
need a backbone offering a KV cache: mdsample's Transformer, e.g.
``mdsample.models.from_llada(hf_llada)`` for LLaDA-8B.

``nfe`` is the number of model calls mdsample made, which is at most upstream's: a step that
commits nothing for any sequence runs no forward here.
"""
from __future__ import annotations

from .llada import llada_call

__all__ = ["generate", "generate_with_prefix_cache", "generate_with_dual_cache"]


def _run(model, prompt, steps, gen_length, block_length, temperature, remasking, mask_id, threshold, factor, *,
         cache, attention_mask, seed, backend):
    calls = {}
    x = llada_call(model, prompt, "Fast-dLLM", steps=steps, gen_length=gen_length, block_length=block_length,
                   temperature=temperature, cfg_scale=0.0, remasking=remasking, mask_id=mask_id, threshold=threshold,
                   factor=factor, attention_mask=attention_mask, seed=seed, backend=backend, cache=cache,
                   calls_out=calls)
    return x, calls["forwards"]


def generate(model, prompt, steps=128, gen_length=128, block_length=128, temperature=0.,
             remasking='low_confidence', mask_id=126336, threshold=None, factor=None, *, attention_mask=None, seed=None,
             backend="auto"):
    """Fast-dLLM's ``generate`` (no cache): ``(x int64 [B, P + gen_length], nfe int)``."""
    return _run(model, prompt, steps, gen_length, block_length, temperature, remasking, mask_id, threshold, factor,
                cache=None, attention_mask=attention_mask, seed=seed, backend=backend)


def generate_with_prefix_cache(model, prompt, steps=128, gen_length=128, block_length=128, temperature=0.,
                               remasking='low_confidence', mask_id=126336, threshold=None, factor=None, *,
                               attention_mask=None, seed=None, backend="auto"):
    """Fast-dLLM's prefix-cache ``generate``: ``(x int64 [B, P + gen_length], nfe int)``."""
    return _run(model, prompt, steps, gen_length, block_length, temperature, remasking, mask_id, threshold, factor,
                cache="prefix", attention_mask=attention_mask, seed=seed, backend=backend)


def generate_with_dual_cache(model, prompt, steps=128, gen_length=128, block_length=128, temperature=0.,
                             remasking='low_confidence', mask_id=126336, threshold=None, factor=None, *,
                             attention_mask=None, seed=None, backend="auto"):
    """Fast-dLLM's dual-cache ``generate``: ``(x int64 [B, P + gen_length], nfe int)``."""
    return _run(model, prompt, steps, gen_length, block_length, temperature, remasking, mask_id, threshold, factor,
                cache="dual", attention_mask=attention_mask, seed=seed, backend=backend)
