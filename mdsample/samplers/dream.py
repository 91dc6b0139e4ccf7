"""Dream's ``diffusion_generate`` (Ye et al. 2025): whole-canvas denoising with a confidence order.

The algorithm (Dream ``generation_utils.py``; ALGORITHMS.md):

1. ``x = [prompt | mask * max_new_tokens]``; times ``t_i`` = ``linspace(1, eps, steps + 1)``
   (float32, as upstream), step i goes from ``t = t_i`` to ``s = t_{i+1}``.
2. Each step, the model's logits at the masked positions (Dream-style models predict
   token i at output i - 1: wrap them with ``mdsample.models.hf_backbone(model,
   logits_shift=1, mask_format="dream")``), after ``l / T``, top-p and top-k (samplers/truncation.py):
   - ``alg="origin"``: each masked position is revealed with probability ``1 - s / t``
     (1 at the last step) and takes a token from the truncated ``softmax(l / T)``;
   - ``"maskgit_plus"`` / ``"topk_margin"`` / ``"entropy"``: every masked position draws
     ``x0`` and a confidence (``p(x0)``, ``p1 - p2``, ``sum p log p`` of the truncated,
     tempered distribution; of ``softmax(l)`` at T = 0); with ``K = int(mean masked per
     row * (1 - s / t))``, each row commits its K most confident positions, or, with
     ``alg_temp > 0``, K positions drawn without replacement from
     ``softmax(confidence / alg_temp)``; the last step commits every remaining mask.

Differences from upstream, deliberate and documented:

- The mask token is never drawn and confidences are of the distribution without it (as
  :func:`mdsample.generate`; upstream can commit the mask token itself).
- Sampling without replacement (``alg_temp``) is done as Gumbel-top-K over
  ``confidence / alg_temp`` with Philox uniforms: the same distribution as
  ``torch.multinomial(softmax(.), K, replacement=False)`` (Kool et al. 2019), keyed by
  (seed, step, position) instead of the torch global RNG.
- Rows that differ in their number of masks (mask tokens inside some prompts): a row with
  fewer than K commits all of them (upstream's top-k then picks unmasked positions and
  writes the mask token over them), and the last step fills every row (upstream's last K,
  ``int(mean masked)``, leaves masks in the rows above the mean).
- Ties in confidence go to the lower position; the entropy is exact (upstream adds 1e-10
  inside the log).
- A step with K = 0 or no masked position runs no forward (upstream forwards and commits
  nothing); with ``"origin"`` only sequences with a revealed position are forwarded and,
  through ``hidden``/``head``, only revealed rows get logits (DESIGN.md §6: reveal
  decisions before logits). The tokens are the same either way.

Randomness: reveal coins are :func:`mdsample.unmask_step`'s (domain REVEAL), token draws
:func:`mdsample.sample_categorical`'s, both keyed by (seed, step, b * L + i). Sequence b's
tokens depend on the others only through K, which is the batch mean (Dream's definition):
with equal-length prompts without mask tokens all rows have the same number of masks, and a
sequence's output depends only on (seed, b).
"""
from __future__ import annotations

import torch

from ..models.protocol import Backbone
from ..ops.sampling import sample_categorical
from . import _checks as C
from ._random import DOMAIN_REVEAL, reveal_coins, seed_value, uniforms
from .forward import RowForward
from .progress import Progress
from .remasking import confidence, select
from .truncation import truncate, truncation_args

__all__ = ["sample_dream", "DREAM_ALGS"]

DREAM_ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")
DREAM_MASK_ID, SMDM_MASK_ID = 151666, 32000  # the mask_id defaults when the model declares none
_RULE = {"maskgit_plus": "low_confidence", "topk_margin": "margin", "entropy": "entropy"}


def _ratios(steps: int, eps: float, device) -> torch.Tensor:
    """``1 - s/t`` of every step, float32 ``[steps]`` on the CPU: upstream's tensor arithmetic, its ``linspace`` on
    the canvas' device as upstream (a device's linspace may round differently, which moves K at a boundary)."""
    ts = torch.linspace(1.0, eps, steps + 1, dtype=torch.float32, device=device)
    return (1 - ts[1:] / ts[:-1]).cpu()


def _commit_counts(masked: torch.Tensor, ratio: torch.Tensor, *, per_row: bool) -> torch.Tensor:
    """Commits per row, int64 ``[B]`` on ``masked``'s device, in float32 like upstream's tensor arithmetic:
    Dream's ``int(mean masked * (1 - s/t))`` for every row, or (``per_row``, SMDM's at batch 1) each row's
    ``int(n_b * (1 - s/t))``."""
    n = masked.sum(1)
    if per_row:
        return (n.cpu() * ratio).to(torch.int64).to(masked.device)
    k = int(n.sum().cpu() / masked.shape[0] * ratio)
    return torch.full_like(n, k)


