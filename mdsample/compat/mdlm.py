"""Drop-in for MDLM / Duo / BD3-LM ``_sample_categorical(categorical_probs)``.

Upstream: ``(p / (1e-10 - log(rand_like(p) + 1e-10))).argmax(-1)``, an exponential race
over unnormalised weights ``p``, with noise in p's dtype (fp32 in MDLM: biased, see
Zheng et al. 2024). Here: an exact draw from ``p / sum(p)`` by
:func:`mdsample.sample_categorical` on ``log p`` (computed in float32, or float64 for
float64 input, so bf16/fp16 weights lose no precision). Zero and negative weights never
win, as upstream (MDLM's last step has a negative mask weight).
"""
from __future__ import annotations

import torch

from ..ops import _validate as V
from ..ops.sampling import sample_categorical as _sample
from ._seed import key_from_global_rng

__all__ = ["sample_categorical", "_sample_categorical"]


def sample_categorical(categorical_probs, *, seed=None, offset=0, positions=None, backend="auto"):
    """Draw one index per row with probability proportional to ``categorical_probs``.

    Args:
        categorical_probs: ``[..., V]`` float16/bfloat16/float32/float64 unnormalised
            weights (>= 0 wins in proportion; <= 0 never wins).
        seed: Philox key (int); None draws one from the torch global RNG, like upstream.
        offset, positions: Philox counter parts, as in :func:`mdsample.sample_categorical`.
        backend: sampling-op backend.

    Returns:
        int64 ``[...]`` indices. Raises ValueError naming the row for a row with no positive weight,
        a NaN or an infinite weight.
    """
    p = V.float_logits("categorical_probs", categorical_probs)
    work = p if p.dtype == torch.float64 else p.float()
    logits = torch.where(work > 0, work.log(), torch.where(torch.isnan(work), work, -torch.inf))
    try:
        return _sample(logits, seed=key_from_global_rng(seed), offset=offset, positions=positions, backend=backend)
    except ValueError as exc:  # the op speaks of the log-weights it was given: say it of the caller's weights
        msg = str(exc)
        if not msg.startswith("logits"):
            raise
        msg = msg.replace("logits", "categorical_probs", 1).replace("has no finite logit", "has no positive weight")
        raise ValueError(msg.replace("contains +inf", "contains an infinite weight")) from None


_sample_categorical = sample_categorical
