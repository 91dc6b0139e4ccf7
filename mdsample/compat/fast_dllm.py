"""Drop-ins for Fast-dLLM's LLaDA ``generate.py``: ``generate``, ``generate_with_prefix_cache``,
``generate_with_dual_cache``, each returning ``(x, nfe)``; its step helpers ``get_transfer_index``
and ``get_transfer_index_dynamic``; and ``add_gumbel_noise`` / ``get_num_transfer_tokens`` (LLaDA's).

Same signatures as upstream (``model, prompt, steps, gen_length, block_length, temperature,
remasking, mask_id, threshold, factor, step_callback``) and the same algorithms (ALGORITHMS.md): LLaDA's
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
commits nothing for any sequence runs no forward here. ``step_callback(i)`` is called after each
step that ran, with ``i`` counting them from 0 across blocks (upstream's global step index).
"""
from __future__ import annotations

import torch

from ..ops import _validate as V
from ..ops.sampling import sample_categorical
from ..samplers import _checks as C
from ..samplers.remasking import select
from ._seed import call_key
from .llada import add_gumbel_noise, get_num_transfer_tokens, llada_call

__all__ = ["generate", "generate_with_prefix_cache", "generate_with_dual_cache", "get_transfer_index",
           "get_transfer_index_dynamic", "add_gumbel_noise", "get_num_transfer_tokens"]


def _run(model, prompt, steps, gen_length, block_length, temperature, remasking, mask_id, threshold, factor,
         step_callback, *, cache, attention_mask, seed, backend):
    if step_callback is not None and not callable(step_callback):
        raise TypeError(f"step_callback must be None or a callable step_callback(step: int); got "
                        f"{type(step_callback).__name__}")
    calls = {}
    x = llada_call(model, prompt, "Fast-dLLM", steps=steps, gen_length=gen_length, block_length=block_length,
                   temperature=temperature, cfg_scale=0.0, remasking=remasking, mask_id=mask_id, threshold=threshold,
                   factor=factor, attention_mask=attention_mask, seed=seed, backend=backend, cache=cache,
                   calls_out=calls, on_step=None if step_callback is None else _committing_steps(step_callback))
    return x, calls["forwards"]


def _committing_steps(step_callback):
    """An ``on_step`` hook calling ``step_callback(i)`` for the steps that committed a token, ``i`` counting them
    from 0: upstream's steps. (mdsample counts a budgeted step that commits nothing, as when a block has fewer
    masks than steps; upstream leaves the block then, and mdsample runs no forward for it.)"""
    state = {"seen": None, "count": 0}

    def hook(_step, canvas):
        if state["seen"] is None or not torch.equal(canvas, state["seen"]):
            step_callback(state["count"])
            state["count"] += 1
        state["seen"] = canvas

    return hook


def generate(model, prompt, steps=128, gen_length=128, block_length=128, temperature=0.,
             remasking='low_confidence', mask_id=126336, threshold=None, factor=None, step_callback=None, *,
             attention_mask=None, seed=None, backend="auto"):
    """Fast-dLLM's ``generate`` (no cache): ``(x int64 [B, P + gen_length], nfe int)``.

    Args:
        model: the LLaDA-style model (an HF module or an :class:`mdsample.models.Backbone`).
        prompt: int64 ``[B, P]`` token ids (on any device: moved to the model's).
        steps, gen_length, block_length: as upstream: ``gen_length`` tokens in blocks of ``block_length``,
            ``steps`` denoising steps shared evenly between the blocks.
        temperature: float >= 0 (0: argmax); remasking: ``"low_confidence"`` or ``"random"``.
        mask_id: the [MASK] token id.
        threshold, factor: Fast-dLLM's parallel rules (None: LLaDA's fixed count per step).
        step_callback: None or ``step_callback(i: int)``, called after each step that ran.
        attention_mask: None or bool / 0-1 int ``[B, P]`` (1 = real token) for left-padded prompts.
        seed: Philox key; None draws one from the torch global RNG when the call is random.
        backend: sampling backend, as :func:`mdsample.sample_categorical`.
    """
    return _run(model, prompt, steps, gen_length, block_length, temperature, remasking, mask_id, threshold, factor,
                step_callback, cache=None, attention_mask=attention_mask, seed=seed, backend=backend)


def generate_with_prefix_cache(model, prompt, steps=128, gen_length=128, block_length=128, temperature=0.,
                               remasking='low_confidence', mask_id=126336, threshold=None, factor=None,
                               step_callback=None, *, attention_mask=None, seed=None, backend="auto"):
    """Fast-dLLM's prefix-cache ``generate``: ``(x int64 [B, P + gen_length], nfe int)`` for ``prompt`` int64
    ``[B, P]`` (``attention_mask`` ``[B, P]``, 1 = real token); the arguments as :func:`generate`."""
    return _run(model, prompt, steps, gen_length, block_length, temperature, remasking, mask_id, threshold, factor,
                step_callback, cache="prefix", attention_mask=attention_mask, seed=seed, backend=backend)


def generate_with_dual_cache(model, prompt, steps=128, gen_length=128, block_length=128, temperature=0.,
                             remasking='low_confidence', mask_id=126336, threshold=None, factor=None,
                             step_callback=None, *, attention_mask=None, seed=None, backend="auto"):
    """Fast-dLLM's dual-cache ``generate``: ``(x int64 [B, P + gen_length], nfe int)`` for ``prompt`` int64
    ``[B, P]`` (``attention_mask`` ``[B, P]``, 1 = real token); the arguments as :func:`generate`."""
    return _run(model, prompt, steps, gen_length, block_length, temperature, remasking, mask_id, threshold, factor,
                step_callback, cache="dual", attention_mask=attention_mask, seed=seed, backend=backend)


