"""dInfer's credit fusion (``CreditThresholdParallelDecoder``), kept sparse.

Each decoding step of a block, dInfer updates a per-block credit matrix ``C`` float32
``[B, block, V]`` and draws from the fused logits::

    C <- beta * C
    C[b, i, v1] += p1 ** gamma      for every masked position i, where v1 = argmax_v p(v) and
                                    p1 = max_v p(v), p = softmax of this step's logits
    l' = l + alpha * log(1 + C)

(dInfer's defaults: alpha 0.7, gamma 0.2, beta 0.8); the token and its confidence are then
those of ``softmax(l' / T)`` and ``softmax(l')``. A position gains one token per step and is
masked for at most ``block`` steps of its block (every step commits at least one position
of each sequence it forwards), so row ``(b, i)`` of ``C`` has at most ``block`` nonzeros:
:class:`Credit` keeps those as (token, credit) slots, ``[B, block, block]``, and adds the
bias to the rows being drawn only. :meth:`Credit.forget` clears committed positions, so a
finished block leaves an empty state (dInfer clears its matrices once the canvas has no mask
left; ``generate`` instead resets the state at each block start). A
position that stays masked longer than that (only a block decoded again on a restarted
canvas without a reset) drops its least credited token for a new one.

Differences from dInfer, documented: ``v1`` is the best token other than the mask (mdsample never
draws it); ``p1`` is its probability without the mask in ``generate`` (mdsample's confidences) and
with it in ``mdsample.compat.dinfer`` (upstream's, :meth:`Credit.step`'s ``mask_in_softmax``); the
fused rows are float32 copies of the drawn rows (upstream: the whole ``[B, block, V]`` logits
plus the dense matrix).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..ops.sampling import sample_categorical
from . import _checks as C
from .remasking import logprob_with

__all__ = ["Credit", "credit_settings", "CREDIT_DEFAULTS"]

CREDIT_DEFAULTS = {"alpha": 0.7, "gamma": 0.2, "beta": 0.8}  # dInfer's credit_alpha, boost_gamma, decay_beta


def credit_settings(credit) -> Optional[tuple[float, float, float]]:
    """``(alpha, gamma, beta)`` from a sampler's ``credit`` argument: None (off), True (dInfer's
    defaults) or a mapping with any of the keys ``alpha``, ``gamma``, ``beta``."""
    if credit is None or credit is False:
        return None
    if credit is True:
        credit = {}
    if not isinstance(credit, dict):
        raise TypeError(f"credit must be None, True or a dict with keys alpha, gamma, beta; got {type(credit).__name__}")
    unknown = set(credit) - set(CREDIT_DEFAULTS)
    if unknown:
        raise ValueError(f"credit takes the keys alpha, gamma, beta; got {sorted(unknown)}")
    s = {**CREDIT_DEFAULTS, **credit}
    return (C.real("credit['alpha']", s["alpha"], low=0.0), C.real("credit['gamma']", s["gamma"], low=0.0),
            C.real("credit['beta']", s["beta"], low=0.0, high=1.0))


class Credit:
    """The credit of one block's positions, for ``batch`` sequences.

    Args:
        batch: sequences B.
        block_length: positions per block (also the slots per position, module docstring).
        settings: ``(alpha, gamma, beta)`` (:func:`credit_settings`).
        device: where the state lives (the canvas's device).

    State (static buffers, updated in place: a CUDA graph may replay :meth:`fuse`): ``tokens``
    int64 ``[B, block, block]`` (-1 = empty slot) and ``credit`` float32 ``[B, block, block]``.
    """

    def __init__(self, batch: int, block_length: int, settings: tuple[float, float, float], device):
        self.alpha, self.gamma, self.beta = settings
        self.tokens = torch.full((batch, block_length, block_length), -1, dtype=torch.int64, device=device)
        self.credit = torch.zeros((batch, block_length, block_length), dtype=torch.float32, device=device)
        # (sequence, block column) of every block row, batch-major: the rows of a whole-block step
        self.every_seq = torch.arange(batch, device=device).repeat_interleave(block_length)
        self.every_col = torch.arange(block_length, device=device).repeat(batch)

    def reset(self) -> None:
        """A new block: no credit anywhere."""
        self.tokens.fill_(-1)
        self.credit.zero_()

    def fuse(self, logits: torch.Tensor, seq: torch.Tensor, col: torch.Tensor, top_token: torch.Tensor,
             top_prob: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        """One step: decay every credit, credit each updated row's top token, return the fused rows.

        Args:
            logits: ``[n, V]`` (or ``[..., V]`` with n rows) the rows to draw (any float dtype), of
                sequences ``seq`` int64 ``[n]`` at block columns ``col`` int64 ``[n]`` (distinct pairs).
            top_token, top_prob: int64 / float ``[n]``: argmax and its probability under ``softmax(l)``.
            update: bool ``[n]``: the rows whose position is masked (only those gain credit).

        Returns:
            float32, the shape of ``logits``: ``logits + alpha * log1p(credit)`` at each row's credited tokens.
        """
        self.credit.mul_(self.beta)
        update = update & (top_token >= 0)  # a row with no valid draw (-1) credits nothing
        slots, credit = self.tokens[seq, col], self.credit[seq, col]          # [n, S]
        match = slots == top_token.unsqueeze(1)
        has, empty = match.any(1), slots < 0
        # the token's own slot, else the first empty one, else the least credited (evicted)
        slot = torch.where(has, match.to(torch.int8).argmax(1),
                           torch.where(empty.any(1), empty.to(torch.int8).argmax(1), credit.argmin(1)))
        at = slot.unsqueeze(1)
        old_token, old_credit = slots.gather(1, at).squeeze(1), credit.gather(1, at).squeeze(1)
        gain = top_prob.to(torch.float32).clamp_min(0).pow(self.gamma)
        self.tokens[seq, col, slot] = torch.where(update, top_token, old_token)
        self.credit[seq, col, slot] = torch.where(update, torch.where(has, old_credit, 0.0) + gain, old_credit)
        slots, credit = self.tokens[seq, col], self.credit[seq, col]
        bias = torch.where(slots >= 0, self.alpha * torch.log1p(credit), 0.0)
        fused = logits.to(torch.float32, copy=True).reshape(-1, logits.shape[-1])
        return fused.scatter_add_(1, slots.clamp_min(0), bias).view(logits.shape)

    def step(self, logits: torch.Tensor, seq: Optional[torch.Tensor] = None, col: Optional[torch.Tensor] = None, *,
             exclude: int, active: Optional[torch.Tensor] = None, mask_in_softmax: bool = False, check: bool = True,
             backend: str = "auto") -> torch.Tensor:
        """A decoding step's fused rows: each row's argmax and its probability at T = 1 (one fused read of
        the rows), then :meth:`fuse`.

        Args:
            logits: ``[..., V]`` the rows to draw, of sequences ``seq`` at block columns ``col`` (int64,
                one per row, flattened order; default: every block row, ``[B, block, V]`` or ``[B * block, V]``).
            exclude: the mask token (never the argmax).
            active: bool ``[...]``: rows to read and credit (default all).
            mask_in_softmax: ``p1`` under the softmax with the mask token (dInfer's), not without.
            check, backend: as :func:`mdsample.sample_categorical` (``check=False``: no host sync).

        Returns:
            float32 fused rows, the shape of ``logits``.
        """
        top = sample_categorical(logits, temperature=0.0, exclude=exclude, active=active, return_stats=True,
                                 stats_temperature=1.0, check=check, backend=backend)
        p1 = logprob_with(logits, top.tokens, top.logprob, exclude).exp() if mask_in_softmax else top.prob
        update = torch.ones_like(top.tokens, dtype=torch.bool) if active is None else active
        if seq is None:
            seq, col = self.every_seq, self.every_col
        return self.fuse(logits, seq, col, top.tokens.reshape(-1), p1.reshape(-1), update.reshape(-1))

    def forget(self, committed: torch.Tensor) -> None:
        """Clear the slots of the block rows where ``committed`` (bool ``[B, block]``)."""
        self.tokens.masked_fill_(committed.unsqueeze(-1), -1)
        self.credit.masked_fill_(committed.unsqueeze(-1), 0.0)
