"""torch.library registration of the row draw, so the ops trace under torch.compile(fullgraph=True).

Eager calls skip this layer and call the backend directly (DESIGN.md §2: the
dispatcher costs microseconds per call); under compilation the public ops call
``torch.ops.mdsample.sample_rows``, whose fake implementation gives shapes only.
"""
# No ``from __future__ import annotations`` here: torch 2.4's custom_op reads the annotations as
# objects (string annotations are refused, "unsupported type torch.Tensor"), and only the typing
# spelling Optional[...] is in its table of schema types.
import dataclasses
import math
from typing import Optional

import torch

from ._rows import BY_VALUE, RowDraw, run, tensor_or_value

# Per-row parameters that are an [N] tensor or one number (BY_VALUE): the op's fixed schema
# takes each as an optional tensor plus a value (read when the tensor is None).
_FIELDS = [f.name for f in dataclasses.fields(RowDraw)]


@torch.library.custom_op("mdsample::sample_rows", mutates_args=())
def _sample_rows(
    logits: torch.Tensor,
    row_offsets: Optional[torch.Tensor],
    row_stride: int,
    temperature: Optional[torch.Tensor],
    temperature_val: float,
    seed: Optional[torch.Tensor],
    seed_val: int,
    offset: Optional[torch.Tensor],
    offset_val: int,
    position: Optional[torch.Tensor],
    exclude: int,
    guidance: Optional[torch.Tensor],
    guidance_offsets: Optional[torch.Tensor],
    guidance_row_stride: int,
    guidance_scale: float,
    active: Optional[torch.Tensor],
    fallback: Optional[torch.Tensor],
    x: Optional[torch.Tensor],
    mask_id: int,
    reveal_prob: Optional[torch.Tensor],
    reveal_prob_val: float,
    stats: bool,
    stats_temperature: Optional[torch.Tensor],
    stats_temperature_val: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    kwargs = dict(locals())
    chosen = kwargs.pop("backend")
    for name in BY_VALUE:
        value = kwargs.pop(name + "_val")
        if kwargs[name] is None:
            kwargs[name] = value
    if x is None:
        kwargs["reveal_prob"] = None
    if not kwargs.pop("stats"):
        kwargs["stats_temperature"] = None
    tokens, stats = run(RowDraw(**kwargs), chosen)
    if stats is None:
        stats = torch.empty((0, 4), dtype=torch.float32, device=tokens.device)
    return tokens, stats


@_sample_rows.register_fake
def _(logits, row_offsets, row_stride, temperature, temperature_val, seed, seed_val, offset, offset_val, position,
      exclude, guidance, guidance_offsets, guidance_row_stride, guidance_scale, active, fallback, x, mask_id,
      reveal_prob, reveal_prob_val, stats, stats_temperature, stats_temperature_val, backend):
    n = math.prod(logits.shape[:-1])
    tokens = logits.new_empty((n,), dtype=torch.int64)
    return tokens, logits.new_empty((n if stats else 0, 4), dtype=torch.float32)


def _op_args(req: RowDraw) -> list:
    """``req`` as the op's positional arguments (the schema above), without the backend."""
    out = []
    for name in _FIELDS:
        if name == "stats_temperature":
            out.append(req.stats_temperature is not None)
        out += tensor_or_value(req, name) if name in BY_VALUE else (getattr(req, name),)
    return out


def sample_rows_op(req: RowDraw, backend: str):
    """Run ``req`` through the registered op; returns tokens ``[N]`` and stats ``[N, 4]`` or None."""
    tokens, stats = torch.ops.mdsample.sample_rows(*_op_args(req), backend)
    return tokens, (stats if req.stats_temperature is not None else None)


# ---- likelihood ops: lowdisc_timesteps, forward_mask, masked_nll (issue 6) ----

from . import _likelihood as _lk  # noqa: E402  (kept beside its registrations)

_NLL_FIELDS = [f.name for f in dataclasses.fields(_lk.NllRequest)]


@torch.library.custom_op("mdsample::lowdisc_timesteps", mutates_args=())
def _lowdisc_timesteps(offset: torch.Tensor, n: int, eps: float, mode: str, seed: int, backend: str) -> torch.Tensor:
    return _lk.run_timesteps(n, eps=eps, mode=mode, seed=seed, offset=offset, backend=backend)


@_lowdisc_timesteps.register_fake
def _(offset, n, eps, mode, seed, backend):
    return offset.new_empty((offset.numel(), n), dtype=torch.float64)


def lowdisc_timesteps_op(offset: torch.Tensor, n: int, eps: float, mode: str, seed: int, backend: str) -> torch.Tensor:
    """Timesteps ``[G, n]`` float64 through the registered op (see ``_likelihood.run_timesteps``)."""
    return torch.ops.mdsample.lowdisc_timesteps(offset, n, eps, mode, seed, backend)


@torch.library.custom_op("mdsample::forward_mask", mutates_args=())
def _forward_mask(
    x0: torch.Tensor,
    mask_id: int,
    seed: torch.Tensor,
    offset: torch.Tensor,
    position: Optional[torch.Tensor],
    maskable: Optional[torch.Tensor],
    prob: Optional[torch.Tensor],
    count: Optional[torch.Tensor],
    backend: str,
) -> torch.Tensor:
    return _lk.run_forward_mask(x0, mask_id=mask_id, seed=seed, offset=offset, position=position, maskable=maskable,
                                prob=prob, count=count, backend=backend)


@_forward_mask.register_fake
def _(x0, mask_id, seed, offset, position, maskable, prob, count, backend):
    return torch.empty_like(x0)


def forward_mask_op(x0, *, mask_id, seed, offset, position, maskable, prob, count, backend) -> torch.Tensor:
    """``x_t`` ``[B, L]`` int64 through the registered op (see ``_likelihood.run_forward_mask``)."""
    return torch.ops.mdsample.forward_mask(x0, mask_id, seed, offset, position, maskable, prob, count, backend)


@torch.library.custom_op("mdsample::masked_nll", mutates_args=())
def _masked_nll(
    logits: torch.Tensor,
    row_offsets: torch.Tensor,
    target: torch.Tensor,
    xt: torch.Tensor,
    weight: Optional[torch.Tensor],
    mask_id: int,
    exclude: int,
    guidance: Optional[torch.Tensor],
    guidance_offsets: Optional[torch.Tensor],
    guidance_scale: float,
    n_seqs: int,
    length: int,
    backend: str,
) -> torch.Tensor:
    kwargs = dict(locals())
    chosen = kwargs.pop("backend")
    return _lk.run_masked_nll(_lk.NllRequest(**kwargs), chosen)


@_masked_nll.register_fake
def _(logits, row_offsets, target, xt, weight, mask_id, exclude, guidance, guidance_offsets, guidance_scale, n_seqs,
      length, backend):
    return logits.new_empty((n_seqs,), dtype=torch.float32)


def masked_nll_op(req: "_lk.NllRequest", backend: str) -> torch.Tensor:
    """Per-sequence NLL ``[n_seqs]`` float32 through the registered op (see ``_likelihood.run_masked_nll``)."""
    return torch.ops.mdsample.masked_nll(*(getattr(req, f) for f in _NLL_FIELDS), backend)
