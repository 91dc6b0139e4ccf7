"""torch.library registration of the row draw, so the ops trace under torch.compile(fullgraph=True).

Eager calls skip this layer and call the backend directly (DESIGN.md §2: the
dispatcher costs microseconds per call); under compilation the public ops call
``torch.ops.mdsample.sample_rows``, whose fake implementation gives shapes only.
"""
from __future__ import annotations

import dataclasses

import torch

from ._rows import RowDraw, run

_FIELDS = [f.name for f in dataclasses.fields(RowDraw)]


@torch.library.custom_op("mdsample::sample_rows", mutates_args=())
def _sample_rows(
    logits: torch.Tensor,
    row_offsets: torch.Tensor,
    temperature: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
    position: torch.Tensor,
    exclude: int,
    guidance: torch.Tensor | None,
    guidance_offsets: torch.Tensor | None,
    guidance_scale: float,
    active: torch.Tensor | None,
    fallback: torch.Tensor | None,
    x: torch.Tensor | None,
    mask_id: int,
    reveal_prob: torch.Tensor | None,
    stats_temperature: torch.Tensor | None,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    kwargs = dict(locals())
    chosen = kwargs.pop("backend")
    tokens, stats = run(RowDraw(**kwargs), chosen)
    if stats is None:
        stats = torch.empty((0, 4), dtype=torch.float32, device=tokens.device)
    return tokens, stats


@_sample_rows.register_fake
def _(logits, row_offsets, temperature, seed, offset, position, exclude, guidance, guidance_offsets,
      guidance_scale, active, fallback, x, mask_id, reveal_prob, stats_temperature, backend):
    n = row_offsets.shape[0]
    tokens = logits.new_empty((n,), dtype=torch.int64)
    return tokens, logits.new_empty((n if stats_temperature is not None else 0, 4), dtype=torch.float32)


def sample_rows_op(req: RowDraw, backend: str):
    """Run ``req`` through the registered op; returns tokens ``[N]`` and stats ``[N, 4]`` or None."""
    tokens, stats = torch.ops.mdsample.sample_rows(*(getattr(req, f) for f in _FIELDS), backend)
    return tokens, (stats if req.stats_temperature is not None else None)
