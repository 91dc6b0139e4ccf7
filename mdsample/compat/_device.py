"""Inputs on the model's device, as the upstream drop-ins place them."""
from __future__ import annotations

from ..models.protocol import device_of
from ..ops import _validate as V


def on_model_device(model, **inputs) -> list:
    """The ``inputs`` (tensors or DLPack arrays, as tensors; None passes through) on the device of ``model``'s
    weights, in the order given, as upstream builds its canvas on ``model.device`` (a CPU prompt for a GPU
    model works); where they are when the model has no device to ask."""
    device = device_of(model)
    tensors = [None if v is None else V.as_tensor(name, v) for name, v in inputs.items()]
    return [t if t is None or device is None else t.to(device) for t in tensors]
