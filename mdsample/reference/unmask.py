"""Float64 reference of unmask_step: the reveal coin, then the categorical draw.

A masked position (``x == mask_id``) draws ``u`` from its own Philox domain
(REVEAL, words 0-1, centred 52-bit uniform) and is revealed when
``u < reveal_prob``; a revealed position then takes a token from
:func:`mdsample.reference.sampling.sample_rows` with the mask token excluded
(SUBS). Every other position returns ``x`` unchanged and its logits are not used.
"""
from __future__ import annotations

import torch

from .philox import DOMAIN_REVEAL, draw_words, uniform52


def reveal(x, mask_id, reveal_prob, seed, offset, position) -> torch.Tensor:
    """Reveal decisions ``[N]`` bool from ``x`` ``[N]`` int64, ``reveal_prob`` ``[N]`` float64 and the Philox keys ``[N]``."""
    w0, w1, _, _ = draw_words(seed, offset, position, DOMAIN_REVEAL)
    return (x == mask_id) & (uniform52(w0, w1) < reveal_prob)

