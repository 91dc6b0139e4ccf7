"""What the samplers report per step: a tqdm bar (steps, forward passes saved, tokens per
second) and the ``on_step`` hook (the canvas after each step, for watching the denoising).

``saved`` compares the sequence-forwards the sampler ran with those of the published
loop for the same settings (one forward of every sequence per step), so a user sees
what the shortcuts bought while sampling.
"""
from __future__ import annotations

import time
from typing import Callable, Optional, Union

import torch

Canvas = Union[torch.Tensor, Callable[[], torch.Tensor]]


class Progress:
    """A tqdm bar over sampler steps (or none when disabled) and the sampler's ``on_step`` hook.

    Args:
        enabled: show the bar (``progress=True`` of a sampler).
        total: number of steps (or None when unknown).
        desc: bar label.
        backbone: the :class:`mdsample.models.Backbone` whose ``sequences`` counter is shown.
        baseline_per_step: sequence-forwards the published loop runs per step.
        on_step: called as ``on_step(step, x)`` each time :meth:`step` is given the canvas: ``step``
            counts those calls from 1, ``x`` is a copy of the canvas (int64 ``[B, L]``, the caller's to
            keep; masked positions hold the mask id). The copy is made on the canvas' device, so the
            hook adds no host sync unless it reads values.
    """

    def __init__(self, enabled: bool, total: Optional[int], desc: str, backbone=None, baseline_per_step: int = 0,
                 on_step: Optional[Callable[[int, torch.Tensor], None]] = None):
        self.enabled = bool(enabled)
        self.on_step = on_step
        self.shown = 0
        self.backbone = backbone
        self.baseline_per_step = baseline_per_step
        self.baseline = 0
        self.tokens = 0
        self.start = time.perf_counter()
        self.start_sequences = backbone.sequences if backbone is not None else 0
        self.bar = None
        if self.enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError as exc:  # tqdm is the optional "progress" extra
                raise ImportError("progress=True needs tqdm: pip install tqdm (or mdsample[progress])") from exc
            self.bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True)

    def step(self, n: int = 1, *, tokens: Union[int, torch.Tensor] = 0, baseline: Optional[int] = None,
             canvas: Optional[Canvas] = None) -> None:
        """Advance ``n`` steps that committed ``tokens`` tokens (an int, or a 0-d tensor read only when the bar
        shows: no host sync otherwise); ``baseline`` overrides the published loop's forwards. ``canvas``: the
        canvas after the step (or a function returning it, called only when there is a hook), passed to
        ``on_step``; None for bookkeeping calls that changed no token."""
        if self.bar is not None:
            self.tokens += int(tokens)
        self.baseline += self.baseline_per_step * n if baseline is None else baseline
        if self.on_step is not None and canvas is not None:
            self.shown += 1
            self.on_step(self.shown, (canvas() if callable(canvas) else canvas).clone())
        if self.bar is None:
            return
        self.bar.update(n)
        self.bar.set_postfix_str(self.summary(), refresh=False)

    def add_total(self, n: int) -> None:
        """Add ``n`` (may be < 0) steps to the total: work found or skipped while sampling (a redraw, an early stop)."""
        if self.bar is not None and self.bar.total is not None:
            self.bar.total += n
            self.bar.refresh()

    def summary(self) -> str:
        """``forwards N[, saved S (P%)][, T tok/s]``: the parts without a baseline or tokens left out."""
        ran = (self.backbone.sequences - self.start_sequences) if self.backbone is not None else 0
        parts = [f"forwards {ran}"]
        if self.baseline:
            saved = max(self.baseline - ran, 0)
            parts.append(f"saved {saved} ({100.0 * saved / self.baseline:.0f}%)")
        if self.tokens:
            parts.append(f"{self.tokens / max(time.perf_counter() - self.start, 1e-9):.1f} tok/s")
        return ", ".join(parts)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(self.summary(), refresh=True)
            self.bar.close()
            self.bar = None
