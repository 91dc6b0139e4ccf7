"""MDLM ancestral sampling (Sahoo et al. 2024) with SUBS, SMDM guidance, first-hitting and strides.

The algorithm (each sequence independently; ``m_t = 1 - alpha_t`` from the schedule):

1. Canvas: all mask, with the prompt (if any) written at positions ``[0, P)``.
2. Ancestral steps over MDLM's grid ``t_k = linspace(1, eps, steps + 1)``: from ``t`` to
   ``s``, every masked position is revealed with probability ``(m_t - m_s) / m_t`` and a
   revealed position takes a token from ``softmax(l / T)`` without the mask token
   (SUBS zero-masking); unmasked positions are carried over unchanged. This is MDLM's
   update ``q[token] = p_x0 (m_t - m_s), q[mask] = m_s`` normalised, split into the reveal
   coin and the token draw (identical distribution).
3. Noise removal at ``t = eps``: ``"greedy"`` fills the remaining masks with the argmax of
   ``p_x0`` (MDLM's final ``argmax``), ``"ancestral"`` draws them (``alpha_s = 1``), ``"none"``
   leaves them.

``first_hitting=True`` replaces 2-3 by the first-hitting sampler (Zheng et al. 2024,
BD3-LM): with n masked positions at time t, the next reveal happens at the time where
``m = m_t u^(1/n)`` (u uniform) and reveals one uniformly chosen masked position; so
every model call reveals exactly one position per sequence, and the output is an
exact draw from the model's continuous-time reverse process (``steps`` is unused; the
number of calls is the number of masked positions). Times matter only to
time-conditioned models; for the others this is "reveal a uniformly random order".

``stride`` is MDLM's semi-AR sampling (``sample_subs_guidance`` / ``_semi_ar_sampler``):
a window of W positions slides by ``stride``; each new window keeps the previous
window's last ``W - stride`` positions (and the prompt) as its fixed prefix and samples
its fresh masks with the sampler above; the output has ``length = W + k * stride``.
Upstream runs each window's grid down to ``t = 0`` (its last step reveals every mask by a draw);
here the window uses the call's ``eps`` and ``noise_removal`` like the unstrided sampler, so
``eps=0`` gives upstream's behaviour (with the default ``eps`` about ``W * eps`` positions per
window are filled by the greedy noise removal instead of a draw).

``cfg_scale = w > 0`` is SMDM's unsupervised classifier-free guidance: the unconditional
input is the sequence with the prompt positions masked; the draw uses
``l_u + (w + 1)(l_c - l_u)``; both inputs run in one doubled batch.

Shortcuts, all exact (they change which numbers are computed, not the distribution):

- Reveal coins are drawn before any logits (Philox, keyed by (seed, step, position));
  only sequences with at least one reveal this step are forwarded, and with a backbone
  offering ``hidden``/``head`` only the revealed rows go through the head. A step in
  which a sequence reveals nothing needs no logits for it at all, whether or not the
  model is time-conditioned. This subsumes MDLM's ``ddpm_cache`` (skip the forward when
  the batch did not change) and is per sequence: a sequence is forwarded at a step only
  when it reveals something, and then its input differs from that of its previous call.
- The coins and draws are those of :func:`mdsample.unmask_step` with the same keys, so
  the result is token for token the one of a plain loop calling ``unmask_step`` on full
  logits every step (tests/samplers check this).

Reproducibility: sequence ``b``'s randomness is keyed by ``(seed, b)`` (Philox position
``b * length + i``, offset = window << 32 | step), so the first k sequences of a batch
of n equal a batch of k for a row-independent backbone.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..models.protocol import Backbone
from ..ops.sampling import sample_categorical
from ..ops.unmask import unmask_step
from . import _checks as C
from ._random import DOMAIN_REVEAL, DOMAIN_TIMESTEP, reveal_coins, seed_value, uniforms
from .forward import RowForward
from .progress import Progress
from .schedules import Schedule, get_schedule, time_grid

__all__ = ["sample_mdlm"]

NOISE_REMOVAL = ("greedy", "ancestral", "none")
_WINDOW_SHIFT = 32                     # offset = window << 32 | step
_ORDER_STEP = (1 << _WINDOW_SHIFT) - 1  # the first-hitting order's offset within a window


def _windows(length: int, stride, max_length: Optional[int]) -> tuple[list[int], int]:
    """Window starts and width W for MDLM's semi-AR strides (one window of ``length`` without)."""
    if stride is None:
        return [0], length
    if isinstance(stride, (tuple, list)):
        if len(stride) != 2:
            raise ValueError(f"stride must be an int or a pair (window, stride); got {stride!r}")
        window = C.integer("stride[0] (window)", stride[0], low=1)
        step = C.integer("stride[1] (stride)", stride[1], low=1)
    else:
        step = C.integer("stride", stride, low=1)
        if max_length is None:
            raise ValueError(
                "stride needs the window size: pass stride=(window, stride), or give the model a "
                "max_length attribute (its context window)"
            )
        window = max_length
    if step > window:
        raise ValueError(f"stride ({step}) must not exceed the window ({window})")
    if window >= length:
        return [0], length
    if (length - window) % step:
        raise ValueError(
            f"length ({length}) must equal window + k * stride (window {window}, stride {step}); "
            f"MDLM's strided output length is window + num_strides * stride"
        )
    return list(range(0, length - window + 1, step)), window


