"""The row draw behind sample_categorical and unmask_step: one request, one call per backend.

Both public ops validate their arguments into a :class:`RowDraw` (flat ``[N]``
per-row tensors plus the untouched logits and their row offsets) and hand it to
:func:`run`, which calls the chosen backend. Keeping one request type means one
kernel per backend serves both ops (unmask_step is the draw with a reveal coin).
"""
from __future__ import annotations

import dataclasses

import torch

from .. import _backends
from ..reference import sampling as ref_sampling
from ..reference import unmask as ref_unmask

_DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}


@dataclasses.dataclass
class RowDraw:
    logits: torch.Tensor              # [..., V], read in place through row_offsets
    row_offsets: torch.Tensor         # [N] int64
    temperature: torch.Tensor         # [N] float32, 0 = argmax
    seed: torch.Tensor                # [N] int64
    offset: torch.Tensor              # [N] int64
    position: torch.Tensor            # [N] int64
    exclude: int = -1
    guidance: torch.Tensor | None = None
    guidance_offsets: torch.Tensor | None = None
    guidance_scale: float = 0.0
    active: torch.Tensor | None = None       # [N] bool
    fallback: torch.Tensor | None = None     # [N] int64
    x: torch.Tensor | None = None            # [N] int64: unmask_step mode
    mask_id: int = -1
    reveal_prob: torch.Tensor | None = None  # [N] float64
    stats_temperature: torch.Tensor | None = None  # [N] float32: also return stats

    @property
    def n_rows(self) -> int:
        return self.row_offsets.numel()

    @property
    def vocab(self) -> int:
        return self.logits.shape[-1]


def _rows_2d(t: torch.Tensor) -> torch.Tensor:
    """``[N, V]`` rows of ``[..., V]`` (the reference may copy; compiled backends use row offsets)."""
    return t.reshape(-1, t.shape[-1])


def _reference(req: RowDraw):
    active, fallback, exclude = req.active, req.fallback, req.exclude
    if req.x is not None:
        active = ref_unmask.reveal(req.x, req.mask_id, req.reveal_prob, req.seed, req.offset, req.position)
        fallback, exclude = req.x, req.mask_id
    guidance = None if req.guidance is None else _rows_2d(req.guidance)
    return ref_sampling.sample_rows(
        _rows_2d(req.logits),
        temperature=req.temperature,
        seed=req.seed,
        offset=req.offset,
        position=req.position,
        exclude=exclude,
        guidance=guidance,
        guidance_scale=req.guidance_scale,
        active=active,
        fallback=fallback,
        stats_temperature=req.stats_temperature,
    )


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _compiled(req: RowDraw, device_type: str):
    n = req.n_rows
    out = torch.empty(n, dtype=torch.int64, device=req.logits.device)
    stats = None
    if req.stats_temperature is not None:
        stats = torch.empty((n, 4), dtype=torch.float32, device=req.logits.device)
    active = None if req.active is None else req.active.view(torch.uint8)
    args = dict(
        logits=req.logits.data_ptr(),
        dtype=_DTYPE_CODE[req.logits.dtype],
        n_rows=n,
        vocab=req.vocab,
        row_offsets=req.row_offsets.data_ptr(),
        guidance=_ptr(req.guidance),
        guidance_offsets=_ptr(req.guidance_offsets),
        guidance_scale=req.guidance_scale,
        temperature=req.temperature.data_ptr(),
        seed=req.seed.data_ptr(),
        offset=req.offset.data_ptr(),
        position=req.position.data_ptr(),
        exclude=req.exclude,
        active=_ptr(active),
        fallback=_ptr(req.fallback),
        x=_ptr(req.x),
        mask_id=req.mask_id,
        reveal_prob=_ptr(req.reveal_prob),
        out=out.data_ptr(),
        stats=_ptr(stats),
        stats_temperature=_ptr(req.stats_temperature),
    )
    C = _backends.compiled_module()
    if device_type == "cuda":
        C.sample_cuda(stream=torch.cuda.current_stream(req.logits.device).cuda_stream, **args)
    else:
        C.sample_cpu(**args)
    return out, stats


def _triton(req: RowDraw):
    from ..triton import sampling as tri_sampling

    return tri_sampling.sample_rows(req)


def run(req: RowDraw, backend: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Tokens ``[N]`` int64 (-1 for bad rows) and stats ``[N, 4]`` float32 or None."""
    if backend == "reference":
        return _reference(req)
    if backend == "triton":
        return _triton(req)
    return _compiled(req, req.logits.device.type)