def get_transfer_index(logits, temperature, remasking, mask_index, x, num_transfer_tokens, threshold=None, *,
                       seed=None, offset=0, backend="auto"):
    """Fast-dLLM's ``get_transfer_index``: ``(x0 int64 [B, L], transfer_index bool [B, L])``.

    Args:
        logits: ``[B, L, V]``; only the rows in ``mask_index`` are read.
        temperature: float >= 0 (0: argmax); remasking: ``"low_confidence"`` (confidence = p(x0) under
            ``softmax(logits)``, no temperature) or ``"random"`` (a torch uniform, as upstream).
        mask_index: bool ``[B, L]``, the positions that may be committed; x: int ``[B, L]``, the canvas
            (``x0`` keeps it elsewhere).
        num_transfer_tokens: int ``[B]`` (or ``[B, 1]``) >= 0: how many to commit per row (the top-k rule);
            unused with ``threshold``.
        threshold: None, or the threshold rule: the most confident position and every other with
            confidence >= threshold.
        seed: Philox key of the draw; None draws one from the torch global RNG when ``temperature > 0``.
        offset: Philox step counter: a loop with a fixed ``seed`` passes its step here for fresh noise.
        backend: sampling backend, as :func:`mdsample.sample_categorical`.

    As upstream, the mask token may be drawn (no ``mask_id`` here); the draw is exact and the
    confidences float32 probabilities (upstream's float64 softmax can order near-ties differently).
    Positions outside ``mask_index`` are never marked (upstream's top-k marks some when ``k`` exceeds a
    row's masked count; ``x0`` equals ``x`` there either way).
    """
    if threshold is None:
        if num_transfer_tokens is None:
            raise ValueError("get_transfer_index needs num_transfer_tokens (the top-k rule) or a threshold; got neither")
        return _transfer(logits, temperature, remasking, mask_index, x, seed, offset, backend, k=num_transfer_tokens)
    return _transfer(logits, temperature, remasking, mask_index, x, seed, offset, backend,
                     threshold=V.finite_number("threshold", threshold))


def get_transfer_index_dynamic(logits, temperature, remasking, mask_index, x, num_transfer_tokens, factor=1, *,
                               seed=None, offset=0, backend="auto"):
    """Fast-dLLM's ``get_transfer_index_dynamic`` (the factor rule): ``(x0 int64 [B, L], transfer_index bool
    [B, L])``; arguments as :func:`get_transfer_index` (``num_transfer_tokens`` unused, as upstream). It
    commits the top-1, then the j-th most confident (j >= 2) while ``c_(j) >= 1 - factor / (j + 1)``:
    exactly the passing prefix (upstream's loop also commits the least confident candidate when only it
    fails; mdsample.samplers.remasking says more)."""
    return _transfer(logits, temperature, remasking, mask_index, x, seed, offset, backend,
                     factor=V.finite_number("factor", factor, low=0.0))


def _transfer(logits, temperature, remasking, mask_index, x, seed, offset, backend, *, k=None, **rule):
    logits = V.as_tensor("logits", logits)
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, L, V]; got shape {tuple(logits.shape)}")
    mask_index = V.as_tensor("mask_index", mask_index).to(logits.device)  # upstream's tensors may sit anywhere
    x = C.token_ids("x", x, dims=(2,), device=logits.device)
    for name, t in (("mask_index", mask_index), ("x", x)):
        if t.shape != logits.shape[:2]:
            raise ValueError(f"{name} must have the logits' leading shape {tuple(logits.shape[:2])}; got "
                             f"{tuple(t.shape)}")
    if mask_index.dtype != torch.bool:
        raise TypeError(f"mask_index must be a bool tensor; got {mask_index.dtype}")
    if k is not None:  # num_transfer_tokens, the top-k rule's counts
        k = V.as_tensor("num_transfer_tokens", k)
        if k.dtype not in V.INT_DTYPES or k.dim() not in (1, 2) or (k.dim() == 2 and k.shape[1] != 1):
            raise ValueError(f"num_transfer_tokens must be an integer tensor [B] (or [B, 1]); got {k.dtype} "
                             f"{tuple(k.shape)}")
        if k.numel() != logits.shape[0]:
            raise ValueError(f"num_transfer_tokens must hold one count per row ({logits.shape[0]}); got shape "
                             f"{tuple(k.shape)}")
        if k.numel() and bool((k < 0).any()):
            raise ValueError(f"num_transfer_tokens must hold counts >= 0; got {k.reshape(-1).tolist()}")
        rule["k"] = k.reshape(-1).to(device=logits.device, dtype=torch.int64)
    if remasking not in ("low_confidence", "random"):
        raise ValueError(f"remasking must be 'low_confidence' or 'random' (Fast-dLLM); got {remasking!r}")
    temperature = V.finite_number("temperature", temperature, low=0.0)
    res = sample_categorical(logits, temperature=temperature, seed=call_key(seed, temperature != 0),
                             offset=offset, active=mask_index, fallback=x, return_stats=True, stats_temperature=1.0,
                             backend=backend)
    if remasking == "low_confidence":
        conf = res.prob.to(torch.float64)
    else:
        # float32, as upstream's torch.rand((B, L)): the same draws from the same global RNG state
        conf = torch.rand(mask_index.shape, device=logits.device).double()
    return res.tokens, select(conf, mask_index, **rule)
