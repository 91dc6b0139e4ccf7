"""How the ops hand work to ``mdsample._C``: dtype codes, raw pointers, launches on a device's stream.

The compiled launchers take raw pointers (as ints) and the dtype codes of csrc (``DType``:
sampling.h), never torch objects (DESIGN.md §2). The sampling launchers (``_rows.py``) are
positional and guard the device in C++, since they are on the decode hot path; the others
go through :func:`launch`.
"""
from __future__ import annotations

import torch

from .. import _backends

DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}


def ptr(t: torch.Tensor | None) -> int:
    """``t``'s data pointer, or 0 (the launchers' null) for None."""
    return 0 if t is None else t.data_ptr()


def launch(op: str, device: torch.device, **args) -> None:
    """Calls ``mdsample._C.<op>_cpu``, or ``<op>_cuda`` on the current stream of ``device`` for CUDA tensors."""
    C = _backends.compiled_module()
    if device.type == "cuda":
        with torch.cuda.device(device):  # the launcher queues on the runtime's current device
            getattr(C, op + "_cuda")(stream=_backends.cuda_stream(device), **args)
    else:
        getattr(C, op + "_cpu")(**args)
