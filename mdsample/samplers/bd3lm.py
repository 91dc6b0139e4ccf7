"""BD3-LM block diffusion sampling (Arriola et al. 2025) with the exact block-causal KV cache.

The algorithm (BD3-LM ``_semi_ar_sampler``; ALGORITHMS.md):

1. The canvas of ``length`` positions is cut in blocks of ``block_size``, generated left to
   right. With ``bos_id`` position 0 holds BOS (part of block 0, as in training).
2. Inside a block (all positions masked at its start), the masked diffusion is run to t = 0:
   - first-hitting (default): each forward reveals exactly one masked position, chosen
     uniformly (``t <- t * u^(1 / n_masked)`` only fixes the time, which an unconditioned
     backbone does not read), its token drawn from ``p_x0`` without the mask token;
   - ancestral (``steps_per_block=S``, ``first_hitting=False``): loglinear ``m_t = t`` on
     upstream's grid ``t_i = linspace(1, 0, S)[i]`` with the step ``dt = 1 / S`` (so
     ``s = t - dt``): a masked position is revealed with prob ``dt / t_i`` (1 at the last step,
     ``t = 0``: upstream's division by zero there is guarded), then its token drawn from
     ``p_x0`` without the mask. A step revealing nothing runs no forward (exact: the backbone
     is not time-conditioned, so its output would be unused).
3. The model attends causally across blocks and bidirectionally inside: the K/V of finished
   blocks do not depend on later tokens, so they are cached exactly. The clean block's K/V
   are written by feeding it together with the next block's first step
   (``[clean block | next block]``; the block-causal mask keeps the clean block from seeing
   the next one), then committed. Each step computes logits only for the revealed rows.
4. Variable length: with ``eos_id``, a sequence is finished once a completed block holds
   EOS; generation stops after the first block at which every sequence is finished, and
   positions after a sequence's first EOS are set to ``eos_id``.

Randomness: reveal choices and token draws are Philox-keyed by (seed, sequence, position,
block << 32 | step), so the cached and uncached paths (``use_cache=False``: a full
forward of ``x[:, :block_end]`` per step) make the same draws; they return the same tokens
up to floating-point rounding: the two compute the same logits in a different order (cached
keys vs a full forward), equal in float32 in the tests, while in bfloat16 the rounding of one
forward (~0.04 in a logit) can move a draw near a boundary.

Beyond the model's context the model sees the last ``max_length`` positions (whole blocks), the
window shifting left by one block per new block (BD3-LM's 1024-token window with left shift):
positions are window-relative, so a shift invalidates the cached K/V and the block's first
forward rewrites them from the window's start (still exact: the uncached path feeds the same
window). Where upstream's shift keeps BOS is not stated in ALGORITHMS.md; here BOS leaves the
window with the first block.

Generation settings of BD3-LM's paper, both off by default (each changes the output law away from
the model's): ``top_p`` (its nucleus rule, which drops the token crossing p; samplers/truncation.py)
and ``min_entropy=4.0`` (samplers/low_entropy.py: a sequence whose last 256 tokens fall below 4 nats
of unigram entropy after a block is drawn again, or with ``eos_id`` ended before them). Upstream
samples one sequence at a time and redraws it whole; here the batch runs together, a rejected
row keeps running to the end of the attempt (its later blocks unused) unless every row is
rejected, and the rejected rows are redrawn together with the next attempt's key. With
``eos_id`` and the check, a sequence ends at the earlier of its first EOS and the cut (upstream's
cut wins when both fire in the same block).

Not implemented (documented difference): time conditioning (``sigma``).
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import torch

from ..models.protocol import Backbone
from ..ops.sampling import sample_categorical
from . import _checks as C
from ._random import DOMAIN_REVEAL, seed_value, uniforms
from .eos import fill_after_eos, finished
from .low_entropy import attempt_seed, unigram_entropy
from .progress import Progress
from .truncation import truncate, truncation_args

__all__ = ["sample_bd3lm"]

_BLOCK_SHIFT = 32


def _reveal_prob(i: int, steps: int) -> float:
    """Reveal probability of ancestral step ``i`` of ``steps``: ``dt / t`` on upstream's ``t = linspace(1, 0, steps)``,
    ``dt = 1 / steps`` (1 at ``t = 0``, where upstream divides by zero, and when ``dt >= t``)."""
    t = 1.0 - i / (steps - 1) if steps > 1 else 1.0
    return 1.0 if t <= 1.0 / steps else 1.0 / (steps * t)


class _BlockRows:
    """Logits of rows of the current block, cached (exact block-causal KV cache) or uncached.

    The model sees the window ``[w, e)`` of the canvas, ``e`` the current block's end and
    ``w = max(0, e - window)``, at positions ``0 .. e - w - 1``. Once the canvas outgrows the
    window, each new block shifts it left by a block: the cached K/V (at window-relative
    positions) are then all stale, so the block's first call feeds the whole window from position
    0 and commits its clean part, which is what the uncached path computes at every step.
    """

    def __init__(self, backbone: Backbone, batch: int, length: int, block_size: int, window: int, use_cache: bool):
        self.backbone, self.block_size, self.window = backbone, block_size, window
        self.cache = backbone.new_cache(batch, min(length, window)) if use_cache else None
        self.pending: Optional[int] = None  # canvas start of a clean part whose K/V are not written yet
        self.block_start = self.window_start = 0

    def begin_block(self, start: int) -> None:
        window_start = max(0, start + self.block_size - self.window)
        if self.cache is not None and window_start != self.window_start:
            self.pending = window_start                 # shifted: rewrite the window's clean part
        elif self.cache is not None and start > 0:
            self.pending = start - self.block_size      # the finished block's clean K/V
        self.block_start, self.window_start = start, window_start

    def rows(self, x: torch.Tensor, r_seq: torch.Tensor, r_pos: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, V]`` of rows ``(r_seq, block_start + r_pos)``."""
        s, e, w = self.block_start, self.block_start + self.block_size, self.window_start
        if self.cache is None:
            return self.backbone.logits_at(x[:, w:e], r_seq, s - w + r_pos)
        if self.pending is not None:
            p = self.pending
            out = self.backbone.cache_rows(self.cache, x[:, p:e], p - w, r_seq, r_pos + (s - p))
            self.backbone.cache_commit(self.cache, p - w, s - p)
            self.pending = None
            return out
        return self.backbone.cache_rows(self.cache, x[:, s:e], s - w, r_seq, r_pos)