class _Run:
    """State shared by the windows of one sample_mdlm call."""

    def __init__(self, fwd: RowForward, schedule: Schedule, *, mask_id, steps, eps, temperature, cfg_scale,
                 seed, noise_removal, first_hitting, backend, progress: Progress, canvas):
        self.fwd, self.schedule = fwd, schedule
        self.backbone = fwd.backbone
        self.mask_id, self.steps, self.eps = mask_id, steps, eps
        self.temperature, self.cfg_scale, self.seed = temperature, cfg_scale, seed
        self.noise_removal, self.first_hitting = noise_removal, first_hitting
        self.backend, self.progress = backend, progress
        self.canvas = canvas  # what on_step sees: a function returning the whole canvas

    def _sigma(self, t, n: int, device) -> Optional[torch.Tensor]:
        if not self.backbone.time_conditioned:
            return None
        sig = self.schedule.sigma(t).to(torch.float32)
        return sig.expand(n).to(device) if sig.dim() == 0 else sig.to(device)

    def _draw(self, x, pos_ids, seqs, reveal, *, offset, temperature, reveal_prob, sigma):
        """Draw tokens for the positions ``reveal`` (bool ``[B, W]``) of sequences ``seqs``, in place."""
        if self.backbone.has_head:
            r_seq, r_pos = reveal.index_select(0, seqs).nonzero(as_tuple=True)
            logits, guidance = self.fwd.rows(x, seqs, r_seq, r_pos, sigma=sigma)
            rows = seqs[r_seq]
            x[rows, r_pos] = sample_categorical(
                logits, temperature=temperature, seed=self.seed, offset=offset, positions=pos_ids[rows, r_pos],
                exclude=self.mask_id, guidance=guidance, guidance_scale=self.cfg_scale if guidance is not None else 0.0,
                backend=self.backend,
            )
        else:
            # Full logits are computed anyway: the fused op flips the same coins and reads only revealed rows.
            logits, guidance = self.fwd.full(x, seqs, sigma=sigma)
            x[seqs] = unmask_step(
                logits, x.index_select(0, seqs), mask_id=self.mask_id, reveal_prob=reveal_prob,
                temperature=temperature, seed=self.seed, offset=offset, positions=pos_ids.index_select(0, seqs),
                guidance=guidance, guidance_scale=self.cfg_scale if guidance is not None else 0.0,
                backend=self.backend,
            )

    def ancestral(self, x: torch.Tensor, pos_ids: torch.Tensor, base: int) -> None:
        grid = time_grid(self.steps, self.eps)
        probs = self.schedule.reveal_prob(grid[:-1], grid[1:]).tolist()  # once, not per step
        for k in range(self.steps):
            reveal = reveal_coins(x, self.mask_id, probs[k], self.seed, base + k, pos_ids)
            seqs = reveal.any(1).nonzero().squeeze(1)
            if seqs.numel():
                self._draw(x, pos_ids, seqs, reveal, offset=base + k, temperature=self.temperature,
                           reveal_prob=probs[k], sigma=self._sigma(grid[k], seqs.numel(), x.device))
            self.progress.step(tokens=reveal.sum(), canvas=self.canvas)
        if self.noise_removal == "none":
            return
        masked = x == self.mask_id
        has = masked.any(1)
        if bool(has.any()):
            seqs = has.nonzero().squeeze(1)
            temp = 0.0 if self.noise_removal == "greedy" else self.temperature
            self._draw(x, pos_ids, seqs, masked, offset=base + self.steps, temperature=temp, reveal_prob=1.0,
                       sigma=self._sigma(grid[-1], seqs.numel(), x.device))
        self.progress.step(0, tokens=masked.sum(), baseline=self.progress.baseline_per_step, canvas=self.canvas)

    def first_hit(self, x: torch.Tensor, pos_ids: torch.Tensor, base: int) -> None:
        masked = x == self.mask_id
        n_masked = masked.sum(1)
        # A uniformly random reveal order: ascending i.i.d. uniform priorities of the masked positions.
        prio, _ = uniforms(self.seed, base + _ORDER_STEP, pos_ids, DOMAIN_REVEAL)
        order = torch.where(masked, prio, 2.0).argsort(dim=1, stable=True)
        t = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
        seq_ids = torch.arange(x.shape[0], device=x.device)
        for k in range(int(n_masked.max()) if x.numel() else 0):
            seqs = (n_masked > k).nonzero().squeeze(1)
            pos_k = order[seqs, k]
            sigma = None
            if self.backbone.time_conditioned:
                u, _ = uniforms(self.seed, base + k, seq_ids.index_select(0, seqs), DOMAIN_TIMESTEP)
                remaining = (n_masked.index_select(0, seqs) - k).to(torch.float64)
                m_next = self.schedule.mask_prob(t[seqs]) * u.pow(1.0 / remaining)
                t[seqs] = self.schedule.t_for_mask_prob(m_next)
                sigma = self.schedule.sigma(t[seqs]).to(torch.float32)
            r_seq = torch.arange(seqs.numel(), device=x.device)
            logits, guidance = self.fwd.rows(x, seqs, r_seq, pos_k, sigma=sigma)
            x[seqs, pos_k] = sample_categorical(
                logits, temperature=self.temperature, seed=self.seed, offset=base + k, positions=pos_ids[seqs, pos_k],
                exclude=self.mask_id, guidance=guidance,
                guidance_scale=self.cfg_scale if guidance is not None else 0.0, backend=self.backend,
            )
            self.progress.step(tokens=seqs.numel(), baseline=self.progress.baseline_per_step, canvas=self.canvas)