@torch.no_grad()
def _sample_dream(model, prompt, *, max_new_tokens, steps, alg, alg_temp, temperature, top_p, top_k, eps, mask_id,
                  attention_mask, seed, backend, progress, on_step=None, cfg_scale: float = 0.0,
                  smdm: bool = False):
    # cfg_scale, smdm: SMDM's sampler (samplers/smdm.py), the loop Dream's derives from: unsupervised CFG (the
    # unconditional input masks every prompt position, as SMDM), confidences at T = 1 instead of the draw's
    # temperature, and each row's own commit count.
    # 0 only from SMDM's sampler, whose prompt may fill the canvas (its masks are then all there is to fill).
    max_new_tokens = C.integer("max_new_tokens", max_new_tokens, low=0 if smdm else 1)
    on_step = C.step_hook(on_step)
    steps = C.integer("steps", steps, low=1)
    alg = C.choice("alg", alg, DREAM_ALGS)
    if alg_temp is not None:
        alg_temp = C.real("alg_temp", alg_temp, low=0.0)
        if alg == "origin" and alg_temp > 0:
            raise ValueError("alg_temp applies to the confidence algorithms, not alg='origin'")
    alg_temp = alg_temp or None  # 0 means top-K, as upstream
    temperature = C.real("temperature", temperature, low=0.0)
    top_p, top_k = truncation_args(top_p, top_k)
    cfg_scale = C.real("cfg_scale", cfg_scale, low=0.0)
    if cfg_scale > 0 and (top_p is not None or top_k is not None):
        raise ValueError("top_p / top_k (Dream's truncation) do not combine with cfg_scale > 0")
    eps = C.real("eps", eps, low=0.0, high=1.0, high_inclusive=False)
    mask_id = C.mask_token(model, mask_id, SMDM_MASK_ID if smdm else DREAM_MASK_ID)
    seed = seed_value("seed", seed)
    progress = C.flag("progress", progress)
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str; got {type(backend).__name__}")

    x, am, plen = C.prompt_canvas(prompt, attention_mask, max_new_tokens, mask_id)
    x, padding = C.unmask_padding(x, am, mask_id)
    device, (batch, total) = x.device, x.shape

    backbone = Backbone(model)
    is_prompt = torch.zeros((batch, total), dtype=torch.bool, device=device)
    is_prompt[:, :plen] = True
    if cfg_scale > 0 and not bool((x[:, :plen] != mask_id).any()):  # all-mask: the two passes would be one
        raise ValueError("cfg_scale > 0 needs a non-empty prompt: the unconditional input masks the prompt")
    fwd = RowForward(backbone, mask_id=mask_id, cfg_scale=cfg_scale, uncond_mask=is_prompt, attention_mask=am)
    C.canvas_fits(backbone, x, plen, "generated" if smdm else "max_new_tokens", max_new_tokens)
    pos_ids = (torch.arange(batch, device=device).unsqueeze(1) * total
               + torch.arange(total, device=device).unsqueeze(0))
    ratio = _ratios(steps, eps, device)
    bar = Progress(progress, steps, "sample_smdm" if smdm else "sample_dream", backbone,
                   baseline_per_step=batch * (2 if cfg_scale > 0 else 1), on_step=on_step)

    def draw(rows: torch.Tensor, r_seq, r_pos, seqs, offset, **kw):
        logits, guidance = fwd.rows(x, seqs, r_seq, r_pos)
        if top_p is not None or top_k is not None:
            logits = truncate(logits, temperature=temperature, top_p=top_p, top_k=top_k, exclude=mask_id)
        return sample_categorical(logits, temperature=temperature, seed=seed, offset=offset,
                                  positions=pos_ids[rows, r_pos], exclude=mask_id, guidance=guidance,
                                  guidance_scale=cfg_scale, backend=backend, **kw)

    try:
        for i in range(steps):
            last = i == steps - 1
            if alg == "origin":
                chosen = reveal_coins(x, mask_id, 1.0 if last else float(ratio[i]), seed, i, pos_ids)
                need = chosen.any(1)
            else:
                masked = x == mask_id
                k = masked.sum(1) if last else _commit_counts(masked, ratio[i], per_row=smdm)
                chosen, need = masked, masked.any(1) & (k > 0)
            seqs = need.nonzero().squeeze(1)
            committed = 0
            if seqs.numel():
                sub = chosen.index_select(0, seqs)
                r_seq, r_pos = sub.nonzero(as_tuple=True)
                rows = seqs[r_seq]
                if alg == "origin":
                    x[rows, r_pos] = draw(rows, r_seq, r_pos, seqs, i)
                    committed = int(r_seq.numel())
                else:
                    res = draw(rows, r_seq, r_pos, seqs, i, return_stats=True, stats_temperature=1.0 if smdm else None)
                    conf = torch.full(sub.shape, -torch.inf, dtype=torch.float64, device=device)
                    conf[r_seq, r_pos] = confidence(res, _RULE[alg])
                    if alg_temp is not None:  # Gumbel-top-K = K draws without replacement
                        u, _ = uniforms(seed, i, pos_ids.index_select(0, seqs), DOMAIN_REVEAL)
                        conf = conf / alg_temp - torch.log(-torch.log(u))
                    tok = torch.zeros(sub.shape, dtype=torch.int64, device=device)
                    tok[r_seq, r_pos] = res.tokens
                    take = select(conf, sub, k=k.index_select(0, seqs))
                    x[seqs] = torch.where(take, tok, x.index_select(0, seqs))
                    committed = take.sum()
            bar.step(tokens=committed, canvas=lambda: C.restore_padding(x, padding, mask_id))
    finally:
        bar.close()
    return C.restore_padding(x, padding, mask_id)


