"""Next-token-aligned backbones (Dream): the output at position ``i - 1`` scores token ``i``.

Dream continues an autoregressive checkpoint, so its output at position ``i - 1`` holds the
logits of token ``i``; its sampler shifts the logits right by one and lets position 0 keep its
own. :func:`shifted` gives any backbone that alignment, ``hidden`` / ``head`` and KV cache
included: the uncached calls shift the outputs, and the cached samplers (which read
``logits_shift``) feed each cached chunk from one position earlier, so that the row before the
block is computed with it (mdsample/samplers/forward.py).
"""
from __future__ import annotations

from typing import Any

import torch

from .protocol import hidden_of, logits_of

__all__ = ["shift_rows", "shifted", "Shifted"]


def shift_rows(t: torch.Tensor, shift: int) -> torch.Tensor:
    """``t`` ``[B, L, ...]`` with row i taking row i - shift (the first ``shift`` rows keep their own)."""
    if shift == 0 or t.shape[1] <= 1:
        return t
    return torch.cat([t[:, :shift], t[:, :-shift]], dim=1)


class Shifted:
    """``model`` with its outputs shifted by ``logits_shift`` (see :func:`shifted`)."""

    def __init__(self, model: Any, shift: int = 1):
        if isinstance(shift, bool) or shift not in (0, 1):
            raise ValueError(f"shift must be 0 or 1; got {shift!r}")
        if not callable(model):
            raise TypeError(f"model must be a callable backbone; got {type(model).__name__}")
        self.model, self.logits_shift = model, shift
        # The optional protocol parts exist exactly when the model has them.
        if callable(getattr(model, "hidden", None)) and callable(getattr(model, "head", None)):
            self.hidden, self.head = self._hidden, model.head
        if callable(getattr(model, "new_cache", None)):
            self.new_cache = model.new_cache  # raw K/V: the cached samplers apply the shift

    def __getattr__(self, name: str) -> Any:  # config, vocab_size, max_length, device, ...
        model = self.__dict__.get("model")
        if model is None:
            raise AttributeError(name)
        return getattr(model, name)

    def __call__(self, x: torch.Tensor, **kw) -> torch.Tensor:
        """Logits ``[B, L, V]`` of tokens ``x`` int64 ``[B, L]``: position i gets the model's output at
        ``i - shift``; keyword arguments go to the wrapped model."""
        return shift_rows(logits_of(self.model(x, **kw)), self.logits_shift)

    def _hidden(self, x: torch.Tensor, **kw) -> torch.Tensor:
        return shift_rows(hidden_of(self.model.hidden(x, **kw)), self.logits_shift)


def shifted(model: Any, shift: int = 1) -> Shifted:
    """A backbone whose position i takes ``model``'s output at ``i - shift`` (Dream: ``shift=1``)."""
    return Shifted(model, shift)
