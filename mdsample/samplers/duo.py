"""Duo (Sahoo et al. 2025, "The Diffusion Duality"): ancestral sampling of uniform-state diffusion.

The algorithm (Duo ``generate_samples`` with the ``ancestral`` / ``ancestral_cache`` sampler):

1. ``x_1`` uniform over the V tokens.
2. Over the grid ``linspace(1, eps, steps + 1)``, from t to s: the model's
   ``x_hat = softmax(l / T)`` (T = 1 is Duo; ``sigma = -log alpha_t`` for time-conditioned
   models) and Duo's posterior, ``alpha_ts = alpha_t / alpha_s``:

       q(v | x_t) = [alpha_t V x_hat[v] [v = x_t] + (alpha_ts - alpha_t) [v = x_t]
                     + (alpha_s - alpha_t) x_hat[v] + (1 - alpha_ts)(1 - alpha_s) / V]
                    / [alpha_t V x_hat[x_t] + 1 - alpha_t]

3. Noise removal at t = eps: ``"greedy"`` = argmax of ``x_hat`` at every position (Duo's
   greedy tail), ``"ancestral"`` = one more posterior step with ``alpha_s = 1``, ``"none"``.

How it is sampled here, exactly and without a ``[B, L, V]`` float64 tensor: ``q`` is a
mixture of three distributions with float64 weights per position,

    w1 = alpha_t V x_hat[x_t] + alpha_ts - alpha_t   -> keep x_t
    w2 = alpha_s - alpha_t                           -> a draw from x_hat
    w3 = (1 - alpha_ts)(1 - alpha_s)                 -> a uniform token

(``w1 + w2 + w3`` is the denominator above). One Philox uniform picks the component,
the ``x_hat`` draw is :func:`mdsample.sample_categorical` (exact, read only for the rows
that need it), the uniform token uses a second 53-bit uniform. ``x_hat[x_t]`` needs the
row's log-normaliser, computed in float32 or wider (relative error ~1e-7, far below the
1e-3 budget of DESIGN.md §4).

Shortcut, exact: a model that is not time-conditioned is forwarded only for sequences
that changed since their last forward (Duo's ``ancestral_cache``, per sequence instead of
whole-batch).
"""
from __future__ import annotations

import torch

from ..models.protocol import Backbone
from ..ops import _validate as V
from ..ops.sampling import _fp32_positive, sample_categorical
from . import _checks as C
from ._random import DOMAIN_REVEAL, seed_value, uniforms
from .progress import Progress
from .schedules import get_schedule, time_grid

__all__ = ["sample_duo", "duo_posterior_step", "NOISE_REMOVAL"]

NOISE_REMOVAL = ("greedy", "ancestral", "none")
_PRIOR_OFFSET = (1 << 63) - 1  # the prior's uniforms, apart from every step's offset


