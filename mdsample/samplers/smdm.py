"""SMDM's conditional sampler (Nie et al. 2024, "Scaling up Masked Diffusion Models on Text").

The algorithm (SMDM's ``diff_sample``; ALGORITHMS.md):

1. ``x = [prompt | mask]`` over the whole context (``length`` positions; mask tokens inside the
   prompt, e.g. SMDM's padding, are filled too); times
   ``t_i = linspace(1, eps, steps + 1)`` (float32), step i goes from ``t = t_i`` to ``s = t_{i+1}``.
2. Each step, one forward of the canvas (with ``cfg_scale = w > 0``: SMDM's unsupervised CFG,
   the unconditional input masks every prompt position, ``l_u + (w + 1)(l_c - l_u)``, one doubled batch);
   ``x0`` from ``softmax(l / T)`` (SMDM's float64 Gumbel-max, argmax at T = 0), then
   - ``alg="origin"``: each masked position is revealed with probability ``1 - s / t`` (1 at the
     last step) and takes its ``x0``;
   - ``alg="greedy"`` (upstream spells it ``"greddy"``): every masked position draws ``x0`` and
     its confidence ``p(x0)`` under ``softmax(l)`` (no temperature, as upstream); the
     ``int(n * (1 - s / t))`` most confident are committed, n the masked count; the last step
     commits every remaining mask.

This is the loop Dream's ``diffusion_generate`` was written from, so it runs on the same code as
:func:`mdsample.sample_dream` (``"greedy"`` is Dream's ``"maskgit_plus"`` with untempered
confidences and no truncation). Differences from upstream, deliberate and documented:

- The mask token is never drawn and confidences are of the distribution without it (SMDM's
  vocabulary includes the mask, so upstream can write the mask token back as a "revealed" token).
- ``"greedy"`` with a batch: upstream pools the masked positions of the whole batch in one top-k
  of ``int(total masked * (1 - s / t))``, so a sequence's commits depend on the others'
  confidences; here each sequence commits ``int(n_b * (1 - s / t))`` of its own ``n_b`` masks: the
  same tokens at batch 1, and a batch-invariant output otherwise (mask tokens in some prompts too).
- Confidences are the fused op's float32 ``p(x0)`` (upstream: a float64 softmax), so two positions
  whose confidences agree to ~1e-7 tie and the lower one goes first.
- Ties in confidence go to the lower position; randomness is Philox keyed by
  (seed, step, b * length + i), not the torch global RNG; with ``"origin"`` only sequences with
  a revealed position are forwarded and, through ``hidden``/``head``, only revealed rows get logits.
"""
from __future__ import annotations

import torch

from ..models.protocol import device_of
from . import _checks as C
from .dream import _sample_dream

__all__ = ["sample_smdm", "SMDM_ALGS"]

SMDM_ALGS = ("origin", "greedy")
_DREAM_ALG = {"origin": "origin", "greedy": "maskgit_plus"}


@torch.no_grad()
def sample_smdm(
    model,
    prompt=None,
    *,
    length,
    steps=512,
    alg="origin",
    temperature=1.0,
    cfg_scale=0.0,
    eps=1e-5,
    mask_id=None,
    batch_size=None,
    seed=0,
    backend="auto",
    progress=False,
    on_step=None,
):
    """SMDM's sampler: a prompt followed by masks up to ``length``, denoised over the whole canvas.

    The module docstring states the algorithm and every difference from upstream.

    Args:
        model: backbone ``model(x: int64 [B, L]) -> logits [B, L, V]`` (or ``.logits``), V including the
            mask token; with ``hidden``/``head`` only the masked (``"origin"``: revealed) rows get logits.
        prompt: int tensor ``[B, P]`` (or ``[P]``) written at positions ``[0, P)``, P <= ``length``; or
            None: ``batch_size`` unconditional sequences (``cfg_scale`` must then be 0).
        length: total length L (SMDM's ``context_length``), prompt included.
        steps: denoising steps (int >= 1; SMDM's default 512).
        alg: ``"origin"`` (reveal each mask with probability ``1 - s/t``) or ``"greedy"`` (commit the
            most confident); upstream's spelling ``"greddy"`` is accepted.
        temperature: float >= 0 of the token draws (0 = argmax).
        cfg_scale: unsupervised CFG weight w >= 0 (needs a prompt).
        eps: the last time, in [0, 1) (SMDM's 1e-5).
        mask_id: the mask token id; None: the model's (``mask_id``, ``config.mask_id`` or
            ``config.mask_token_id``), else SMDM's 32000 (the last of V = 32001).
        batch_size: sequences to draw (int >= 1): a ``[1, P]`` or ``[P]`` prompt is repeated that many times,
            a ``[B, P]`` one needs ``batch_size`` None or B; None: the prompt's B, or 1 without a prompt.
        seed: int Philox key.
        backend: sampling-op backend ("auto", "cuda", "triton", "cpu", "reference").
        progress: show a tqdm bar.
        on_step: None, or a callable ``on_step(step, x)`` run after every step, with its
            number (from 1) and a copy of the canvas (int64 ``[B, L]``, still-masked positions hold the mask
            id), e.g. to watch the denoising or keep its history.

    Returns:
        int64 ``[B, length]``: the prompt followed by the generated tokens.
    """
    if alg == "greddy":
        alg = "greedy"
    alg = C.choice("alg", alg, SMDM_ALGS)
    length = C.integer("length", length, low=1)
    if batch_size is not None:
        batch_size = C.integer("batch_size", batch_size, low=1)
    if prompt is None:
        prompt = torch.zeros((batch_size or 1, 0), dtype=torch.int64, device=device_of(model) or torch.device("cpu"))
    prompt = C.token_ids("prompt", prompt, dims=(1, 2))
    if batch_size is not None and (prompt.dim() == 1 or prompt.shape[0] != batch_size):
        if prompt.dim() == 2 and prompt.shape[0] != 1:
            raise ValueError(f"prompt must be [P], [1, P] or [batch_size={batch_size}, P]; got {tuple(prompt.shape)}")
        prompt = prompt.expand(batch_size, -1)
    plen = prompt.shape[-1]
    if plen > length:
        raise ValueError(f"length ({length}) must be at least the prompt's length ({plen})")
    return _sample_dream(model, prompt, max_new_tokens=length - plen, steps=steps, alg=_DREAM_ALG[alg], alg_temp=None,
                         temperature=temperature, top_p=None, top_k=None, eps=eps, mask_id=mask_id,
                         attention_mask=None, seed=seed, backend=backend, progress=progress, on_step=on_step,
                         cfg_scale=cfg_scale, smdm=True)