@torch.no_grad()
def sample_bd3lm(
    model,
    *,
    batch_size,
    length,
    block_size,
    mask_id,
    steps_per_block=None,
    first_hitting=None,
    temperature=1.0,
    top_p=None,
    eos_id=None,
    bos_id=None,
    min_entropy=None,
    entropy_window=256,
    max_attempts=10,
    seed=0,
    backend="auto",
    use_cache=True,
    progress=False,
    on_step=None,
):
    """Sample ``batch_size`` sequences from a block diffusion (BD3-LM) model, block by block.

    Args:
        model: a block-causal backbone (e.g. ``Transformer`` with ``attention="block_causal"``
            and ``config.block_size == block_size``); with ``use_cache`` it must offer the KV
            cache (``new_cache``), and ``hidden``/``head`` make only the revealed rows' logits.
        batch_size: B >= 1.
        length: canvas length, a multiple of ``block_size``. Beyond the model's context
            (``model.max_length``) the model sees a window of the last ``max_length`` positions
            (rounded down to whole blocks), shifted left by a block per new block (BD3-LM's
            window of 1024 with left shift).
        block_size: positions per block (BD3-LM: 4, 8, 16).
        mask_id: the mask token id.
        steps_per_block: ancestral steps per block (implies ``first_hitting=False``).
        first_hitting: first-hitting sampler (one reveal per forward); default True unless
            ``steps_per_block`` is given.
        temperature: >= 0 of the token draws (0 = argmax).
        top_p: BD3-LM's nucleus (``sampling.nucleus_p``) in (0, 1], None or 1 = off: a token is
            drawn from the tokens, by descending probability of ``softmax(l / T)`` without the
            mask, whose cumulative probability is <= top_p (the most likely always), renormalised.
        eos_id: stop after the block where every sequence has produced it (variable length); may equal
            ``bos_id`` (GPT-2's tokenizer: the BOS at position 0 does not count, as upstream's "more than one EOS").
        bos_id: if given, position 0 holds it (BD3-LM's BOS).
        min_entropy: BD3-LM's low-entropy check (upstream: 4.0; None = off, the model's own law):
            after each block ending past ``entropy_window`` positions, a sequence whose last
            ``entropy_window`` tokens have unigram entropy (nats) below it is, without ``eos_id``,
            rejected and drawn again (with a fresh Philox key per attempt), and with ``eos_id``
            ended before that window (the rest set to ``eos_id``), as upstream does.
        entropy_window: tokens the check looks at (upstream: 256), >= 1.
        max_attempts: draws per sequence at most (>= 1; upstream: 10, then it raises); a sequence
            failing them all is returned as drawn last, with a warning.
        seed: int Philox key.
        backend: sampling-op backend.
        use_cache: True = exact block-causal KV cache; False = a full forward of the prefix
            and block per step (the uncached computation, same draws).
        progress: show a tqdm bar over the steps (forwards run vs one per sequence and step).
        on_step: None, or a callable ``on_step(step, x)`` run after every step, with its number (from 1,
            redraws included) and a copy of the batch's canvas (int64 ``[B, length]``, still-masked positions
            hold ``mask_id``; a redraw shows its rows being drawn again), before ``eos_id``'s fill.

    Returns:
        int64 ``[B, L']`` with ``L' <= length`` (shorter when all sequences hit EOS early);
        positions after a sequence's first EOS hold ``eos_id``.
    """
    batch = C.integer("batch_size", batch_size, low=1)
    length = C.integer("length", length, low=1)
    bs = C.integer("block_size", block_size, low=1)
    mask_id = C.integer("mask_id", mask_id, low=0)
    if length % bs:
        raise ValueError(f"length ({length}) must be a multiple of block_size ({bs})")
    if steps_per_block is not None:
        steps_per_block = C.integer("steps_per_block", steps_per_block, low=1)
    if first_hitting is None:
        first_hitting = steps_per_block is None
    first_hitting = C.flag("first_hitting", first_hitting)
    if first_hitting and steps_per_block is not None:
        raise ValueError("give steps_per_block (ancestral) or first_hitting=True, not both")
    if not first_hitting and steps_per_block is None:
        raise ValueError("the ancestral sampler (first_hitting=False) needs steps_per_block")
    temperature = C.real("temperature", temperature, low=0.0)
    top_p, _ = truncation_args(top_p, None)
    eos_id = None if eos_id is None else C.integer("eos_id", eos_id, low=0)
    bos_id = None if bos_id is None else C.integer("bos_id", bos_id, low=0)
    for name, tok in (("eos_id", eos_id), ("bos_id", bos_id)):
        if tok == mask_id:
            raise ValueError(f"{name} must differ from mask_id ({mask_id})")
    min_entropy = None if min_entropy is None else C.real("min_entropy", min_entropy, low=0.0)
    entropy_window = C.integer("entropy_window", entropy_window, low=1)
    max_attempts = C.integer("max_attempts", max_attempts, low=1)
    if min_entropy is not None and length <= entropy_window:
        warnings.warn(f"min_entropy has no effect: the check runs after blocks ending past entropy_window "
                      f"({entropy_window}) positions, and length is {length}", RuntimeWarning, stacklevel=3)
    if min_entropy is not None and min_entropy > math.log(entropy_window):
        raise ValueError(f"min_entropy={min_entropy} can never pass: {entropy_window} tokens have at most "
                         f"log({entropy_window}) = {math.log(entropy_window):.3f} nats of unigram entropy")
    seed = seed_value("seed", seed)
    use_cache = C.flag("use_cache", use_cache)
    progress = C.flag("progress", progress)
    on_step = C.step_hook(on_step)
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str; got {type(backend).__name__}")
    C.positions_fit(batch, length)

    backbone = Backbone(model)
    if backbone.attention is not None and backbone.attention != "block_causal":
        raise ValueError(f"BD3-LM needs a block-causal model; the model's attention is {backbone.attention!r}")
    if backbone.logits_shift:
        raise ValueError("BD3-LM's block cache scores a position by its own output: a next-token-aligned "
                         "(shifted) model is not a BD3-LM model")
    model_bs = getattr(getattr(model, "config", None), "block_size", None)
    if backbone.attention == "block_causal" and model_bs != bs:
        raise ValueError(f"block_size ({bs}) must equal the model's block_size ({model_bs})")
    window = length if backbone.max_length is None else backbone.max_length // bs * bs
    if window < bs:
        raise ValueError(f"the model's context ({backbone.max_length}) is shorter than a block ({bs})")
    if use_cache and not backbone.has_cache:
        raise ValueError(f"use_cache=True needs a backbone offering a KV cache (new_cache); {type(model).__name__} "
                         "has none")
    if backbone.vocab_size is not None:
        C.check_vocab("model", backbone.vocab_size, mask_id)
        for arg, tok in (("bos_id", bos_id), ("eos_id", eos_id)):
            if tok is not None:
                C.check_vocab("model", backbone.vocab_size, tok, arg=arg)

    device = backbone.device or torch.device("cpu")
    n_blocks = length // bs

    def block_steps(blk: int) -> int:  # first-hitting: one step per masked position of the block
        n_masked = bs - (1 if (blk == 0 and bos_id is not None) else 0)
        return n_masked if first_hitting else steps_per_block

    steps_per_draw = sum(map(block_steps, range(n_blocks)))
    first = 0 if bos_id is None else 1  # BOS is not an EOS, even as the same token (GPT-2's 50256 is both)

    def draw(key: int, seqs: torch.Tensor, last: bool, whole=lambda x: x):
        """One attempt for the sequences ``seqs`` (int64 ``[b]``, their row ids: the Philox positions).

        Returns the canvas ``[b, length]``, its used length (with ``eos_id``: the end of the block
        where every row was finished), and the rows the low-entropy check rejected (fixed length)
        as bool ``[b]``. An attempt whose rows are all rejected stops early, unless it is the ``last``.
        ``whole(x)``: the batch's canvas with these rows' ``x`` in it (what on_step sees).
        """
        b = seqs.numel()
        x = torch.full((b, length), mask_id, dtype=torch.int64, device=device)
        if bos_id is not None:
            x[:, 0] = bos_id
        pos_ids = seqs.unsqueeze(1) * length + torch.arange(length, device=device).unsqueeze(0)
        rows = _BlockRows(backbone, b, length, bs, window, use_cache)
        done = torch.zeros(b, dtype=torch.bool, device=device)
        rejected = torch.zeros(b, dtype=torch.bool, device=device)
        # variable length: where each row ends, before a window that failed the check
        cut = torch.full((b, 1), length, dtype=torch.int64, device=device)
        for blk in range(n_blocks):
            s, e = blk * bs, (blk + 1) * bs
            rows.begin_block(s)
            n_steps = block_steps(blk)
            for i in range(n_steps):
                offset = (blk << _BLOCK_SHIFT) + i
                block = x[:, s:e]
                masked = block == mask_id
                u, _ = uniforms(key, offset, pos_ids[:, s:e], DOMAIN_REVEAL)
                if first_hitting:
                    # one uniformly chosen masked position per sequence: the argmax of iid uniforms
                    pick = torch.where(masked, u, -1.0).argmax(1)
                    reveal = torch.zeros_like(masked)
                    reveal[torch.arange(b, device=device), pick] = True
                    reveal &= masked
                else:
                    p = _reveal_prob(i, n_steps)
                    reveal = masked & (u < p)
                r_seq, r_pos = reveal.nonzero(as_tuple=True)
                if r_seq.numel() == 0:
                    bar.step(baseline=b, canvas=lambda: whole(x))
                    continue
                logits = rows.rows(x, r_seq, r_pos)
                if top_p is not None:
                    logits = truncate(logits, temperature=temperature, top_p=top_p, top_k=None, exclude=mask_id,
                                      rule="bd3lm")
                tok = sample_categorical(logits, temperature=temperature, seed=key, offset=offset,
                                         positions=pos_ids[r_seq, s + r_pos], exclude=mask_id, backend=backend)
                x[r_seq, s + r_pos] = tok
                bar.step(tokens=r_seq.numel(), baseline=b, canvas=lambda: whole(x))
            # The check sees rows not finished before this block: a row whose first EOS is in this block is
            # still cut when the check fails (it ends at the earlier of the two, by the final EOS fill).
            if min_entropy is not None and e > entropy_window:
                low = ~done & ~rejected & (unigram_entropy(x[:, e - entropy_window:e]) < min_entropy)
                if eos_id is None:
                    rejected |= low
                else:
                    cut[low] = e - entropy_window
                    done |= low
            if eos_id is not None:
                done |= finished(x, max(s, first), e, eos_id)
                stop = bool(done.all())
            else:
                stop = min_entropy is not None and not last and bool(rejected.all())
            if stop:  # the bar's total loses the blocks not run
                bar.add_total(-sum(map(block_steps, range(blk + 1, n_blocks))))
                break
        if eos_id is not None and min_entropy is not None:
            x.masked_fill_(torch.arange(length, device=device) >= cut, eos_id)
        return x, (e if eos_id is not None else length), rejected

    bar = Progress(progress, steps_per_draw, "bd3lm", backbone, on_step=on_step)
    try:
        x, end, rejected = draw(seed, torch.arange(batch, device=device), max_attempts == 1)
        retry = rejected.nonzero().squeeze(1)
        for attempt in range(1, max_attempts):
            if retry.numel() == 0:
                break
            bar.add_total(steps_per_draw)
            x_retry, _, rejected = draw(attempt_seed(seed, attempt), retry, attempt == max_attempts - 1,
                                        whole=lambda sub, rows=retry: x.index_copy(0, rows, sub))
            x[retry] = x_retry
            retry = retry[rejected]
    finally:
        bar.close()
    if retry.numel():
        warnings.warn(f"{retry.numel()} of {batch} sequences failed the low-entropy check (min_entropy={min_entropy}) "
                      f"in all {max_attempts} attempts; they are returned as drawn last", RuntimeWarning, stacklevel=3)
    x = x[:, :end]
    return x if eos_id is None else fill_after_eos(x, eos_id, start=first)