def duo_posterior_step(logits, x, *, alpha_t, alpha_s, temperature=1.0, seed=0, offset=0, positions=None,
                       backend="auto"):
    """One draw from Duo's posterior ``q(x_s | x_t, x_hat)`` at every position.

    Args:
        logits: ``[..., V]`` float16/bfloat16/float32/float64 model logits (``x_hat = softmax(l / T)``),
            last dim stride 1.
        x: int64 ``[...]`` current tokens ``x_t`` in ``[0, V)``.
        alpha_t, alpha_s: floats with ``0 <= alpha_t <= alpha_s <= 1``, ``alpha_s > 0``.
        temperature: float >= 0 (0: ``x_hat`` is the one-hot argmax).
        seed, offset: ints (Philox key and step counter).
        positions: int64 ``[...]`` Philox positions (default: flat index).
        backend: sampling-op backend.

    Returns:
        int64 ``[...]``: ``x_s``.
    """
    logits = V.float_logits("logits", logits)
    lead, vocab = logits.shape[:-1], logits.shape[-1]
    x = V.as_tensor("x", x)
    if x.dtype not in V.INT_DTYPES:
        raise TypeError(f"x must be an integer tensor of token ids; got {x.dtype}")
    if x.shape != lead:
        raise ValueError(f"x must have the leading shape of logits {tuple(lead)}; got {tuple(x.shape)}")
    x = x.to(torch.int64)
    V.tokens_in_vocab("x", x, vocab)
    a_t = C.real("alpha_t", alpha_t, low=0.0, high=1.0)
    a_s = C.real("alpha_s", alpha_s, low=0.0, high=1.0)
    if a_s < a_t or a_s == 0.0:
        raise ValueError(f"need 0 <= alpha_t <= alpha_s <= 1 and alpha_s > 0; got alpha_t={a_t}, alpha_s={a_s}")
    temperature = C.real("temperature", temperature, low=0.0)
    if positions is None:
        positions = torch.arange(x.numel(), device=x.device).view(lead)
    else:
        positions = V.as_tensor("positions", positions)
        if positions.dtype not in V.INT_DTYPES or positions.shape != lead:
            raise ValueError(f"positions must be an integer tensor of x's shape {tuple(lead)}; got "
                             f"{positions.dtype} of shape {tuple(positions.shape)}")

    if _fp32_positive(temperature):  # the sampling op's rule: T <= 2^-150 is argmax there too
        work = logits if logits.dtype == torch.float64 else logits.float()
        # Shifted by the row max first: l / T overflows float32 for tiny T (a finite row stays finite).
        scaled = (work - work.amax(-1, keepdim=True)) / temperature
        lse = torch.logsumexp(scaled, dim=-1)
        at_x = scaled.gather(-1, x.unsqueeze(-1)).squeeze(-1)
        xhat_x = torch.exp((at_x - lse).to(torch.float64))
    else:
        top = sample_categorical(logits, temperature=0.0, backend=backend)
        xhat_x = (top == x).to(torch.float64)

    a_ts = a_t / a_s
    w1 = a_t * vocab * xhat_x + (a_ts - a_t)
    w2 = a_s - a_t
    w3 = (1.0 - a_ts) * (1.0 - a_s)
    u_pick, u_tok = uniforms(seed, offset, positions, DOMAIN_REVEAL)
    pick = u_pick * (w1 + w2 + w3)
    keep = pick < w1
    # A row with NaN, +inf or no finite logit makes x_hat[x_t] NaN, and every comparison with a NaN pick is
    # False: such rows go to the sampling op, whose check names them (one host read per step, not two).
    from_model = (~keep & (pick < w1 + w2)) | torch.isnan(pick)
    drawn = sample_categorical(logits, temperature=temperature, seed=seed, offset=offset, positions=positions,
                               active=from_model, fallback=x, backend=backend)
    uniform_tok = (u_tok * vocab).to(torch.int64).clamp_max(vocab - 1)
    return torch.where(keep | from_model, drawn, uniform_tok)


class _Logits:
    """Model logits of the canvas, recomputed only for sequences that changed (non-time-conditioned)."""

    def __init__(self, backbone: Backbone, vocab: int, batch: int, device):
        self.backbone, self.vocab = backbone, vocab
        self.cache = None
        self.stale = torch.ones(batch, dtype=torch.bool, device=device)

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        if self.backbone.time_conditioned:
            return self._slice(self.backbone.logits(x, sigma=sigma.expand(x.shape[0])))
        if bool(self.stale.any()):
            seqs = self.stale.nonzero().squeeze(1)
            out = self._slice(self.backbone.logits(x.index_select(0, seqs)))
            if self.cache is None:
                self.cache = out.new_empty((x.shape[0],) + tuple(out.shape[1:]))
            self.cache[seqs] = out
            self.stale.zero_()
        return self.cache

    def _slice(self, out: torch.Tensor) -> torch.Tensor:
        if out.shape[-1] < self.vocab:
            raise ValueError(f"vocab_size ({self.vocab}) exceeds the {out.shape[-1]} logits per position of the model")
        return out[..., : self.vocab]

    def changed(self, before: torch.Tensor, after: torch.Tensor) -> None:
        self.stale |= (before != after).any(1)


