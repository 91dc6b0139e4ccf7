"""Drop-ins for LLaDA's ``generate.py`` (``generate``, ``add_gumbel_noise``, ``get_num_transfer_tokens``)
and ``get_log_likelihood.py`` (``get_log_likelihood``).

Same call signatures and meaning as upstream (ALGORITHMS.md), with the differences that
:func:`mdsample.generate` documents (mask token never sampled, ties to the lower position)
and exact float64 sampling without the ``[B, L, V]`` float64 tensor.
"""
from __future__ import annotations

import torch

from ..models.protocol import declared_vocab_size
from ..ops import _validate as V
from ..ops.sampling import sample_categorical
from ..samplers import _checks as C
from ..samplers.likelihood import likelihood
from ..samplers.llada import _generate
from ..samplers.remasking import transfer_counts
from ._device import on_model_device
from ._seed import call_key, key_from_global_rng

__all__ = ["generate", "add_gumbel_noise", "gumbel_argmax", "get_num_transfer_tokens", "get_log_likelihood",
           "EOS_ID", "EOT_ID"]

EOS_ID = 126081  # LLaDA's <|endoftext|>
EOT_ID = 126348  # LLaDA's <|eot_id|>


def gumbel_argmax(logits, temperature, *, seed=None, offset=0, backend="auto"):
    """``argmax(add_gumbel_noise(logits, temperature), -1)`` computed directly: int64 ``[...]``.

    An exact draw from ``softmax(logits / temperature)`` (argmax, lowest index on ties, at 0)
    for ``logits`` ``[..., V]``; ``seed`` None draws the Philox key from the torch global RNG.
    """
    temperature = V.finite_number("temperature", temperature, low=0.0)
    key = 0 if temperature == 0 else key_from_global_rng(seed)
    return sample_categorical(logits, temperature=temperature, seed=key, offset=offset, backend=backend)


def add_gumbel_noise(logits, temperature, *, seed=None, offset=0, backend="auto"):
    """LLaDA's ``add_gumbel_noise``: scores whose argmax over the last dim is a draw from ``softmax(l / T)``.

    Args:
        logits: ``[..., V]`` float tensor (or an array: read as a torch tensor, see ``mdsample.as_tensor``).
        temperature: float >= 0. At 0 the logits come back as given (the same tensor object, as upstream).
        seed: Philox key; None draws one from the torch global RNG.
        offset: Philox counter offset (a step index), as :func:`gumbel_argmax`.
        backend: sampling backend, as :func:`mdsample.sample_categorical`.

    Returns:
        ``[..., V]`` torch tensor in the logits' dtype (not float64). At ``temperature > 0``: 0 at the
        sampled token, -inf elsewhere; at 0: ``logits`` itself. Only its argmax is meaningful (the only use
        upstream makes of it); prefer :func:`gumbel_argmax`, which returns the tokens without this tensor.
    """
    temperature = V.finite_number("temperature", temperature, low=0.0)
    logits = V.as_tensor("logits", logits)  # an array comes back a tensor at every temperature
    if temperature == 0:
        return logits
    tokens = gumbel_argmax(logits, temperature, seed=seed, offset=offset, backend=backend)
    out = torch.full_like(logits, -torch.inf)
    return out.scatter_(-1, tokens.unsqueeze(-1), 0.0)


def get_num_transfer_tokens(mask_index, steps):
    """LLaDA's ``get_num_transfer_tokens``: int64 ``[B, steps]`` from bool ``mask_index`` ``[B, L]``."""
    mask_index = V.as_tensor("mask_index", mask_index)
    if mask_index.dim() != 2 or mask_index.dtype != torch.bool:  # upstream's (x == mask_id), summed over dim 1
        raise ValueError(f"mask_index must be bool [B, L]; got {mask_index.dtype} of shape {tuple(mask_index.shape)}")
    return transfer_counts(mask_index, steps)


def llada_call(model, prompt, upstream: str, *, remasking, temperature, seed, attention_mask, **kw):
    """:func:`mdsample.samplers.llada._generate` behind a drop-in of ``upstream`` (LLaDA, Fast-dLLM): their two
    remasking rules only, the Philox key as :func:`call_key` gives it (random only when the call is), and the
    prompt on the model's device (the result is there too, as upstream's)."""
    if remasking not in ("low_confidence", "random"):
        raise ValueError(f"remasking must be 'low_confidence' or 'random' ({upstream}); got {remasking!r}")
    key = call_key(seed, temperature != 0 or remasking == "random")
    prompt, attention_mask = on_model_device(model, prompt=prompt, attention_mask=attention_mask)
    return _generate(model, prompt, remasking=remasking, temperature=temperature, seed=key, progress=False,
                     attention_mask=attention_mask, **kw)


