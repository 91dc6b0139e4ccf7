"""Drop-ins for SMDM's ``diff_sample(model, tokenizer, prompt, ...)`` (its conditional-generation evaluation)
and for its likelihood harness: ``eval_target_nll_mc`` (the Monte Carlo NLL bound of a target given a
prefix), ``eval_target_nll_ar`` (the chain-rule NLL) and ``suffix_greedy_prediction`` (whether greedy
decoding reproduces the target, lm-eval's ``is_greedy``).

``x = smdm.diff_sample(model, tokenizer, prompt, alg="greddy", steps=256, temperature=0.,
cfg_scale=2., context_length=1024)`` takes upstream's arguments and defaults and runs
:func:`mdsample.sample_smdm`, whose docstring lists the few documented differences. ``tokenizer``
is accepted and unused, as upstream; ``dim`` is the mask token id (32000: SMDM's vocabulary of
32000 text tokens plus the mask); ``device`` places the canvas (upstream hard-codes CUDA; here
None means the model's device, else the prompt's). The harness functions move their inputs to the
model's device, as its callers do. On a GPU the model runs under bf16 autocast, as every SMDM
forward does (keyword-only ``autocast=False`` keeps the model's own dtype).
"""
from __future__ import annotations

import contextlib
import re

import torch

from ..models.protocol import device_of
from ..samplers import _checks as C
from ..samplers.chain_rule import chain_rule_likelihood
from ..samplers.likelihood import likelihood
from ..samplers.schedules import LogLinear
from ..samplers.llada import _generate
from ..samplers.smdm import sample_smdm
from ._seed import call_key, key_from_global_rng

__all__ = ["diff_sample", "eval_target_nll_mc", "eval_target_nll_ar", "suffix_greedy_prediction"]


