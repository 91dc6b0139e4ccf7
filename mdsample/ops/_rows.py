"""The row draw behind sample_categorical and unmask_step: one request, one call per backend.

Both public ops validate their arguments into a :class:`RowDraw` (per-row
parameters, the untouched logits and how to find their rows) and hand it to
:func:`run`, which calls the chosen backend. Keeping one request type means one
kernel per backend serves both ops (unmask_step is the draw with a reveal coin).

A per-row parameter the caller gave as a Python number stays one number, and
rows that one stride describes carry the stride, not ``[N]`` offsets: the
kernels take them by value, so a decode-shape call queues no helper kernels
(``torch.full`` / ``arange``) before its own (issue 3).
"""
from __future__ import annotations

import dataclasses
import math

import torch

from .. import _backends
from ..reference import sampling as ref_sampling
from ..reference import unmask as ref_unmask
from ._launch import DTYPE_CODE, ptr
from ._validate import full_rows, row_offsets


@dataclasses.dataclass
class RowDraw:
    logits: torch.Tensor              # [..., V]
    row_offsets: torch.Tensor | None  # [N] int64 element offsets of the rows, or None:
    row_stride: int                   # row r at r * row_stride
    temperature: torch.Tensor | float  # [N] float32 or one value; 0 = argmax
    seed: torch.Tensor | int           # [N] int64 or one value
    offset: torch.Tensor | int         # [N] int64 or one value
    position: torch.Tensor | None      # [N] int64, or None: the flat row index
    exclude: int = -1
    guidance: torch.Tensor | None = None
    guidance_offsets: torch.Tensor | None = None  # [N] int64, or None:
    guidance_row_stride: int = 0                  # row r at r * guidance_row_stride
    guidance_scale: float = 0.0
    active: torch.Tensor | None = None       # [N] bool
    fallback: torch.Tensor | None = None     # [N] int64
    x: torch.Tensor | None = None            # [N] int64: unmask_step mode
    mask_id: int = -1
    reveal_prob: torch.Tensor | float | None = None        # [N] float64 or one value, with x
    stats_temperature: torch.Tensor | float | None = None  # [N] float32 or one value: also return stats

    @property
    def n_rows(self) -> int:
        return math.prod(self.logits.shape[:-1])

    @property
    def vocab(self) -> int:
        return self.logits.shape[-1]


def materialized(req: RowDraw) -> RowDraw:
    """``req`` with every per-row parameter, position and row offset as an ``[N]`` tensor (the slow paths)."""
    n, device = req.n_rows, req.logits.device
    rows = dict(
        row_offsets=row_offsets(req.logits) if req.row_offsets is None else req.row_offsets,
        temperature=full_rows(req.temperature, n, torch.float32, device),
        seed=full_rows(req.seed, n, torch.int64, device),
        offset=full_rows(req.offset, n, torch.int64, device),
        position=torch.arange(n, device=device, dtype=torch.int64) if req.position is None else req.position,
    )
    if req.guidance is not None and req.guidance_offsets is None:
        rows["guidance_offsets"] = row_offsets(req.guidance)
    if req.reveal_prob is not None:
        rows["reveal_prob"] = full_rows(req.reveal_prob, n, torch.float64, device)
    if req.stats_temperature is not None:
        rows["stats_temperature"] = full_rows(req.stats_temperature, n, torch.float32, device)
    return dataclasses.replace(req, **rows)


def _rows_2d(t: torch.Tensor) -> torch.Tensor:
    """``[N, V]`` rows of ``[..., V]`` (the reference may copy; compiled backends use row offsets)."""
    return t.reshape(-1, t.shape[-1])


def _reference(req: RowDraw):
    req = materialized(req)
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


# The RowDraw fields that are an [N] tensor or one number, with the placeholder value
# (of the value's type) that launchers get beside a tensor, or when the field is absent.
BY_VALUE = {"temperature": 0.0, "seed": 0, "offset": 0, "reveal_prob": 0.0, "stats_temperature": 0.0}


def tensor_or_value(req: RowDraw, name: str) -> tuple[torch.Tensor | None, int | float]:
    """Field ``name`` (of :data:`BY_VALUE`) as every launcher takes it: (the ``[N]`` tensor,
    placeholder), or (None, the one value; the placeholder when the field is absent)."""
    v = getattr(req, name)
    if isinstance(v, torch.Tensor):
        return v, BY_VALUE[name]
    return None, BY_VALUE[name] if v is None else v


# mdsample._C.sample_cpu / sample_cuda take mdsample::SampleArgs' fields positionally, in this
# order (keyword parsing cost more than a decode-shape kernel); checked against the build at import.
SAMPLE_FIELDS = (
    "logits", "dtype", "n_rows", "vocab", "row_offsets", "row_stride", "guidance", "guidance_offsets",
    "guidance_row_stride", "guidance_scale", "temperature", "temperature_val", "seed", "seed_val", "offset",
    "offset_val", "position", "exclude", "active", "fallback", "x", "mask_id", "reveal_prob", "reveal_prob_val",
    "out", "stats", "stats_temperature", "stats_temperature_val",
)
_built = getattr(_backends.compiled_module(), "SAMPLE_FIELDS", SAMPLE_FIELDS)
if tuple(_built) != SAMPLE_FIELDS:
    raise ImportError(f"mdsample._C was built from other sources (its SAMPLE_FIELDS {_built} differ from "
                      f"mdsample/ops/_rows.py's): rebuild it, e.g. pip install -e .")


def _pointer_or_value(req: RowDraw, name: str) -> tuple[int, int | float]:
    tensor, value = tensor_or_value(req, name)
    return ptr(tensor), value


def launch_args(req: RowDraw, out: torch.Tensor, stats: torch.Tensor | None) -> tuple:
    """The :data:`SAMPLE_FIELDS` values of ``req`` writing ``out`` (and ``stats``), in order."""
    active = None if req.active is None else req.active.view(torch.uint8)
    return (
        req.logits.data_ptr(), DTYPE_CODE[req.logits.dtype], req.n_rows, req.vocab, ptr(req.row_offsets),
        req.row_stride, ptr(req.guidance), ptr(req.guidance_offsets), req.guidance_row_stride, req.guidance_scale,
        *_pointer_or_value(req, "temperature"), *_pointer_or_value(req, "seed"), *_pointer_or_value(req, "offset"),
        ptr(req.position), req.exclude, ptr(active), ptr(req.fallback), ptr(req.x), req.mask_id,
        *_pointer_or_value(req, "reveal_prob"), out.data_ptr(), ptr(stats),
        *_pointer_or_value(req, "stats_temperature"),
    )


def _compiled(req: RowDraw, device_type: str):
    n = req.n_rows
    out = torch.empty(n, dtype=torch.int64, device=req.logits.device)
    stats = None
    if req.stats_temperature is not None:
        stats = torch.empty((n, 4), dtype=torch.float32, device=req.logits.device)
    args = launch_args(req, out, stats)
    C = _backends.compiled_module()
    if device_type == "cuda":
        device = req.logits.device  # a CUDA tensor's device always carries its index
        C.sample_cuda(*args, _backends.cuda_stream(device), device.index)
    else:
        C.sample_cpu(*args)
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
