"""LLaDA's semi-AR remasking sampler (Nie et al. 2025) with Dream confidences and Fast-dLLM rules.

The algorithm (LLaDA ``generate.py``; ALGORITHMS.md):

1. ``x = [prompt | mask * gen_length]``; the generated part is cut in
   ``gen_length / block_length`` blocks, each given ``steps / num_blocks`` steps.
2. At a block's start, the per-step transfer counts are LLaDA's: with M masked positions
   in the block and S steps, ``M // S`` per step plus one for the first ``M % S`` steps.
3. Each step, for the candidate positions (masked and before the block's end): one
   forward (with CFG: the unconditional input masks the prompt, one doubled batch,
   ``l_u + (w + 1)(l_c - l_u)``); ``x0`` drawn from ``softmax(l / T)`` (argmax at T = 0;
   LLaDA's float64 Gumbel-max, done exactly by :func:`mdsample.sample_categorical`); a
   confidence per candidate; the most confident are committed:
   - ``"low_confidence"``: ``p(x0)`` under ``softmax(l)`` (T = 1, as LLaDA);
   - ``"random"``: an i.i.d. uniform (LLaDA's ``torch.rand``, Philox-keyed here);
   - ``"entropy"``: ``sum p log p`` (Dream's ``neg_entropy``), ``"margin"``: ``p1 - p2``
     (Dream's ``topk_margin``), both of ``softmax(l / T)`` (of ``softmax(l)`` at T = 0).
   How many: LLaDA's count (default), or Fast-dLLM's ``threshold`` (top-1 plus every
   candidate with confidence >= tau) or ``factor`` (mdsample.samplers.remasking). With
   a threshold or factor a block runs until it has no masks (``steps`` then only fixes
   the number of blocks, as in Fast-dLLM). dInfer's decoders: ``low_threshold`` is its
   hierarchy rule (the most confident of each run of adjacent candidates, if above
   ``low_threshold``; every candidate above ``threshold``; the top-1), and ``credit`` its credit
   fusion (samplers/credit.py: logits biased by the tokens a position kept predicting), with any
   of the rules; the hierarchy rule runs until the block has no masks, as a threshold does.

Differences from upstream, all deliberate and documented:

- LLaDA's ``x0`` is an argmax over all V logits, so it can be the mask token itself (no
  SUBS); mdsample excludes the mask token from ``x0`` and computes confidences of the
  distribution without it (so ``p(x0)`` is renormalised over non-mask tokens). For a model
  that never predicts the mask, the output is LLaDA's.
- Ties in confidence go to the lower position (``torch.topk`` leaves the order unspecified).
- Fast-dLLM's factor rule commits exactly the passing prefix (see remasking.py).
- Confidences are the fused op's float32 statistics (Fast-dLLM compares a float64 softmax with
  the threshold): a candidate within ~1e-7 of ``threshold`` (or of a factor bound) may be
  decided the other way; reading every candidate row again in float64 would double the
  sampling's memory traffic for that.
- As upstream, masks inside the prompt are candidates too (every masked position before the
  block's end is), competing for the counts of the block's own masks; a block may then end
  with masks left, which the output keeps (a RuntimeWarning says how many). The cached modes
  refuse such prompts.
- Sequences are independent: a sequence whose step commits nothing (count 0, or its block
  already complete under a threshold/factor rule) is not forwarded; upstream forwards the
  whole batch every step. Its randomness is keyed by (seed, sequence, block, step).

Shortcuts, exact: with a backbone offering ``hidden``/``head``, logits are computed only for
the candidate rows (the current block's masked positions), never ``[B, L, V]``; with
``"random"`` remasking the committed positions do not depend on the logits, so they are
chosen first and only their rows are computed. With ``eos_id``, a sequence whose completed
blocks hold EOS is not forwarded again (samplers/eos.py): its text up to that EOS is final.

With a KV cache, every step runs as one fixed-shape call without host syncs
(mdsample.samplers.graph_step), and ``cuda_graph=True`` replays it as a CUDA graph on CUDA
tensors: the same random numbers, hence the same tokens, at one launch per step. Without
graphs, Fast-dLLM's threshold / factor rules and dInfer's hierarchy rule (``low_threshold``; a block
stops as soon as it has no mask, which the fixed-shape budget cannot know) and the compat layer's
exclude lists run step by step.
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence

import torch

from ..models.protocol import Backbone
from ..ops.sampling import sample_categorical
from . import _checks as C
from ._random import DOMAIN_REVEAL, seed_value, uniforms
from .forward import CACHE_MODES, CachedRowForward, RowForward
from .credit import Credit, credit_settings
from .eos import fill_after_eos, finished
from .progress import Progress
from .graph_step import BlockStep, StepGraphs
from .remasking import confidence, select, transfer_counts
from .truncation import truncate, truncation_args

__all__ = ["generate", "REMASKING"]

REMASKING = ("low_confidence", "random", "entropy", "margin")
_BLOCK_SHIFT = 32  # Philox offset = block << 32 | step within the block
LLADA_MASK_ID = 126336  # the mask_id default when the model declares none


def _excluded_mass(logits, guidance, scale, tokens, logprob, ids: Sequence[int]) -> torch.Tensor:
    """Probability (float64 ``[N]``, T = 1, mask excluded) of the token ids ``ids`` in each row.

    Recovers each row's log-normaliser from the sampled token's logprob, so V is not read again.
    """
    def score(idx):  # guided float64 scores at idx [N, k], as the sampling op combines them
        g = logits.gather(1, idx).to(torch.float64)
        if guidance is None:
            return g
        u = guidance.gather(1, idx).to(torch.float64)
        return torch.where(torch.isneginf(g) | torch.isneginf(u), -torch.inf, u + (scale + 1.0) * (g - u))

    lse = score(tokens.unsqueeze(1)).squeeze(1) - logprob.to(torch.float64)
    ids_t = torch.tensor(list(ids), dtype=torch.int64, device=logits.device).expand(tokens.numel(), -1)
    return torch.exp(score(ids_t) - lse.unsqueeze(1)).sum(1)


@torch.no_grad()
def _generate(model, prompt, *, steps, gen_length, block_length, temperature, cfg_scale, remasking, mask_id,
              threshold, factor, attention_mask, seed, backend, progress, cache=None, refresh_every=None,
              low_threshold=None, credit=None, vicinity=None,
              cuda_graph=False, eos_id=None, top_p=None, top_k=None, logits_exclude: Sequence[int] = (),
              confidence_exclude: Sequence[int] = (), graph_capture: Optional[bool] = None,
              static_steps: Optional[bool] = None, calls_out: Optional[dict] = None, on_step=None):
    # calls_out (compat's nfe): receives "forwards", the model calls made (replayed graphs run none).
    # graph_capture (tests, benchmarks): None = capture the cuda_graph steps on CUDA tensors; False =
    # run them eagerly even there (the replay's reference); True on CPU tensors is an error.
    # static_steps (tests): None = the fixed-shape BlockStep for every cached run it serves (below);
    # False = the step-by-step loop (the fixed-shape steps' reference; not with cuda_graph).
    steps = C.integer("steps", steps, low=1)
    gen_length = C.integer("gen_length", gen_length, low=1)
    block_length = C.integer("block_length", block_length, low=1)
    if gen_length % block_length:
        raise ValueError(f"gen_length ({gen_length}) must be a multiple of block_length ({block_length})")
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise ValueError(f"steps ({steps}) must be a multiple of the number of blocks ({num_blocks})")
    per_block = steps // num_blocks
    temperature = C.real("temperature", temperature, low=0.0)
    cfg_scale = C.real("cfg_scale", cfg_scale, low=0.0)
    remasking = C.choice("remasking", remasking, REMASKING)
    mask_id = C.mask_token(model, mask_id, LLADA_MASK_ID)
    if threshold is not None and factor is not None:
        raise ValueError("give threshold or factor, not both")
    if threshold is not None:
        threshold = C.real("threshold", threshold)
    if factor is not None:
        factor = C.real("factor", factor, low=0.0)
    if low_threshold is not None:
        if factor is not None:
            raise ValueError("low_threshold (dInfer's hierarchy rule) combines with threshold, not with factor")
        low_threshold = C.real("low_threshold", low_threshold)
    seed = seed_value("seed", seed)
    progress = C.flag("progress", progress)
    on_step = C.step_hook(on_step)
    top_p, top_k = truncation_args(top_p, top_k)
    if (top_p is not None or top_k is not None) and cfg_scale > 0:
        raise ValueError("top_p / top_k (Dream's truncation) do not combine with cfg_scale > 0")
    credit = credit_settings(credit)
    if credit is not None and (remasking == "random" or cfg_scale > 0 or top_p is not None or top_k is not None):
        raise ValueError("credit (dInfer's credit fusion) needs confidence remasking, cfg_scale 0 and no top_p / top_k")
    if eos_id is not None:
        eos_id = C.integer("eos_id", eos_id, low=0)
        if eos_id == mask_id:
            raise ValueError(f"eos_id must differ from mask_id ({mask_id})")
    graphs = None
    if isinstance(cuda_graph, StepGraphs):
        graphs, cuda_graph = cuda_graph, True
    cuda_graph = C.flag("cuda_graph", cuda_graph)
    if cuda_graph:
        if cache is None:
            raise ValueError("cuda_graph=True runs the fixed-shape steps of the KV-cache modes: give cache='prefix' "
                             "or cache='dual'")
        if logits_exclude or confidence_exclude:
            raise ValueError("cuda_graph=True does not support logits_eos_inf / confidence_eos_eot_inf")
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str; got {type(backend).__name__}")
    dynamic = threshold is not None or factor is not None or low_threshold is not None
    if static_steps is False and cuda_graph:
        raise ValueError("static_steps=False runs the step-by-step loop, which cannot be captured")
    # A cached run takes the fixed-shape, sync-free steps unless it needs what only the step-by-step
    # loop does: the exclude lists, or (without graphs) a threshold / factor / hierarchy rule, where
    # stopping a block as soon as it is done saves the forwards that the fixed budget would spend.
    if static_steps is None:
        static_steps = cache is not None and not logits_exclude and not confidence_exclude and (
            cuda_graph or not dynamic)
    if static_steps and (cache is None or logits_exclude or confidence_exclude):
        raise ValueError("the fixed-shape steps need a cache and no exclude lists")

    x, am, plen = C.prompt_canvas(prompt, attention_mask, gen_length, mask_id)
    x, padding = C.unmask_padding(x, am, mask_id)
    device, (batch, total) = x.device, x.shape
    if credit is not None and bool((x[:, :plen] == mask_id).any()):
        raise ValueError("credit needs prompts without mask tokens (credit is kept for the block's positions)")

    is_prompt = torch.zeros((batch, total), dtype=torch.bool, device=device)
    is_prompt[:, :plen] = x[:, :plen] != mask_id
    if cfg_scale > 0 and not bool(is_prompt.any()):
        raise ValueError("cfg_scale > 0 needs a non-empty prompt: the unconditional input masks the prompt")
    backbone = Backbone(model)
    C.canvas_fits(backbone, x, plen, "gen_length", gen_length)
    if vicinity is not None:
        if cache != "dual":
            raise ValueError(f"vicinity (dInfer's vicinity refresh) widens the dual cache's window: give cache='dual' "
                             f"(got cache={cache!r})")
        if not isinstance(vicinity, (tuple, list)) or len(vicinity) != 2:
            raise TypeError(f"vicinity must be a pair (prefix_look, after_look) of ints >= 0; got {vicinity!r}")
        vicinity = (C.integer("vicinity[0]", vicinity[0], low=0), C.integer("vicinity[1]", vicinity[1], low=0))
    if cache is None:
        if refresh_every is not None:
            raise ValueError("refresh_every needs a cache mode (cache='prefix' or 'dual')")
        fwd = RowForward(backbone, mask_id=mask_id, cfg_scale=cfg_scale, uncond_mask=is_prompt, attention_mask=am)
    else:
        cache = C.choice("cache", cache, CACHE_MODES)
        if refresh_every is not None:
            refresh_every = C.integer("refresh_every", refresh_every, low=1)
        if not backbone.has_cache:
            raise ValueError(f"cache={cache!r} needs a backbone offering a KV cache (new_cache); "
                             f"{type(model).__name__} has none (a Hugging Face LLaDA / Llama / Qwen2 checkpoint: "
                             "load it with mdsample.models.from_llada / from_llama / from_qwen2)")
        if backbone.attention not in (None, "bidirectional"):
            raise ValueError(f"cache={cache!r} is Fast-dLLM's cache for bidirectional models; the model's attention "
                             f"is {backbone.attention!r}")
        if bool((x[:, :plen] == mask_id).any()):
            raise ValueError(f"cache={cache!r} needs prompts without mask tokens (cached prefix rows get no logits)")
        if batch == 0:  # nothing to generate; a KV cache of batch 0 cannot be allocated
            if calls_out is not None:
                calls_out["forwards"] = 0
            return x
        capture = cuda_graph and device.type == "cuda" if graph_capture is None else graph_capture
        settings = (batch, plen, gen_length, block_length, per_block, cache, refresh_every, remasking, temperature,
                    cfg_scale, threshold, factor, mask_id, backend, str(device), capture, am is not None, top_p, top_k,
                    low_threshold, credit, vicinity)
        kept, ptrs = (None, None) if graphs is None else graphs.take(model, settings)
        if kept is not None:  # an earlier call's canvas, cache and graphs, restarted with this prompt
            kept.restart(x, is_prompt, seed, attention_mask=am)
            fwd, x, backbone = kept.fwd, kept.x, kept.fwd.backbone
        else:
            fwd = CachedRowForward(backbone, mode=cache, total=total, batch_size=batch, refresh_every=refresh_every,
                                   vicinity=vicinity or (0, 0),
                                   mask_id=mask_id, cfg_scale=cfg_scale, uncond_mask=is_prompt, attention_mask=am)
    if eos_id is not None:
        fwd.check_id("eos_id", eos_id)
    for arg, ids in (("logits_exclude", logits_exclude), ("confidence_exclude", confidence_exclude)):
        for tok in ids:  # the drop-ins' LLaDA EOS / EOT ids: a toy model without a declared vocabulary lacks them
            fwd.check_id(arg, tok)
    guidance_scale = cfg_scale if cfg_scale > 0 else 0.0

    pos_ids = (torch.arange(batch, device=device).unsqueeze(1) * total
               + torch.arange(total, device=device).unsqueeze(0))
    col = torch.arange(total, device=device).unsqueeze(0)
    stats_t = 1.0 if remasking == "low_confidence" else None
    bar = Progress(progress, None if dynamic else num_blocks * per_block, "generate", backbone,
                   baseline_per_step=batch * (2 if cfg_scale > 0 else 1), on_step=on_step)

    def canvas():  # what on_step sees: padding as given
        return C.restore_padding(x, padding, mask_id)

    if static_steps:
        step = kept if kept is not None else BlockStep(
            fwd, x, block_length=block_length, per_block=per_block, remasking=remasking,
            temperature=temperature, stats_temperature=stats_t, seed=seed, mask_id=mask_id, threshold=threshold,
            factor=factor, guidance_scale=guidance_scale, backend=backend, capture=capture,
            keep_graphs=graphs is not None, truncation=(top_p, top_k), low_threshold=low_threshold, credit=credit)
        out = _generate_static(step, x, plen=plen, num_blocks=num_blocks, bar=bar, eos_id=eos_id, canvas=canvas)
        if calls_out is not None:
            calls_out["forwards"] = backbone.calls
        if graphs is not None:  # the kept canvas is the next call's; kept only after a whole run (a failed one
            out = out.clone()   # may leave a half-made capture)
            graphs.keep(model, settings, step, ptrs)
        return C.restore_padding(out, padding, mask_id)
    done = torch.zeros(batch, dtype=torch.bool, device=device)  # rows past an EOS (eos_id)
    held = None if credit is None else Credit(batch, block_length, credit, device)
    try:
        for blk in range(num_blocks):
            start, end = plen + blk * block_length, plen + (blk + 1) * block_length
            if eos_id is not None:
                done |= finished(x, plen, start, eos_id)
                if bool(done.all()):
                    break
            fwd.begin_block(x, start, end)
            if held is not None:
                held.reset()
            counts = transfer_counts(x[:, start:end] == mask_id, per_block)
            i = 0
            while True:
                if dynamic:
                    need = (x[:, start:end] == mask_id).any(1) & ~done
                    if not bool(need.any()):
                        break
                else:
                    if i == per_block:
                        break
                    need = (counts[:, i] > 0) & ~done  # done rows (eos_id): not forwarded
                cand = (x == mask_id) & (col < end) & need.unsqueeze(1)
                seqs = cand.any(1).nonzero().squeeze(1)
                committed = 0
                if seqs.numel():
                    offset = (blk << _BLOCK_SHIFT) + i
                    committed = _step(fwd, x, seqs, cand.index_select(0, seqs), pos_ids, offset,
                                      k=None if dynamic else counts.index_select(0, seqs)[:, i],
                                      threshold=threshold, factor=factor, low_threshold=low_threshold,
                                      credit=held, block_start=start, remasking=remasking,
                                      temperature=temperature, stats_t=stats_t, seed=seed, mask_id=mask_id,
                                      guidance_scale=guidance_scale, backend=backend, truncation=(top_p, top_k),
                                      logits_exclude=logits_exclude, confidence_exclude=confidence_exclude)
                bar.step(tokens=committed, canvas=canvas)
                i += 1
    finally:
        bar.close()
    if calls_out is not None:
        calls_out["forwards"] = backbone.calls
    out = x if eos_id is None else fill_after_eos(x, eos_id, plen)
    left = int((out[:, plen:] == mask_id).sum())  # only masks in the prompt leave masks behind
    if left:
        warnings.warn(f"the prompt holds mask tokens, which compete with the blocks' masks for each step's commits "
                      f"(as upstream LLaDA): {left} generated position(s) are still mask_id {mask_id}",
                      RuntimeWarning, stacklevel=4)
    return C.restore_padding(out, padding, mask_id)


def _generate_static(step: BlockStep, x, *, plen, num_blocks, bar, eos_id=None, canvas=None) -> torch.Tensor:
    """The block loop of the fixed-shape steps (cached runs, replayed with ``cuda_graph=True``): no host
    sync until the final check (graph_step.py), except one per block (and per step past the budget)
    with a threshold / factor rule, and one per block with ``eos_id`` (the whole batch stops once
    every row has an EOS: these steps forward every row)."""
    schedule, per_block, bl = step.schedule(), step.per_block, step.block_length
    try:
        for blk in range(num_blocks):
            start = plen + blk * bl
            if eos_id is not None and bool(finished(x, plen, start, eos_id).all()):
                break
            step.begin_block(start, start + bl, blk << _BLOCK_SHIFT)
            for i, k in enumerate(schedule):
                step(i)
                bar.step(tokens=x.shape[0] * k, canvas=canvas)
            for _ in range(per_block - len(schedule)):  # steps that commit nothing run no forward
                bar.step(canvas=canvas)
            # Past the budget, the eager loop's rule: a step while masks remain. Every step commits at least
            # one position of each row with a valid draw, so after bl more a mask left is a row without one
            # (NaN logits), which the check below reports.
            extra = bl if step.dynamic else 0
            for i in range(len(schedule), len(schedule) + extra):
                if not bool((x[:, start:start + bl] == step.mask_id).any()):
                    break
                step(i)
                bar.step(canvas=canvas)
            if step.dynamic:
                bar.step(0, tokens=x.shape[0] * bl)
    finally:
        bar.close()
    if eos_id is not None:
        x.copy_(fill_after_eos(x, eos_id, plen))
    if bool((x[:, plen:] == step.mask_id).any()):
        raise ValueError("some rows had no valid draw (NaN or +inf logits, or no finite logit besides the mask): "
                         "the cached block steps do not stop to check each draw, so those positions stayed "
                         "masked; generate without a cache raises at the first such row and names it")
    return x


def _step(fwd: RowForward, x, seqs, cand, pos_ids, offset, *, k, threshold, factor, low_threshold, credit, block_start,
          remasking, temperature, stats_t, seed, mask_id, guidance_scale, backend, truncation, logits_exclude,
          confidence_exclude) -> torch.Tensor:
    """One denoising step for sequences ``seqs`` (candidates ``cand`` bool ``[n, L]``); updates ``x`` in place and
    returns how many it committed (a 0-d int64 tensor: read only by a shown progress bar)."""
    n, total = cand.shape

    def rows_for(mask):
        r_seq, r_pos = mask.nonzero(as_tuple=True)
        logits, guidance = fwd.rows(x, seqs, r_seq, r_pos)
        if logits_exclude:
            ids = list(logits_exclude)
            logits[:, ids] = -torch.inf
            if guidance is not None:
                guidance[:, ids] = -torch.inf
        return r_seq, r_pos, logits, guidance

    def draw(logits, guidance, positions, **kw):
        if truncation != (None, None):
            logits = truncate(logits, temperature=temperature, top_p=truncation[0], top_k=truncation[1],
                              exclude=mask_id)
        return sample_categorical(logits, temperature=temperature, seed=seed, offset=offset, positions=positions,
                                  exclude=mask_id, guidance=guidance, guidance_scale=guidance_scale,
                                  backend=backend, **kw)

    if remasking == "random":
        # The committed set depends only on the uniforms: choose it first, then compute only its rows.
        u, _ = uniforms(seed, offset, pos_ids.index_select(0, seqs), DOMAIN_REVEAL)
        chosen = select(u, cand, k=k, threshold=threshold, factor=factor, low_threshold=low_threshold)
        r_seq, r_pos, logits, guidance = rows_for(chosen)
        rows = seqs[r_seq]
        x[rows, r_pos] = draw(logits, guidance, pos_ids[rows, r_pos])
        return int(r_seq.numel())

    r_seq, r_pos, logits, guidance = rows_for(cand)
    rows = seqs[r_seq]
    if credit is not None:  # dInfer's credit: the draw from the fused rows
        logits = credit.step(logits, rows, r_pos - block_start, exclude=mask_id, backend=backend)
    res = draw(logits, guidance, pos_ids[rows, r_pos], return_stats=True, stats_temperature=stats_t)
    c = confidence(res, remasking)
    if remasking == "low_confidence" and confidence_exclude:
        # LLaDA's confidence_eos_eot_inf: p(x0) after removing these tokens from the softmax.
        ex = _excluded_mass(logits, guidance, guidance_scale, res.tokens, res.logprob, confidence_exclude)
        hit = torch.isin(res.tokens, torch.tensor(list(confidence_exclude), device=c.device))
        c = torch.where(hit, 0.0, c / (1.0 - ex).clamp_min(1e-300))
    conf = torch.full((n, total), -torch.inf, dtype=torch.float64, device=x.device)
    conf[r_seq, r_pos] = c
    tok = torch.zeros((n, total), dtype=torch.int64, device=x.device)
    tok[r_seq, r_pos] = res.tokens
    chosen = select(conf, cand, k=k, threshold=threshold, factor=factor, low_threshold=low_threshold)
    x[seqs] = torch.where(chosen, tok, x.index_select(0, seqs))
    return chosen.sum()


def generate(
    model,
    prompt,
    *,
    steps=128,
    gen_length=128,
    block_length=128,
    temperature=0.0,
    cfg_scale=0.0,
    remasking="low_confidence",
    mask_id=None,
    threshold=None,
    factor=None,
    attention_mask=None,
    seed=0,
    backend="auto",
    progress=False,
    cache=None,
    refresh_every=None,
    cuda_graph=False,
    eos_id=None,
    top_p=None,
    top_k=None,
    on_step=None,
    low_threshold=None,
    credit=None,
    vicinity=None,
):
    """LLaDA's ``generate`` (semi-AR remasking), with Dream's confidences and Fast-dLLM's rules.

    The module docstring states the algorithm and every difference from upstream.

    Args:
        model: backbone ``model(x: int64 [B, L], attention_mask=...) -> logits [B, L, V]``
            (or ``.logits``); with ``hidden``/``head`` only candidate rows are computed.
        prompt: int tensor ``[B, P]`` (or ``[P]``), left-padded when prompts differ in length.
        steps: total steps (int >= 1, a multiple of the number of blocks).
        gen_length: tokens to generate (a multiple of ``block_length``).
        block_length: semi-AR block length.
        temperature: float >= 0 of the ``x0`` draw (0 = argmax).
        cfg_scale: unsupervised CFG weight w >= 0 (needs a prompt).
        remasking: "low_confidence", "random", "entropy" or "margin".
        mask_id: the mask token id; None: the model's (``mask_id``, ``config.mask_id`` or
            ``config.mask_token_id``), else LLaDA's 126336.
        threshold: Fast-dLLM confidence threshold tau (float) or None.
        factor: Fast-dLLM factor f > 0 or None (not both with threshold).
        low_threshold: dInfer's hierarchy decoder (float, e.g. its default 0.4) or None: each step
            commits, in every run of adjacent masked positions of the block, the most confident one
            (all of them if tied) if its confidence > low_threshold, every position with confidence
            > ``threshold`` (if given; strictly, as dInfer), and the top-1. Not with ``factor``.
        credit: dInfer's credit fusion: None, True (alpha 0.7, gamma 0.2, beta 0.8) or a dict with
            any of ``alpha``, ``gamma``, ``beta`` (decay in [0, 1]); the draw and confidences are
            those of the logits plus ``alpha * log(1 + credit)``, where a position's credit of token v
            decays by beta per step and grows by ``p1 ** gamma`` at each step v is its argmax (p1 its
            probability). Combines with any count rule; not with "random" remasking, ``cfg_scale``,
            ``top_p`` / ``top_k``, or mask tokens in the prompt.
        attention_mask: ``[B, P]`` (bool or int, 1 = real token) for left-padded prompts,
            extended with ones over the generated part and passed to the model.
        seed: int Philox key; sequence b's randomness depends only on (seed, b).
        backend: sampling-op backend.
        progress: show a tqdm bar.
        on_step: None, or a callable ``on_step(step, x)`` run after every step, with its number (from 1)
            and a copy of the canvas (int64 ``[B, L]``, still-masked positions hold the mask id), e.g. to
            watch the denoising or keep its history (before ``eos_id``'s fill).
        cache: None (exact, no cache), or Fast-dLLM's approximate KV cache for a bidirectional
            backbone offering ``new_cache``: ``"prefix"`` (a full forward at the block's first
            step, later steps feed block + suffix against the cached prefix K/V) or ``"dual"``
            (later steps feed only the block; the suffix K/V stay frozen within the block).
            Every step then forwards the whole batch, as one fixed-shape call with no host sync
            (with ``threshold`` / ``factor`` / ``low_threshold`` and no ``cuda_graph``: step by step,
            each block stopping once done). A padded batch hides its padding keys in the cache too (the model's
            ``new_cache`` must take ``attention_mask``). Not with prompts containing ``mask_id``;
            rows with no valid draw (NaN logits) raise after the last block.
        vicinity: with ``cache="dual"``, dInfer's vicinity refresh: a pair ``(prefix_look, after_look)``
            of ints >= 0; each block step then feeds ``[start - prefix_look, end + after_look)`` (its
            K/V refreshed) instead of the block alone. Windows covering the canvas give the uncached
            computation; at the canvas' edges the window slides to stay inside (dInfer shortens it).
        refresh_every: with a cache, also refresh (full forward) every this many forwards
            within a block; None = only at the block start (Fast-dLLM); 1 = every step,
            which is the uncached computation.
        cuda_graph: with a cache, capture the fixed-shape step (mdsample.samplers.graph_step)
            once in a CUDA graph (``"dual"``: one graph for all blocks; ``"prefix"``: one per
            block, its block + suffix chunk shrinks) and replay it; refresh forwards run eagerly.
            On CPU tensors the same step runs eagerly. Same random numbers as without it, hence
            the same tokens. With threshold / factor, ``steps / num_blocks`` is a per-block
            budget run without host syncs; a block not done by then continues step by step (one
            host check each). ``True`` captures anew in every call; a
            :class:`mdsample.StepGraphs` instead keeps each call's canvas, cache and graphs and
            reuses them when the same model is called again with the same shapes and settings
            (only the first call captures).
        eos_id: end-of-sequence token (LLaDA: 126081), or None. A row whose finished blocks hold
            it is not forwarded again (with a cache: the run stops once every row has one), and
            every position after its first EOS is set to EOS. Blocks are final once done, so the
            text up to the first EOS is exactly that of a run without ``eos_id``.
        top_p, top_k: Dream's truncation (samplers/truncation.py) of the draw and of the
            confidences: nucleus mass in (0, 1] and top-k count, or None (not with ``cfg_scale``).

    Returns:
        int64 ``[B, P + gen_length]``: the prompt followed by the generated tokens.
    """
    return _generate(model, prompt, steps=steps, gen_length=gen_length, block_length=block_length,
                     temperature=temperature, cfg_scale=cfg_scale, remasking=remasking, mask_id=mask_id,
                     threshold=threshold, factor=factor, attention_mask=attention_mask, seed=seed,
                     backend=backend, progress=progress, cache=cache, refresh_every=refresh_every,
                     cuda_graph=cuda_graph, eos_id=eos_id, top_p=top_p, top_k=top_k, on_step=on_step,
                     low_threshold=low_threshold, credit=credit, vicinity=vicinity)