@torch.no_grad()
def sample_mdlm(
    model,
    *,
    batch_size,
    length,
    mask_id,
    steps,
    prompt=None,
    schedule="loglinear",
    eps=1e-5,
    temperature=1.0,
    cfg_scale=0.0,
    seed=0,
    noise_removal="greedy",
    time_conditioned=False,
    first_hitting=False,
    stride=None,
    backend="auto",
    progress=False,
    on_step=None,
):
    """Sample ``batch_size`` sequences from a masked diffusion model with MDLM's ancestral sampler.

    Exact MDLM ancestral sampling with SUBS (the module docstring states the algorithm,
    its first-hitting and strided variants, SMDM's CFG, and the exact shortcuts).

    Args:
        model: backbone ``model(x: int64 [B, L], **kw) -> logits [B, L, V]`` (or ``.logits``),
            V including the mask token; optionally ``hidden``/``head`` (mdsample.models.protocol).
        batch_size: number of sequences B (int >= 1).
        length: output length (int >= 1), prompt included.
        mask_id: the mask token id (in [0, V)).
        steps: number of ancestral steps per window (int >= 1; unused with first_hitting).
        prompt: optional int tensor ``[P]`` or ``[B, P]`` (or ``[1, P]``), P <= length: fixed
            tokens at positions ``[0, P)``. Prompt entries equal to ``mask_id`` are sampled.
        schedule: "loglinear", "cosine", "cosine-mdlm" or a :class:`mdsample.samplers.Schedule`.
        eps: last time of the grid ``linspace(1, eps, steps + 1)``, in [0, 1) (unused with first_hitting).
        temperature: float >= 0 applied to the logits of every draw (0 = argmax).
        cfg_scale: SMDM unsupervised CFG weight w >= 0 (needs a prompt).
        seed: int, the Philox key.
        noise_removal: "greedy" (argmax fill at t = eps), "ancestral" or "none".
        time_conditioned: pass ``sigma = -log alpha_t`` (float32 ``[n]``) to the model.
        first_hitting: one reveal per sequence per call at sampled first-hitting times, until no
            mask is left (so ``noise_removal`` has nothing to do).
        stride: None, an int (window = ``model.max_length``) or ``(window, stride)``: MDLM's
            semi-AR strides; ``length`` must be ``window + k * stride``.
        backend: sampling-op backend ("auto", "cuda", "triton", "cpu", "reference").
        progress: show a tqdm bar (steps, forward passes saved, tokens/s).
        on_step: None, or a callable ``on_step(step, x)`` run after every step (and after the noise
            removal), with its number (from 1) and a copy of the whole canvas (int64 ``[B, length]``,
            still-masked positions hold ``mask_id``), e.g. to watch the denoising or keep its history.

    Returns:
        int64 ``[batch_size, length]`` token ids, on the prompt's device (else the model's).
        With ``noise_removal="none"`` some positions may still hold ``mask_id``.
    """
    batch_size = C.integer("batch_size", batch_size, low=1)
    length = C.integer("length", length, low=1)
    mask_id = C.integer("mask_id", mask_id, low=0)
    steps = C.integer("steps", steps, low=1)
    if steps >= _ORDER_STEP:
        raise ValueError(f"steps must be < 2^32 - 1; got {steps}")
    sched = get_schedule(schedule)
    eps = C.real("eps", eps, low=0.0, high=1.0, high_inclusive=False)
    temperature = C.real("temperature", temperature, low=0.0)
    cfg_scale = C.real("cfg_scale", cfg_scale, low=0.0)
    seed = seed_value("seed", seed)
    noise_removal = C.choice("noise_removal", noise_removal, NOISE_REMOVAL)
    time_conditioned = C.flag("time_conditioned", time_conditioned)
    first_hitting = C.flag("first_hitting", first_hitting)
    progress = C.flag("progress", progress)
    on_step = C.step_hook(on_step)
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str; got {type(backend).__name__}")
    C.positions_fit(batch_size, length)

    backbone = Backbone(model, time_conditioned=time_conditioned)
    device = prompt.device if isinstance(prompt, torch.Tensor) else (backbone.device or torch.device("cpu"))
    x_all = torch.full((batch_size, length), mask_id, dtype=torch.int64, device=device)
    is_prompt = torch.zeros((batch_size, length), dtype=torch.bool, device=device)
    if prompt is not None:
        p = C.token_ids("prompt", prompt, dims=(1, 2), device=device)
        if p.dim() == 1:
            p = p.unsqueeze(0)
        if p.shape[0] not in (1, batch_size):
            raise ValueError(f"prompt must be [P], [1, P] or [batch_size={batch_size}, P]; got {tuple(p.shape)}")
        if p.shape[1] > length:
            raise ValueError(f"prompt length {p.shape[1]} exceeds length {length}")
        C.tokens_in_vocab("prompt", p, backbone.vocab_size)
        x_all[:, : p.shape[1]] = p
        is_prompt[:, : p.shape[1]] = p != mask_id
    if cfg_scale > 0 and not bool(is_prompt.any()):
        raise ValueError("cfg_scale > 0 needs a prompt: SMDM's unconditional input masks the prompt positions")

    starts, window = _windows(length, stride, backbone.max_length)
    if backbone.max_length is not None and window > backbone.max_length:
        what = "length" if stride is None else "the window"
        raise ValueError(f"{what} ({window}) exceeds the model's context ({backbone.max_length}): give a shorter "
                         f"{what}, or stride= for MDLM's semi-AR windows")
    mult = 2 if cfg_scale > 0 else 1
    bar = Progress(progress, None if first_hitting else len(starts) * steps, "mdlm", backbone,
                   baseline_per_step=batch_size * mult, on_step=on_step)
    pos_all = (torch.arange(batch_size, device=device).unsqueeze(1) * length
               + torch.arange(length, device=device).unsqueeze(0))
    try:
        for w, a in enumerate(starts):
            x = x_all[:, a:a + window].clone()
            fwd = RowForward(backbone, mask_id=mask_id, cfg_scale=cfg_scale,
                             uncond_mask=is_prompt[:, a:a + window].contiguous())

            def canvas(x=x, a=a):  # the window written back: on_step sees the whole canvas
                x_all[:, a:a + window] = x
                return x_all

            run = _Run(fwd, sched, mask_id=mask_id, steps=steps, eps=eps, temperature=temperature,
                       cfg_scale=cfg_scale, seed=seed, noise_removal=noise_removal, first_hitting=first_hitting,
                       backend=backend, progress=bar, canvas=canvas)
            pos = pos_all[:, a:a + window]
            if first_hitting:
                run.first_hit(x, pos, w << _WINDOW_SHIFT)
            else:
                run.ancestral(x, pos, w << _WINDOW_SHIFT)
            x_all[:, a:a + window] = x
    finally:
        bar.close()
    return x_all
