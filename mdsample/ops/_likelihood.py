"""Backend calls behind lowdisc_timesteps, forward_mask and masked_nll: validated inputs in, one call per backend.

The public ops (``mdsample/ops/lowdisc_timesteps.py``, ``forward_mask.py``,
``masked_nll.py``) validate their arguments into the flat contiguous tensors
below and call these runners; ``library.py`` registers the same runners with
``torch.library`` for ``torch.compile``. The compiled backends ("cpu",
"cuda") share one launcher interface (csrc/likelihood.h): the CUDA launchers
are queued on the current stream with no host sync and no allocation of their
own (masked_nll's [N] scratch comes from torch's allocator), so they are
graph-capturable.
"""
from __future__ import annotations

import dataclasses

import torch

from ..reference import likelihood as ref
from ._launch import DTYPE_CODE, launch, ptr

MODE_CODE = {"stratified": 0, "shifted": 1, "iid": 2}


def run_timesteps(n: int, *, eps: float, mode: str, seed: int, offset: torch.Tensor, backend: str) -> torch.Tensor:
    """Timesteps ``[G, n]`` float64 for lattice offsets ``offset`` (contiguous int64 ``[G]``)."""
    if backend == "reference":
        return ref.lowdisc_timesteps(n, eps=eps, mode=mode, seed=seed, offset=offset)
    if backend == "triton":
        from ..triton import likelihood as tri

        return tri.lowdisc_timesteps(n, eps=eps, mode=mode, seed=seed, offset=offset)
    out = torch.empty((offset.numel(), n), dtype=torch.float64, device=offset.device)
    launch(
        "lowdisc_timesteps", offset.device, n=n, n_lattices=offset.numel(), mode=MODE_CODE[mode], eps=eps, seed=seed,
        offset=offset.data_ptr(), out=out.data_ptr(),
    )
    return out


def run_forward_mask(
    x0: torch.Tensor,
    *,
    mask_id: int,
    seed: torch.Tensor,
    offset: torch.Tensor,
    position: torch.Tensor | None,
    maskable: torch.Tensor | None,
    prob: torch.Tensor | None,
    count: torch.Tensor | None,
    backend: str,
) -> torch.Tensor:
    """``x_t`` int64 ``[B, L]`` from contiguous ``x0`` int64 ``[B, L]``.

    ``seed``/``offset`` int64 ``[B]``; ``position`` int64 ``[B, L]`` or None (flat index);
    ``maskable`` bool ``[B, L]`` or None; exactly one of ``prob`` float64 ``[B]`` and
    ``count`` int64 ``[B]``.
    """
    if backend == "reference":
        if position is None:
            position = torch.arange(x0.numel(), dtype=torch.int64, device=x0.device).view(x0.shape)
        return ref.forward_mask(x0, mask_id=mask_id, seed=seed, offset=offset, position=position, maskable=maskable,
                                prob=prob, count=count)
    if backend == "triton":
        from ..triton import likelihood as tri

        return tri.forward_mask(x0, mask_id=mask_id, seed=seed, offset=offset, position=position, maskable=maskable,
                                prob=prob, count=count)
    out = torch.empty_like(x0)
    launch(
        "forward_mask", x0.device, x0=x0.data_ptr(), batch=x0.shape[0], length=x0.shape[1],
        maskable=ptr(None if maskable is None else maskable.view(torch.uint8)),
        seed=seed.data_ptr(), offset=offset.data_ptr(), position=ptr(position), prob=ptr(prob), count=ptr(count),
        mask_id=mask_id, out=out.data_ptr(),
    )
    return out


@dataclasses.dataclass
class NllRequest:
    logits: torch.Tensor                 # [..., V], read in place through row_offsets
    row_offsets: torch.Tensor            # [N] int64
    target: torch.Tensor                 # [N] int64 (x0)
    xt: torch.Tensor                     # [N] int64
    weight: torch.Tensor | None          # [N] float32, or None = 1
    mask_id: int
    exclude: int                         # -1 = none
    guidance: torch.Tensor | None        # like logits
    guidance_offsets: torch.Tensor | None
    guidance_scale: float
    n_seqs: int
    length: int                          # N = n_seqs * length


def _rows_2d(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


def run_masked_nll(req: NllRequest, backend: str) -> torch.Tensor:
    """Per-sequence weighted NLL ``[n_seqs]`` float32 (NaN for a sequence with a bad masked row)."""
    if backend == "reference":
        return ref.masked_nll(
            _rows_2d(req.logits), req.target, req.xt, mask_id=req.mask_id, n_seqs=req.n_seqs, length=req.length,
            weight=req.weight, exclude=req.exclude,
            guidance=None if req.guidance is None else _rows_2d(req.guidance), guidance_scale=req.guidance_scale,
        )
    if backend == "triton":
        from ..triton import likelihood as tri

        return tri.masked_nll(req)
    device = req.logits.device
    out = torch.empty(req.n_seqs, dtype=torch.float32, device=device)
    scratch = {}  # the CUDA launcher's per-row values [N] (the CPU one keeps its own)
    if device.type == "cuda":
        row_value = torch.empty(req.n_seqs * req.length, dtype=torch.float32, device=device)
        scratch["row_value"] = row_value.data_ptr()
    launch(
        "masked_nll", device, **scratch, logits=req.logits.data_ptr(), dtype=DTYPE_CODE[req.logits.dtype],
        vocab=req.logits.shape[-1], row_offsets=req.row_offsets.data_ptr(), guidance=ptr(req.guidance),
        guidance_offsets=ptr(req.guidance_offsets), guidance_scale=req.guidance_scale,
        target=req.target.data_ptr(), xt=req.xt.data_ptr(), weight=ptr(req.weight), mask_id=req.mask_id,
        exclude=req.exclude, n_seqs=req.n_seqs, length=req.length, out=out.data_ptr(),
    )
    return out