def sample_dream(
    model,
    prompt,
    *,
    max_new_tokens,
    steps=512,
    alg="origin",
    alg_temp=None,
    temperature=0.0,
    top_p=None,
    top_k=None,
    eps=1e-3,
    mask_id=None,
    attention_mask=None,
    seed=0,
    backend="auto",
    progress=False,
    on_step=None,
):
    """Dream's ``diffusion_generate``: the whole generated part denoised at once, in confidence order.

    The module docstring states the algorithm and every difference from upstream.

    Args:
        model: backbone ``model(x: int64 [B, L], attention_mask=...) -> logits [B, L, V]`` (or
            ``.logits``), aligned so that output i scores token i: wrap a Dream checkpoint with
            ``mdsample.models.hf_backbone(model, logits_shift=1, mask_format="dream")`` (the shift, and
            padded batches passed as Dream's own loop passes them). With ``hidden``/``head`` only
            the masked (``"origin"``: revealed) rows get logits.
        prompt: int tensor ``[B, P]`` (or ``[P]``), left-padded when prompts differ in length;
            mask tokens inside it are filled in too.
        max_new_tokens: tokens to generate (int >= 1).
        steps: denoising steps (Dream's default 512).
        alg: ``"origin"`` (random reveal order), ``"maskgit_plus"`` (p(x0)), ``"topk_margin"``
            (p1 - p2) or ``"entropy"`` (sum p log p).
        alg_temp: None / 0 (commit the most confident), or > 0: draw the committed positions from
            ``softmax(confidence / alg_temp)`` without replacement (not with ``"origin"``).
        temperature: float >= 0 (0 = argmax).
        top_p: nucleus mass in (0, 1], or None; top_k: int >= 1, or None. Applied after the
            temperature, to both the draw and the confidences (a widening top-k search over the masked rows;
            without them the fused op reads each row once).
        eps: the last time, in [0, 1) (Dream's 1e-3).
        mask_id: the mask token id; None: the model's (``mask_id``, ``config.mask_id`` or
            ``config.mask_token_id``), else Dream's 151666.
        attention_mask: ``[B, P]`` (bool or int, 1 = real token) for left-padded prompts, extended
            with ones over the generated part and passed to the model.
        seed: int Philox key.
        backend: sampling-op backend.
        progress: show a tqdm bar.
        on_step: None, or a callable ``on_step(step, x)`` run after every step, with its
            number (from 1) and a copy of the canvas (int64 ``[B, L]``, still-masked positions hold the mask
            id), e.g. to watch the denoising or keep its history.

    Returns:
        int64 ``[B, P + max_new_tokens]``: the prompt followed by the generated tokens.
    """
    return _sample_dream(model, prompt, max_new_tokens=max_new_tokens, steps=steps, alg=alg, alg_temp=alg_temp,
                         temperature=temperature, top_p=top_p, top_k=top_k, eps=eps, mask_id=mask_id,
                         attention_mask=attention_mask, seed=seed, backend=backend, progress=progress,
                         on_step=on_step)