def diff_sample(model, tokenizer=None, prompt=None, batch_size=1, alg="origin", steps=512, temperature=1.,
                cfg_scale=2., context_length=2048, eps=1e-5, dim=32000, device=None, *, seed=None, autocast=True,
                backend="auto"):
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
        device: where the canvas lives (None: the model's device, else the prompt's).
        seed: Philox key; None draws one from the torch global RNG (upstream draws from it).
        autocast: run the model under bf16 autocast when the canvas is on a GPU (upstream's forward).
        backend: sampling-op backend.
    """
    if prompt is None and cfg_scale:
        raise ValueError(f"cfg_scale={cfg_scale} guides by the prompt, and prompt is None: pass cfg_scale=0. for "
                         "unconditional samples")
    batch_size = C.integer("batch_size", batch_size, low=1)  # upstream takes B from a given prompt
    context_length = C.integer("context_length", context_length, low=1)
    device = device or device_of(model)
    if prompt is None:  # no prompt tokens: an empty prompt puts the canvas on device
        prompt = torch.zeros((batch_size, 0), dtype=torch.int64, device=device or "cpu")
    else:
        prompt = C.token_ids("prompt", prompt, dims=(2,), device=device)
    if prompt.shape[1] > context_length:
        raise ValueError(f"context_length ({context_length}) must be at least the prompt's width ({prompt.shape[1]})")
    needs_key = temperature != 0 or alg == "origin"
    with _as_upstream({"mask_id": "dim"}, prompt.device, autocast):
        return sample_smdm(model, prompt, length=context_length, steps=steps, alg=alg, temperature=temperature,
                           cfg_scale=cfg_scale, eps=eps, mask_id=dim, seed=call_key(seed, needs_key),
                           backend=backend)


@contextlib.contextmanager
def _as_upstream(names: dict, device: torch.device, autocast: bool):
    """The body as SMDM runs it: the model under bf16 autocast on a GPU (``autocast``; SMDM's sampler and
    harness wrap every forward in it), and argument errors with mdsample's argument names replaced by
    upstream's (the caller's)."""
    amp = contextlib.nullcontext()
    if C.flag("autocast", autocast) and device.type == "cuda":
        amp = torch.autocast("cuda", dtype=torch.bfloat16)
    try:
        with amp:
            yield
    except (TypeError, ValueError) as exc:
        msg = str(exc)
        for ours, theirs in names.items():
            msg = re.sub(rf"\b{ours}\b", theirs, msg)
        raise type(exc)(msg) from None


# The harness functions' names for what mdsample's functions call x, prompt and cfg_scale.
_HARNESS_NAMES = {"x": "prefix / target", "prompt": "prefix", "cfg_scale": "cfg"}


def _pair(model, prefix, target):
    """``(x [1, P + T], P)``: SMDM's 1-d prefix and target ids, checked, side by side on the model's device
    (else the prefix's)."""
    prefix = C.token_ids("prefix", prefix, dims=(1,), device=device_of(model))
    target = C.token_ids("target", target, dims=(1,), device=prefix.device)
    if target.numel() == 0:
        raise ValueError("target must hold at least one token")
    return torch.cat([prefix, target]).unsqueeze(0), prefix.numel()


def eval_target_nll_mc(model, prefix, target, *, mc_num=1024, batch_size=32, cfg=0., mask_id=32000, eps=1e-3,
                       seed=None, autocast=True, backend="auto") -> float:
    """SMDM's ``_eval_target_nll_mc``: the Monte Carlo bound of ``-log p(target | prefix)`` (float, nats).

    SMDM's estimator (shifted lattice of mask rates, each target token masked with probability t, masked
    cross-entropy over the full vocabulary weighted 1/t) is :func:`mdsample.likelihood`'s SMDM preset
    (``mode="shifted"``, ``masking="bernoulli"``, ``subs=False``, ``schedule=LogLinear(eps=0.0)``: the mask
    probability is t itself, up to 1, as SMDM's). Differences: one lattice over all ``mc_num`` draws (SMDM
    restarts it every mini-batch of ``batch_size``: the same expectation, more variance), and mask rates in
    ``[eps, 1]`` (SMDM's run down to 0, where the 1/t weight has infinite variance; the truncation moves the
    expectation by about ``eps`` times the target's NLLs given all other tokens).

    Args:
        model, prefix, target, cfg, mask_id: as :func:`eval_target_nll_ar`.
        mc_num: draws (a multiple of ``batch_size``, as upstream asserts); batch_size: draws per model call.
        eps: the lowest mask rate, in (0, 1).
        seed: Philox key; None draws one from the torch global RNG (upstream draws from it).
        autocast: run the model under bf16 autocast on a GPU, as SMDM's harness does.
        backend: the ops' backend ("auto", "cuda", "triton", "cpu", "reference").
    """
    x, plen = _pair(model, prefix, target)
    mc_num = C.integer("mc_num", mc_num, low=1)
    batch_size = C.integer("batch_size", batch_size, low=1)
    if mc_num % batch_size:
        raise ValueError(f"mc_num ({mc_num}) must be a multiple of batch_size ({batch_size}), as upstream asserts")
    with _as_upstream(_HARNESS_NAMES, x.device, autocast):
        est = likelihood(model, x, prompt_len=plen or None, mc_samples=mc_num, batch_size=batch_size, mode="shifted",
                         cfg_scale=cfg if plen else 0.0, masking="bernoulli", eps=eps, schedule=LogLinear(eps=0.0),
                         subs=False, mask_id=mask_id,
                         seed=key_from_global_rng(seed), backend=backend)
    return -float(est.log_likelihood[0])


def eval_target_nll_ar(model, prefix, target, *, batch_size=32, cfg=0., mask_id=32000, autocast=True,
                       backend="auto") -> float:
    """SMDM's ``_eval_target_nll_ar``: ``-log p(target | prefix)`` by the left-to-right chain rule (float, nats).

    Args:
        model: ``model(x int64 [B, L]) -> logits [B, L, V]``, or any backbone (with ``hidden``/``head`` only the
            scored rows get logits).
        prefix, target: int 1-d token ids (``[P]``, ``[T]``, T >= 1).
        batch_size: model inputs per call (the target's T inputs in ``ceil(T / batch_size)`` calls).
        cfg: unsupervised CFG weight (the unconditional input masks the prefix; without a prefix it is a no-op).
        mask_id: the mask token id (SMDM's 32000).
        autocast: run the model under bf16 autocast on a GPU, as SMDM's harness does.
        backend: the ops' backend ("auto", "cuda", "triton", "cpu", "reference").
    """
    x, plen = _pair(model, prefix, target)
    with _as_upstream(_HARNESS_NAMES, x.device, autocast):
        est = chain_rule_likelihood(model, x, prompt_len=plen, batch_size=batch_size, cfg_scale=cfg if plen else 0.0,
                                    mask_id=mask_id, subs=False, backend=backend)
    return -float(est.log_likelihood[0])


def suffix_greedy_prediction(model, prefix, target, *, cfg=0., mask_id=32000, autocast=True,
                             backend="auto") -> bool:
    """SMDM's ``suffix_greedy_prediction``: does greedy decoding of ``len(target)`` masks after ``prefix``, one
    position per step (the most confident argmax), give exactly ``target``?

    Args as :func:`eval_target_nll_ar` (without ``batch_size``: one forward per target token). Differences
    from upstream: the mask token is never decoded and confidences are ``p(x0)`` of the softmax without it
    (upstream's softmax includes it, so with a finite mask logit its order, hence its answer, can differ), and
    ties in confidence go to the lower position (samplers/llada.py).
    """
    x, plen = _pair(model, prefix, target)
    n = x.shape[1] - plen
    with _as_upstream(_HARNESS_NAMES, x.device, autocast):
        out = _generate(model, x[:, :plen], steps=n, gen_length=n, block_length=n, temperature=0.0,
                        cfg_scale=cfg if plen else 0.0, remasking="low_confidence", mask_id=mask_id, threshold=None,
                        factor=None, attention_mask=None, seed=0, backend=backend, progress=False)
    return bool(torch.equal(out[0, -n:], x[0, -n:]))
