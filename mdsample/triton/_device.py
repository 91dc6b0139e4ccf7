"""The device a Triton launch runs on."""
from __future__ import annotations

import contextlib

import torch


def on_device_of(t: torch.Tensor):
    """A context that makes ``t``'s GPU the current one, when it is not already: Triton launches on the current
    device and its current stream, so a tensor on ``cuda:1`` under a current ``cuda:0`` would be read from the
    wrong GPU. A null context for CPU tensors (the interpreter) and for the current device (the decode path's
    common case, which then pays no device switch)."""
    if t.device.type != "cuda" or t.device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(t.device)
