"""The chain-rule log-likelihood of a masked diffusion model (SMDM's ``nll_type="chain_rule"``).

For a sequence with answer positions ``a_1 < ... < a_n`` (all positions, or those after a
prompt), the model's left-to-right factorisation

    log p(x_A | x_prompt) = sum_j log p_theta(x_{a_j} | x_prompt, x_{a_1..a_{j-1}}, masks at a_j..a_n)

is computed exactly: input j is the sequence with ``a_j .. a_n`` masked, and only position
``a_j`` of it is scored. No Monte Carlo, no standard error; ``n`` model inputs per sequence
(SMDM's zero-shot evaluation scores likelihoods this way besides its Monte Carlo ELBO). With
the exact conditionals of a joint distribution it equals ``log p`` (tested); for a real model it
is the likelihood of one decoding order, neither the ELBO nor a bound on the model's "own"
likelihood (a masked model's conditionals need not come from one joint).

Cost: SMDM's code computes the full logits of all ``n`` inputs (``n x L x V``) and takes the
cross-entropy of ``n`` rows; here, with a backbone offering ``hidden``/``head``, only those
``n`` rows go through the head, and otherwise :func:`mdsample.masked_nll` reads only them.
"""
from __future__ import annotations

import torch

from ..models.protocol import Backbone
from . import _checks as C
from .forward import RowForward
from .likelihood import LikelihoodEstimate, _chunk_values, _scored
from .progress import Progress

__all__ = ["chain_rule_likelihood"]


def chain_rule_likelihood(model, x, *, prompt_len=None, batch_size=16, cfg_scale=0.0, mask_id=None, subs=True,
                          attention_mask=None, backend="auto", progress=False) -> LikelihoodEstimate:
    """Exact left-to-right chain-rule ``log p(x)`` (or ``log p(answer | prompt)``) per sequence.

    Args:
        model: a backbone ``model(x [n, L]) -> logits [n, L, V]`` (or ``.logits``); with
            ``hidden``/``head`` only the scored rows' logits are computed.
        x: integer ``[B, L]`` token ids, without ``mask_id`` except in padding. Not modified.
        prompt_len: None, int or integer ``[B]``: positions ``< prompt_len`` are the prompt
            (never masked, conditioned on); the rest are scored. In [0, L).
        batch_size: model inputs per call (each sequence has one per answer token).
        cfg_scale: SMDM / LLaDA unsupervised CFG weight w >= 0 (needs ``prompt_len``): scores
            ``l_u + (w + 1)(l_c - l_u)`` with the prompt masked in the unconditional input.
        mask_id: the mask token (default: the model's ``mask_id`` / ``config.mask_id`` / ``config.mask_token_id``).
        subs: exclude the mask token from the model's softmax (MDLM SUBS); False = SMDM's code.
        attention_mask: ``[B, L]`` (bool or int, 1 = real token): padding is never masked nor
            scored and reaches the model as this mask. None: every token is real.
        backend: backend of the ops ("auto", "cpu", "triton", "reference", ...).
        progress: show a tqdm bar over the model calls.

    Returns:
        :class:`mdsample.LikelihoodEstimate`: ``log_likelihood`` float64 ``[B]``, ``stderr`` float64
        ``[B]`` of zeros (the value is exact, not an estimate), ``num_tokens`` int64 ``[B]``.
    """
    x = C.token_ids("x", x, dims=(2,))
    batch, length = x.shape
    device = x.device
    mask_id = C.mask_token(model, mask_id, None)
    chunk = C.integer("batch_size", batch_size, low=1)
    cfg = C.real("cfg_scale", cfg_scale, low=0.0)
    subs = C.flag("subs", subs)
    progress = C.flag("progress", progress)
    C.positions_fit(batch, length)
    answer, real = _scored(x, prompt_len, attention_mask, mask_id, cfg)
    backbone = Backbone(model)
    C.tokens_in_vocab("x", x, backbone.vocab_size)

    # Input (b, a) masks the answer positions of b from a on and scores position a.
    inputs_b, inputs_a = answer.nonzero(as_tuple=True)
    n_answer = answer.sum(1)
    nll_kw = dict(mask_id=mask_id, exclude=mask_id if subs else None, guidance_scale=cfg, backend=backend)
    cols = torch.arange(length, device=device)
    values = torch.zeros(batch, dtype=torch.float64, device=device)
    total = inputs_b.numel()
    bar = Progress(progress, -(-total // chunk), "chain_rule_likelihood", backbone)
    with torch.no_grad(), bar:
        for start in range(0, total, chunk):
            bs, at = inputs_b[start:start + chunk], inputs_a[start:start + chunk]
            xs, ans_rows = x.index_select(0, bs), answer.index_select(0, bs)
            xt = xs.masked_fill(ans_rows & (cols >= at.unsqueeze(1)), mask_id)
            scored = cols == at.unsqueeze(1)
            am = None if real is None else real.index_select(0, bs)
            fwd = RowForward(backbone, mask_id=mask_id, cfg_scale=cfg, uncond_mask=~ans_rows, attention_mask=am)
            ones = torch.ones(bs.numel(), dtype=torch.float64, device=device)
            values.index_add_(0, bs, _chunk_values(fwd, xs, xt, scored, ones, None, nll_kw))
            bar.step()
    return LikelihoodEstimate(-values, torch.zeros(batch, dtype=torch.float64, device=device), n_answer)