@torch.no_grad()
def sample_duo(
    model,
    *,
    batch_size,
    length,
    vocab_size,
    steps,
    schedule,
    temperature=1.0,
    seed=0,
    noise_removal="greedy",
    backend="auto",
    eps=1e-5,
    time_conditioned=False,
    progress=False,
    on_step=None,
):
    """Sample from a uniform-state (Duo) diffusion model with its exact ancestral posterior.

    The module docstring states the algorithm (Duo's ``_ancestral_update`` posterior) and how
    it is sampled exactly.

    Args:
        model: backbone ``model(x: int64 [B, L], **kw) -> logits [B, L, V']`` with V' >= vocab_size
            (extra columns, e.g. vocabulary padding, are ignored).
        batch_size, length: output shape (ints >= 1).
        vocab_size: V, the number of tokens of the uniform prior.
        steps: ancestral steps (int >= 1).
        schedule: "loglinear", "cosine", "cosine-mdlm" or a :class:`mdsample.samplers.Schedule`.
        temperature: float >= 0 of ``x_hat`` (1 = Duo; 0 = argmax).
        seed: int Philox key; sequence b's randomness depends only on (seed, b).
        noise_removal: "greedy" (Duo default), "ancestral" or "none".
        backend: sampling-op backend.
        eps: last time of the grid ``linspace(1, eps, steps + 1)``, in [0, 1).
        time_conditioned: pass ``sigma = -log alpha_t`` (float32 ``[B]``) to the model.
        progress: show a tqdm bar.
        on_step: None, or a callable ``on_step(step, x)`` run after every step (and after the noise
            removal), with its number (from 1) and a copy of the canvas (int64 ``[B, length]``), e.g. to
            watch the denoising or keep its history.

    Returns:
        int64 ``[batch_size, length]`` tokens in ``[0, vocab_size)``.
    """
    batch_size = C.integer("batch_size", batch_size, low=1)
    length = C.integer("length", length, low=1)
    vocab_size = C.integer("vocab_size", vocab_size, low=1)
    steps = C.integer("steps", steps, low=1)
    sched = get_schedule(schedule)
    temperature = C.real("temperature", temperature, low=0.0)
    seed = seed_value("seed", seed)
    noise_removal = C.choice("noise_removal", noise_removal, NOISE_REMOVAL)
    eps = C.real("eps", eps, low=0.0, high=1.0, high_inclusive=False)
    time_conditioned = C.flag("time_conditioned", time_conditioned)
    progress = C.flag("progress", progress)
    on_step = C.step_hook(on_step)
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str; got {type(backend).__name__}")
    C.positions_fit(batch_size, length)

    backbone = Backbone(model, time_conditioned=time_conditioned)
    if backbone.vocab_size is not None and vocab_size > backbone.vocab_size:
        raise ValueError(f"vocab_size ({vocab_size}) exceeds the model's vocabulary ({backbone.vocab_size})")
    if backbone.max_length is not None and length > backbone.max_length:
        raise ValueError(f"length ({length}) exceeds the model's context ({backbone.max_length})")
    device = backbone.device or torch.device("cpu")
    pos = (torch.arange(batch_size, device=device).unsqueeze(1) * length
           + torch.arange(length, device=device).unsqueeze(0))
    u, _ = uniforms(seed, _PRIOR_OFFSET, pos, DOMAIN_REVEAL)
    x = (u * vocab_size).to(torch.int64).clamp_max(vocab_size - 1)
    logits_of = _Logits(backbone, vocab_size, batch_size, device)
    grid = time_grid(steps, eps)

    def sigma_at(t):
        return sched.sigma(t).to(torch.float32).to(device).reshape(1)

    bar = Progress(progress, steps, "duo", backbone, baseline_per_step=batch_size, on_step=on_step)
    try:
        for k in range(steps):
            t, s = grid[k], grid[k + 1]
            logits = logits_of(x, sigma_at(t))
            new = duo_posterior_step(logits, x, alpha_t=float(sched.alpha(t)), alpha_s=float(sched.alpha(s)),
                                     temperature=temperature, seed=seed, offset=k, positions=pos, backend=backend)
            logits_of.changed(x, new)
            bar.step(tokens=(new != x).sum(), canvas=new)
            x = new
        if noise_removal != "none":
            logits = logits_of(x, sigma_at(grid[-1]))
            if noise_removal == "greedy":
                x = sample_categorical(logits, temperature=0.0, backend=backend)
            else:
                x = duo_posterior_step(logits, x, alpha_t=float(sched.alpha(grid[-1])), alpha_s=1.0,
                                       temperature=temperature, seed=seed, offset=steps, positions=pos,
                                       backend=backend)
            bar.step(0, baseline=batch_size, canvas=x)
    finally:
        bar.close()
    return x
