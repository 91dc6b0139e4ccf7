"""Argument checks of the samplers: each error names the argument and what was expected."""
from __future__ import annotations

import numbers
from typing import Optional

import torch

from ..models.protocol import declared_mask_id, declared_vocab_bound
from ..ops import _validate as V


def integer(name: str, value, *, low: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}; got {value}")
    return value


def real(name: str, value, *, low: Optional[float] = None, high: Optional[float] = None,
         high_inclusive: bool = True) -> float:
    v = V.finite_number(name, value, low=low)
    if high is not None and (v > high or (v == high and not high_inclusive)):
        raise ValueError(f"{name} must be {'<=' if high_inclusive else '<'} {high}; got {value}")
    return v


flag = V.flag


def choice(name: str, value, options) -> str:
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}")
    return value


def token_ids(name: str, value, *, dims: tuple[int, ...], device=None) -> torch.Tensor:
    """An integer tensor of token ids (>= 0) with one of the allowed numbers of dims, as int64."""
    t = V.as_tensor(name, value)
    if t.dtype not in V.INT_DTYPES:
        raise TypeError(f"{name} must be an integer tensor of token ids; got {t.dtype}")
    if t.dim() not in dims:
        want = " or ".join(f"{d}-d" for d in dims)
        raise ValueError(f"{name} must be {want}; got shape {tuple(t.shape)}")
    if t.numel() and bool((t < 0).any()):
        raise ValueError(f"{name} must hold token ids >= 0")
    if device is not None and t.device != torch.device(device):
        t = t.to(device)
    return t.to(torch.int64)


tokens_in_vocab = V.tokens_in_vocab  # shared with the models layer (models/ar.py)


def check_vocab(name: str, vocab: int, mask_id: int, *, arg: str = "mask_id") -> None:
    """The model's vocabulary must contain the token ``mask_id`` (the argument ``arg``)."""
    if not 0 <= mask_id < vocab:
        raise ValueError(f"{arg} {mask_id} is not a token of the {name}'s vocabulary of size {vocab}")


def positions_fit(batch: int, length: int) -> None:
    """Philox positions are ``b * length + i``: they must stay below 2^48."""
    if batch * length > 2**48:
        raise ValueError(f"batch * length = {batch * length} exceeds 2^48 Philox positions")


def prompt_canvas(prompt, attention_mask, gen_length: int, mask_id: int):
    """``[prompt | mask * gen_length]`` of a checked prompt, and its extended attention mask.

    Args:
        prompt: int tensor ``[B, P]`` or ``[P]`` of token ids.
        attention_mask: ``[B, P]`` (1 = real token) or None; extended with ones over the generated part.

    Returns:
        ``(x int64 [B, P + gen_length], attention_mask [B, P + gen_length] or None, P)``.
    """
    prompt = token_ids("prompt", prompt, dims=(1, 2))
    if prompt.dim() == 1:
        prompt = prompt.unsqueeze(0)
    device = prompt.device
    batch, plen = prompt.shape
    positions_fit(batch, plen + gen_length)
    x = torch.cat([prompt, torch.full((batch, gen_length), mask_id, dtype=torch.int64, device=device)], 1)
    if attention_mask is None:
        return x, None, plen
    am = padding_mask(attention_mask, prompt)
    return x, torch.cat([am, torch.ones((batch, gen_length), dtype=am.dtype, device=device)], 1), plen


def padding_mask(attention_mask, like: torch.Tensor) -> torch.Tensor:
    """A checked attention mask: bool or integer, of ``like``'s shape and device, holding only 0 (padding) and
    1 (real token); one host read. Before, NaN, 0.5 or 2 read as real tokens, since the models test ``!= 0``."""
    am = V.as_tensor("attention_mask", attention_mask)
    if am.shape != like.shape:
        raise ValueError(f"attention_mask must have the shape of the tokens {tuple(like.shape)}; got "
                         f"{tuple(am.shape)}")
    if am.device != like.device:
        raise ValueError(f"attention_mask is on {am.device} but the tokens are on {like.device}")
    if am.dtype != torch.bool and am.dtype not in V.INT_DTYPES:
        raise TypeError(f"attention_mask must be bool or integer (1 = real token, 0 = padding); got {am.dtype}")
    if am.dtype != torch.bool and bool(((am != 0) & (am != 1)).any()):
        raise ValueError(f"attention_mask must hold only 0 (padding) and 1 (real token); it also holds "
                         f"{sorted(set(am.unique().tolist()) - {0, 1})[:3]}")
    return am


def canvas_fits(backbone, x: torch.Tensor, plen: int, new: str, n_new: int) -> None:
    """A ``[prompt | new]`` canvas ``x`` ``[B, P + n_new]`` against the model: prompt ids in its vocabulary,
    and no more positions than its context (``new``: the argument that sets ``n_new``)."""
    tokens_in_vocab("prompt", x[:, :plen], backbone.vocab_size)
    total = x.shape[1]
    if backbone.max_length is not None and total > backbone.max_length:
        raise ValueError(f"prompt ({plen}) + {new} ({n_new}) = {total} positions exceed the model's context "
                         f"({backbone.max_length})")


def step_hook(on_step):
    """A sampler's ``on_step``: None or a callable ``on_step(step, x)``."""
    if on_step is not None and not callable(on_step):
        raise TypeError(f"on_step must be None or a callable on_step(step: int, x: Tensor); got "
                        f"{type(on_step).__name__}")
    return on_step


def mask_token(model, mask_id, fallback: Optional[int]) -> int:
    """The mask id to use: the caller's; else the one the model declares; else ``fallback`` (the upstream
    project's constant, e.g. LLaDA's 126336; None: the caller must give one), checked as an id >= 0. A
    ``fallback`` is a guess about the model, so it is refused at or past :func:`declared_vocab_bound`, where the
    model's embedding would fail without naming it."""
    if mask_id is not None:
        return integer("mask_id", mask_id, low=0)
    declared = declared_mask_id(model)
    if declared is not None:
        return integer("mask_id", declared, low=0)
    if fallback is None:
        raise ValueError("mask_id is required: the model declares none (mask_id, config.mask_id or "
                         "config.mask_token_id)")
    vocab = declared_vocab_bound(model)
    if vocab is not None and fallback >= vocab:
        raise ValueError(f"mask_id is required: the model declares none, and the default {fallback} (the upstream "
                         f"model's) lies outside its vocabulary of {vocab} tokens; pass the model's [MASK] id")
    return fallback


def unmask_padding(x: torch.Tensor, attention_mask: Optional[torch.Tensor], mask_id: int):
    """Padding that holds ``mask_id`` (SMDM pads with it) swapped for a stand-in token, so that no sampler takes
    it for a position to fill: ``(x, where)``, ``where`` bool ``[B, L]`` or None. Padding is hidden from the
    model by ``attention_mask``, so the stand-in changes no logit; :func:`restore_padding` puts it back."""
    if attention_mask is None:
        return x, None
    where = (attention_mask == 0) & (x == mask_id)
    if not bool(where.any()):
        return x, None
    return x.masked_fill(where, 1 if mask_id == 0 else 0), where


def restore_padding(out: torch.Tensor, where: Optional[torch.Tensor], mask_id: int) -> torch.Tensor:
    """``out`` with the padding :func:`unmask_padding` swapped holding ``mask_id`` again."""
    return out if where is None else out.masked_fill(where, mask_id)