def generate(model, prompt, attention_mask=None, steps=128, gen_length=128, block_length=128, temperature=0.,
             cfg_scale=0., remasking='low_confidence', mask_id=126336, logits_eos_inf=False,
             confidence_eos_eot_inf=False, *, seed=None, backend="auto"):
    """LLaDA's ``generate`` with its signature: int64 ``[B, P + gen_length]`` for ``prompt`` int64 ``[B, P]``
    (``attention_mask`` None or bool / 0-1 int ``[B, P]``, 1 = real token, for left-padded prompts).

    ``logits_eos_inf`` bans EOS (126081) from the draw; ``confidence_eos_eot_inf`` removes
    EOT (126348) from the confidence softmax, and at ``temperature == 0`` EOS too (upstream's
    flags; at 0 upstream's noised logits are the logits themselves, so its chained assignment
    removes both, after the draw). ``seed`` None draws the Philox key from the torch global RNG.
    See :func:`mdsample.generate` for the rest.
    """
    if isinstance(attention_mask, int) and not isinstance(attention_mask, bool):
        raise TypeError(f"attention_mask (generate's third argument) got the int {attention_mask}: LLaDA's earlier "
                        "generate(model, prompt, steps, gen_length, ...) had no attention_mask; pass steps, gen_length, "
                        "... by keyword")
    vocab = declared_vocab_size(model)  # not a Backbone: generate builds the one of this call
    for flag, on, tok in (("logits_eos_inf", logits_eos_inf, EOS_ID), ("confidence_eos_eot_inf", confidence_eos_eot_inf,
                                                                       EOT_ID)):
        if on and vocab is not None and tok >= vocab:
            raise ValueError(f"{flag} removes LLaDA's token {tok}, which the model's vocabulary of size {vocab} lacks")
    return llada_call(model, prompt, "LLaDA", steps=steps, gen_length=gen_length, block_length=block_length,
                      temperature=temperature, cfg_scale=cfg_scale, remasking=remasking, mask_id=mask_id,
                      threshold=None, factor=None, attention_mask=attention_mask, seed=seed, backend=backend,
                      logits_exclude=(EOS_ID,) if logits_eos_inf else (),
                      confidence_exclude=_confidence_exclude(confidence_eos_eot_inf, temperature))


def _confidence_exclude(confidence_eos_eot_inf, temperature):
    """The tokens upstream's ``confidence_eos_eot_inf`` removes from the confidence softmax."""
    if not confidence_eos_eot_inf:
        return ()
    return (EOS_ID, EOT_ID) if V.finite_number("temperature", temperature, low=0.0) == 0 else (EOT_ID,)


def get_log_likelihood(model, prompt, answer, mc_num=128, batch_size=16, cfg_scale=0., mask_id=126336, *, seed=None,
                       backend="auto"):
    """LLaDA's ``get_log_likelihood``: a float estimate of ``log p(answer | prompt)``.

    Args:
        model: mask predictor ``model(x [n, L]) -> logits`` (or ``.logits``).
        prompt: int ``[l1]``; answer: int ``[l2]`` (1-d, as upstream).
        mc_num: Monte Carlo draws; batch_size: draws per model call; cfg_scale: unsupervised CFG weight.
        mask_id: the mask token id (LLaDA's 126336).
        seed: Philox key; None draws one from the torch global RNG.
        backend: the ops' backend ("auto", "cuda", "triton", "cpu", "reference").

    LLaDA's estimator (mdsample.samplers.likelihood): exactly k answer tokens masked, k on
    LLaDA's shifted count lattice, weight ``l2 / k``, softmax over the full vocabulary. The
    lattice spans all ``mc_num`` draws (upstream restarts it in every batch of ``batch_size``),
    and the masked rows are scored without a ``[n, L, V]`` log-softmax. As upstream, the draws are
    whole batches: ``(mc_num // batch_size) * batch_size`` of them (>= 1 batch). For the estimate with
    its standard error use :func:`mdsample.likelihood` with ``mode="shifted", masking="count",
    subs=False``.
    """
    prompt, answer = on_model_device(model, prompt=prompt, answer=answer)
    for name, t in (("prompt", prompt), ("answer", answer)):
        if t.dim() != 1:
            raise ValueError(f"{name} must be 1-d token ids [l]; got shape {tuple(t.shape)}")
    if answer.numel() == 0:
        raise ValueError("answer must hold at least one token")
    mc_num, batch_size = C.integer("mc_num", mc_num, low=1), C.integer("batch_size", batch_size, low=1)
    if mc_num < batch_size:
        raise ValueError(f"mc_num ({mc_num}) must be >= batch_size ({batch_size}): LLaDA draws whole batches "
                         "(mc_num // batch_size of them)")
    x = torch.cat([prompt, answer.to(prompt.device)]).unsqueeze(0)
    est = likelihood(model, x, prompt_len=prompt.numel(), mc_samples=mc_num // batch_size * batch_size,
                     batch_size=batch_size, mode="shifted",
                     masking="count", cfg_scale=cfg_scale, mask_id=mask_id, subs=False,
                     seed=key_from_global_rng(seed), backend=backend)
    return float(est.log_likelihood[0])
