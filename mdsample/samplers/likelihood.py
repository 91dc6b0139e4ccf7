"""Monte Carlo likelihood bounds of masked diffusion LMs: MDLM NELBO, SMDM and LLaDA estimators.

For a sequence ``x`` with answer positions ``A`` (all positions, or those after a
prompt), a masked diffusion model's ELBO is an expectation over how many answer
tokens are masked and which:

    log p(x_A | x_prompt) >= -E[ w * sum_{i in A masked} -log p_theta(x_i | x_t) ]

With the exact conditionals of a joint distribution both forms below equal
``log p(x_A | x_prompt)`` (the ELBO of absorbing diffusion is the mean of the
any-order autoregressive likelihoods; the Bernoulli form up to its ``O(eps)`` truncation,
below); for a real model they are its bound.

``masking="bernoulli"`` (MDLM, SMDM): time ``t`` in ``[eps, 1]``, every answer token
masked independently with probability ``m_t = 1 - alpha_t``, weight

    w = (1 - eps) * m'_t / m_t          (loglinear: 1/t, MDLM's and SMDM's weight)

The ``(1 - eps)`` factor makes the average an estimate of the integral over
``[eps, 1]`` (MDLM averages over ``t ~ U[eps, 1]`` without it: 0.1% higher at
``eps = 1e-3``). Two ends of the ELBO's integral over the mask rate are left out, as upstream
does: below ``m(eps)`` (about ``eps`` times the sum of the per-token NLLs given all other
tokens), and, since the schedules' own ``eps`` keeps ``m(1) = 1 - eps``, above ``m(1)``
(about ``eps`` times the sum of the per-token NLLs given no other token: usually the larger
part, ~0.08 nats on a 32-token Markov chain at ``eps = 1e-3``). So even with the exact
conditionals the Bernoulli estimate sits slightly *above* ``log p``, by ``O(eps)``, and is not
strictly a bound; ``masking="count"`` has neither truncation.

``masking="count"`` (LLaDA ``get_log_likelihood``): a count ``k`` in ``1..|A|``, exactly
``k`` answer tokens masked uniformly at random, weight ``|A| / k``. Unbiased for the
full ELBO, no ``eps``.

Timesteps / counts per ``mode`` (``n = mc_samples`` draws per sequence, the lattice
of :func:`mdsample.lowdisc_timesteps` with the sequence index as its offset):

- ``"stratified"``: one draw per stratum (MDLM ``_sample_t``); counts
  ``k = 1 + floor(|A| (u_j + j) / n)``.
- ``"shifted"``: one shared shift (SMDM; LLaDA's count lattice
  ``k_j = ((k_0 - 1 + floor(j |A| / n)) mod |A|) + 1`` is this with ``u = (k_0 - 1) / |A|``;
  mdsample floors where LLaDA rounds, whose half-to-even ties made some counts likelier).
- ``"iid"``: plain Monte Carlo, the baseline of the variance comparison.

Presets: MDLM = (stratified, bernoulli), SMDM = (shifted, bernoulli), LLaDA = (shifted, count).

The standard error: for ``"iid"`` the sample standard deviation over ``sqrt(n)``;
for the lattices (whose draws are not independent) the successive-difference
estimator of systematic sampling, ``sum_j (v_(j+1) - v_(j))^2 / (2 n (n - 1))`` over the
draws sorted by time, which is conservative (it counts the smooth trend between
neighbouring strata as noise).

SUBS: by default (``subs=True``) the mask token is excluded from the model's softmax
(MDLM's parameterisation, and the distribution mdsample's samplers draw from);
``subs=False`` normalises over the full vocabulary like LLaDA's / SMDM's code.

Cost: each (sequence, draw) pair is one model input; ``batch_size`` of them go in one
call (twice that with CFG). With a backbone offering ``hidden``/``head`` only the
masked answer rows go through the head; otherwise the full logits are scored by
:func:`mdsample.masked_nll` without a log_softmax temporary.

Reproducibility: draw ``j`` of sequence ``b`` uses timesteps at Philox offset ``b`` and
forward-mask keys (seed, offset ``j``, position ``b * L + i``): the estimate of a
sequence depends on (seed, its row index, its tokens), not on the other rows. Rows of one
call are independent, but two calls with the same seed reuse the same random numbers
(row ``b`` of each gets the same times and masks the same positions), so their errors are
correlated: a corpus loop must pass a distinct seed per call (e.g. the batch index) before
treating the batches' standard errors as independent.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..models.protocol import Backbone
from ..ops.forward_mask import forward_mask
from ..ops.lowdisc_timesteps import lowdisc_timesteps
from ..ops.masked_nll import masked_nll
from . import _checks as C
from .forward import RowForward
from .progress import Progress
from .schedules import get_schedule

__all__ = ["likelihood", "perplexity", "LikelihoodEstimate", "Perplexity", "MODES", "MASKING"]

MODES = ("stratified", "shifted", "iid")
MASKING = ("bernoulli", "count")


class LikelihoodEstimate(NamedTuple):
    """Per-sequence Monte Carlo estimate.

    ``log_likelihood``: float64 ``[B]``, the ELBO estimate of ``log p(x)`` (or of
    ``log p(answer | prompt)``) in nats; ``stderr``: float64 ``[B]``, its standard error;
    ``num_tokens``: int64 ``[B]``, the number of scored (answer) tokens.
    """

    log_likelihood: torch.Tensor
    stderr: torch.Tensor
    num_tokens: torch.Tensor


class Perplexity(NamedTuple):
    """Corpus perplexity bound ``exp(nll_per_token)`` and its delta-method standard error."""

    perplexity: float
    stderr: float
    nll_per_token: float


def _prompt_lengths(prompt_len, batch: int, length: int, device) -> torch.Tensor:
    if prompt_len is None:
        return torch.zeros(batch, dtype=torch.int64, device=device)
    if isinstance(prompt_len, torch.Tensor):
        if prompt_len.dtype.is_floating_point or prompt_len.dtype == torch.bool:
            raise TypeError(f"prompt_len must be an int or integer tensor; got {prompt_len.dtype}")
        if prompt_len.dim() > 1 or (prompt_len.dim() == 1 and prompt_len.numel() != batch):
            raise ValueError(f"prompt_len must be an int or a [B] = [{batch}] tensor; got {tuple(prompt_len.shape)}")
        p = prompt_len.to(device=device, dtype=torch.int64).expand(batch).clone()
    elif isinstance(prompt_len, (list, tuple)):
        raise TypeError(f"prompt_len must be an int or an integer tensor [B]; got a {type(prompt_len).__name__} "
                        "(pass torch.tensor(...) for per-sequence prompt lengths)")
    else:
        p = torch.full((batch,), C.integer("prompt_len", prompt_len, low=0), dtype=torch.int64, device=device)
    if batch and bool(((p < 0) | (p >= length)).any()):
        raise ValueError(f"prompt_len must lie in [0, L) = [0, {length}) so that every sequence has answer tokens")
    return p


def _scored(x: torch.Tensor, prompt_len, attention_mask, mask_id: int, cfg: float):
    """The checked answer positions of ``x`` ``[B, L]``: ``(answer bool [B, L], real bool [B, L] or None)``.

    ``answer``: positions at or after the prompt that are real tokens (``attention_mask``); ``real``: the
    attention mask as bool, None without one."""
    (batch, length), device = x.shape, x.device
    prompt = _prompt_lengths(prompt_len, batch, length, device)
    if cfg > 0 and prompt_len is None:
        raise ValueError("cfg_scale > 0 needs prompt_len: the unconditional input masks the prompt")
    real = None
    if attention_mask is not None:
        real = C.padding_mask(attention_mask, x) != 0
    if bool(((x == mask_id) if real is None else (x == mask_id) & real).any()):
        raise ValueError(f"x must not contain mask_id ({mask_id}): its tokens are the clean data being scored")
    answer = torch.arange(length, device=device) >= prompt.unsqueeze(1)
    if real is not None:
        answer &= real
        if batch and not bool(answer.any(1).all()):
            raise ValueError("every sequence needs a real answer token (attention_mask and prompt_len leave none)")
    return answer, real


def _time_weight(schedule, t: torch.Tensor, eps: float) -> torch.Tensor:
    """``(1 - eps) m'(t) / m(t)`` (float64), the derivative by autograd so any differentiable schedule works
    (under ``torch.inference_mode`` too, which evaluation harnesses use: the clone is then a normal tensor)."""
    with torch.inference_mode(False), torch.enable_grad():
        tt = t.detach().clone().requires_grad_(True)
        m = schedule.mask_prob(tt)
        (dm,) = torch.autograd.grad(m.sum(), tt)
    return (1.0 - eps) * dm / m.detach()


def _stderr(values: torch.Tensor, order_key: torch.Tensor, mode: str) -> torch.Tensor:
    """Standard error ``[B]`` of the mean of ``values`` ``[B, n]`` (see the module docstring)."""
    n = values.shape[1]
    if n < 2:
        return torch.full(values.shape[:1], math.nan, dtype=torch.float64, device=values.device)
    if mode == "iid":
        return values.std(dim=1, unbiased=True) / math.sqrt(n)
    v = values.gather(1, order_key.argsort(dim=1))
    return ((v[:, 1:] - v[:, :-1]).pow(2).sum(1) / (2.0 * n * (n - 1))).sqrt()


def _in_vocab(fwd: RowForward, xs: torch.Tensor, logits: torch.Tensor) -> None:
    """The scored sequences' ids against the logits' vocabulary, for a model that does not declare its own
    (checked up front otherwise): masked_nll would name a row of the Monte Carlo batch, not of ``x``."""
    if fwd.backbone.vocab_size is None:
        C.tokens_in_vocab("x", xs, logits.shape[-1])


def _chunk_values(fwd: RowForward, xs, xt, ans_rows, w, sigma, nll_kw) -> torch.Tensor:
    """``w * sum of -log p(x0_i | x_t)`` over the masked answer tokens of each row (float64 ``[c]``).

    With hidden/head only those rows' logits are computed and scored as ``[N, 1, V]``
    single-row sequences, then summed per input row; otherwise the full logits are
    scored in place with per-token weights (0 on the prompt: those rows are not read).
    """
    mask_id, c = nll_kw["mask_id"], xs.shape[0]
    scored = (xt == mask_id) & ans_rows
    zero = torch.zeros(c, dtype=torch.float64, device=xs.device)  # nothing masked: 0 whatever the model says
    seqs = torch.arange(c, device=xs.device)
    if fwd.backbone.has_head:
        row_seq, row_pos = scored.nonzero(as_tuple=True)  # the chunk's one read of its shape
        if row_seq.numel() == 0:
            return zero
        logits, guidance = fwd.rows(xt, seqs, row_seq, row_pos, sigma=sigma)
        _in_vocab(fwd, xs, logits)
        rows = logits.shape[0]
        per_row = masked_nll(
            logits.reshape(rows, 1, -1), xs[row_seq, row_pos].view(rows, 1),
            torch.full((rows, 1), mask_id, dtype=torch.int64, device=xs.device),
            weight=w[row_seq].to(torch.float32),
            guidance=None if guidance is None else guidance.reshape(rows, 1, -1), **nll_kw)
        return zero.index_add_(0, row_seq, per_row.double())
    if not bool(scored.any()):
        return zero
    logits, guidance = fwd.full(xt, seqs, sigma=sigma)
    _in_vocab(fwd, xs, logits)
    tok_w = torch.where(ans_rows, w.unsqueeze(1), 0.0).to(torch.float32)
    return masked_nll(logits, xs, xt, weight=tok_w, guidance=guidance, **nll_kw).double()


def likelihood(model, x, *, prompt_len=None, mc_samples=128, batch_size=16, mode="stratified",
               cfg_scale=0.0, schedule=None, seed=0, mask_id=None, masking="bernoulli", eps=None,
               subs=True, time_conditioned=False, attention_mask=None, backend="auto",
               progress=False) -> LikelihoodEstimate:
    """Monte Carlo ELBO estimate of ``log p(x)`` (or ``log p(answer | prompt)``) per sequence.

    Args:
        model: a backbone ``model(x [n, L]) -> logits [n, L, V]`` (or ``.logits``); with
            ``hidden``/``head`` only the masked rows' logits are computed.
        x: integer ``[B, L]`` token ids. Not modified.
        prompt_len: None, int or integer ``[B]``: positions ``< prompt_len`` are the prompt
            (never masked, conditioned on); the rest are scored. In [0, L).
        mc_samples: draws per sequence (n >= 1; the standard error needs n >= 2).
        batch_size: (sequence, draw) pairs per model call.
        mode: ``"stratified"``, ``"shifted"`` or ``"iid"`` timesteps / counts.
        cfg_scale: SMDM / LLaDA unsupervised CFG weight w >= 0 (needs ``prompt_len``): scores
            ``l_u + (w + 1)(l_c - l_u)`` with the prompt masked in the unconditional input.
        schedule: ``"loglinear"`` (default), ``"cosine"``, ``"cosine-mdlm"`` or a
            :class:`mdsample.samplers.Schedule` (Bernoulli masking only).
        seed: int, the Philox key of all draws. Calls with the same seed reuse the same draws
            (row ``b`` of every call: the same times, the same masked positions), so a corpus
            loop ``for i, batch in enumerate(loader)`` must pass a distinct seed per call
            (``seed=i``); with the default seed every batch's error is correlated with the
            others' and summing their stderrs as independent understates the total error.
        mask_id: the mask token (default: the model's ``mask_id`` / ``config.mask_id`` / ``config.mask_token_id``).
        masking: ``"bernoulli"`` (MDLM / SMDM weights ``m'/m``) or ``"count"`` (LLaDA ``L/k``).
        eps: lower end of the timesteps, in (0, 1) (Bernoulli masking only; default 1e-3).
        subs: exclude the mask token from the model's softmax (MDLM SUBS); False = LLaDA / SMDM.
        time_conditioned: pass ``sigma = -log alpha_t`` (float32 ``[n]``) to the model.
        attention_mask: ``[B, L]`` (bool or int, 1 = real token) for a batch of sequences of different
            lengths, padded anywhere: padding is never masked nor scored, and reaches the model as
            this mask (``prompt_len`` counts positions, padding included). None: every token is real.
        backend: backend of the ops ("auto", "cpu", "triton", "reference", ...).
        progress: show a tqdm bar over the model calls (``ceil(B * mc_samples / batch_size)``).

    Returns:
        :class:`LikelihoodEstimate`: ``log_likelihood`` and ``stderr`` float64 ``[B]``,
        ``num_tokens`` int64 ``[B]``.
    """
    x = C.token_ids("x", x, dims=(2,))
    batch, length = x.shape
    device = x.device
    mask_id = C.mask_token(model, mask_id, None)
    n = C.integer("mc_samples", mc_samples, low=1)
    chunk = C.integer("batch_size", batch_size, low=1)
    mode = C.choice("mode", mode, MODES)
    masking = C.choice("masking", masking, MASKING)
    cfg = C.real("cfg_scale", cfg_scale, low=0.0)
    subs = C.flag("subs", subs)
    time_conditioned = C.flag("time_conditioned", time_conditioned)
    progress = C.flag("progress", progress)
    seed = C.integer("seed", seed)
    C.positions_fit(batch, length)
    if masking == "count" and time_conditioned:
        raise ValueError("time_conditioned needs masking='bernoulli' (exact-count masking has no time)")
    answer, real = _scored(x, prompt_len, attention_mask, mask_id, cfg)
    n_answer = answer.sum(1)
    offsets = torch.arange(batch, dtype=torch.int64, device=device)
    if masking == "count" and (schedule is not None or eps is not None):
        raise ValueError("schedule and eps apply to masking='bernoulli' only (exact-count masking has no time); "
                         f"got schedule={schedule!r}, eps={eps!r}")
    if masking == "bernoulli":
        sched = get_schedule("loglinear" if schedule is None else schedule)
        eps = C.real("eps", 1e-3 if eps is None else eps, low=0.0, high=1.0, high_inclusive=False)
        if eps == 0.0:
            raise ValueError("eps must be > 0 with masking='bernoulli' (the weight m'/m diverges at t = 0)")
        t = lowdisc_timesteps(n, eps=eps, mode=mode, seed=seed, offset=offsets, backend=backend)  # [B, n]
        weight = _time_weight(sched, t, eps)
        order_key = t
    else:
        unit = lowdisc_timesteps(n, eps=0.0, mode=mode, seed=seed, offset=offsets, backend=backend)
        ans = n_answer.unsqueeze(1).to(torch.float64)
        k = torch.minimum(1.0 + torch.floor(ans * unit), ans).to(torch.int64)  # [B, n] in 1..|A|
        weight = ans / k
        order_key = unit

    backbone = Backbone(model, time_conditioned=time_conditioned)
    C.tokens_in_vocab("x", x, backbone.vocab_size)
    nll_kw = dict(mask_id=mask_id, exclude=mask_id if subs else None, guidance_scale=cfg, backend=backend)
    values = torch.empty((batch, n), dtype=torch.float64, device=device)
    tok = torch.arange(length, device=device)
    pairs = batch * n
    bar = Progress(progress, -(-pairs // chunk), "likelihood", backbone)
    with torch.no_grad(), bar:  # an evaluation: no graph through the model
        for start in range(0, pairs, chunk):
            q = torch.arange(start, min(start + chunk, pairs), device=device)
            bs, js = q // n, q % n  # (sequence, draw) of each input row
            xs, ans_rows = x.index_select(0, bs), answer.index_select(0, bs)
            am = None if real is None else real.index_select(0, bs)
            keys = dict(mask_id=mask_id, maskable=ans_rows, seed=seed, offset=js,
                        positions=bs.unsqueeze(1) * length + tok, backend=backend)
            sigma = None
            if masking == "bernoulli":
                xt = forward_mask(xs, t[bs, js], schedule=sched, **keys)
                if time_conditioned:
                    sigma = sched.sigma(t[bs, js]).to(torch.float32)
            else:
                xt = forward_mask(xs, count=k[bs, js], **keys)
            fwd = RowForward(backbone, mask_id=mask_id, cfg_scale=cfg, uncond_mask=~ans_rows, attention_mask=am)
            values[bs, js] = _chunk_values(fwd, xs, xt, ans_rows, weight[bs, js], sigma, nll_kw)
            bar.step()
    return LikelihoodEstimate(-values.mean(1), _stderr(values, order_key, mode), n_answer)


def perplexity(model, x, **kwargs) -> Perplexity:
    """Perplexity bound ``exp(sum NELBO / sum scored tokens)`` of the sequences ``x`` ``[B, L]``.

    Takes the arguments of :func:`likelihood`. The standard error is the delta-method
    one, ``perplexity * sqrt(sum stderr^2) / sum tokens`` (the rows of one call are independent).

    Args:
        model, x, **kwargs: as in :func:`likelihood`. ``seed``: calls with the same seed reuse
            the same draws, so to combine perplexities or standard errors over a corpus scored
            batch by batch pass a distinct seed per call (e.g. the batch index); with the
            default seed the batches' errors are correlated and the combined error is understated.
    """
    est = likelihood(model, x, **kwargs)
    tokens = float(est.num_tokens.sum())
    if tokens == 0:
        raise ValueError(f"perplexity needs a scored token: x of shape {tuple(x.shape)} has none (empty, or all "
                         "prompt / padding)")
    nll = float(-est.log_likelihood.sum()) / tokens
    ppl = math.exp(nll)
    se = ppl * float(est.stderr.pow(2).sum().sqrt()) / tokens
    return Perplexity(ppl, se, nll)
