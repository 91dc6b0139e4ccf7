"""Inputs on the model's device, as the upstream drop-ins place them."""
from __future__ import annotations

from ..models.protocol import device_of
from ..ops import _validate as V


def on_model_device(model, **inputs) -> list:
    """The ``inputs`` (tensors or DLPack arrays; None passes through) moved to the device of ``model``'s weights,
    in the order given, as upstream builds its canvas on ``model.device`` (a CPU prompt for a GPU model works);
    unchanged where the model has no device to ask."""
    device = device_of(model)
    return [v if v is None or device is None else V.as_tensor(name, v).to(device) for name, v in inputs.items()]
