"""``mdsample.masked_nll``: per-sequence NLL of the masked tokens, without log_softmax (DESIGN.md §5)."""
from __future__ import annotations

import math
import numbers

import torch

from .. import _backends
from . import _validate as V
from ._likelihood import NllRequest, run_masked_nll
from .library import masked_nll_op


def _weights(weight, shape: torch.Size, device) -> torch.Tensor | None:
    """``weight`` as float32 ``[N]`` per row (None when every weight is 1)."""
    if weight is None:
        return None
    if isinstance(weight, numbers.Number) and not isinstance(weight, torch.Tensor):
        w = V.finite_number("weight", weight, fp32=True)
        return None if w == 1.0 else V.per_row("weight", w, shape, device, torch.float32, kind="float")
    w = V.as_tensor("weight", weight)
    if w.dim() > 0 and w.shape == shape[:-1]:
        if shape[-1] > 1 and w.numel() > 1 and _broadcasts(w.shape, shape):
            raise ValueError(f"weight of shape {tuple(w.shape)} reads as one per sequence or one per position of "
                             f"{tuple(shape)}: pass {tuple(w.shape) + (1,)} (per sequence) or a shape ending in "
                             f"{shape[-1]} with a 1 before it (per position)")
        w = w.unsqueeze(-1)  # one weight per sequence
    return V.per_row("weight", w, shape, device, torch.float32, kind="float")


def _broadcasts(small: torch.Size, shape: torch.Size) -> bool:
    """Whether ``small`` broadcasts to ``shape`` (a plain shape comparison: torch.compile traces it, while it
    cannot trace torch.broadcast_shapes raising inside a try)."""
    return len(small) <= len(shape) and all(a in (1, b) for a, b in zip(reversed(small), reversed(shape)))


def masked_nll(logits, x0, x_t, *, mask_id, weight=None, exclude=None, guidance=None, guidance_scale=0.0,
               check=True, backend="auto"):
    """Per-sequence weighted sum of ``-log p(x0_i)`` over the masked positions, in one read of their logits.

    ``out[b] = sum_{i : x_t[b, i] == mask_id} w[b, i] * (logsumexp(g[b, i]) - g[b, i, x0[b, i]])``

    where ``g`` are the scores: the logits, or ``l_u + (guidance_scale + 1)(l_c - l_u)``
    with ``guidance`` (SMDM / LLaDA unsupervised CFG, combined while reading), and
    ``-inf`` at the ``exclude`` token. Rows with ``x_t != mask_id`` or weight 0 are not
    read (their logits may hold anything). Each masked row is read once with an online
    logsumexp in float32 (accumulation over the sequence in float64); no ``[B, L, V]``
    temporary is made, the only extra memory is ``O(B L)``.

    The mask token: ``exclude=None`` (default) normalises over the full vocabulary, as
    ``F.cross_entropy`` and LLaDA / SMDM's likelihood code do. ``exclude=mask_id`` is
    MDLM's SUBS parameterisation (mask logit -> -inf before the softmax), which is the
    distribution mdsample's samplers draw from; :func:`mdsample.likelihood` uses it by default.

    Args:
        logits: ``[..., L, V]`` float16/bfloat16/float32/float64, last dim contiguous
            (leading dims may be strided: a slice of a doubled CFG batch is read in place).
            The compiled backends (cpu, cuda, triton) read float64 logits as float32, so their precision
            is float32's (logits near 1e6 keep ~0.06 of absolute precision: shift such rows by their max
            first) and so is their range (above 3.4e38: +inf, a NaN row; below -3.4e38: -inf); ``reference``
            reads float64.
        x0: integer ``[..., L]``: the clean tokens (targets), in [0, V) where read.
        x_t: integer ``[..., L]``: the noised tokens; rows equal to ``mask_id`` are scored.
        mask_id: the mask token id, in [0, V).
        weight: None (1), a float, a float tensor of shape ``[...]`` (one weight per
            sequence, e.g. MDLM's ``1/t``) or broadcastable to ``[..., L]`` (per token); a shape
            that reads both ways (``[L]`` when B = L) is refused.
        exclude: token id dropped from the softmax (None: none).
        guidance: unconditional logits, same shape and dtype as ``logits``, or None.
        guidance_scale: CFG weight w (needs ``guidance``).
        check: validate token ranges and raise on NaN results, with a host sync.
        backend: "auto", "cuda", "triton", "cpu" or "reference".

    Returns:
        float32 ``[...]``: one value per sequence. ``+inf`` where a target has score ``-inf``
        (e.g. ``x0 == exclude``); NaN (a ValueError with ``check=True``) where a read row
        has a NaN or ``+inf`` score or no finite score.
    """
    logits = V.float_logits("logits", logits)
    if logits.dim() < 2:
        raise ValueError(f"logits must have shape [..., L, V]; got {tuple(logits.shape)}")
    device, shape, vocab = logits.device, logits.shape[:-1], logits.shape[-1]
    n_seqs, length = math.prod(shape[:-1]), shape[-1]
    checking = V.flag("check", check) and not torch.compiler.is_compiling()

    def tokens(name, value):
        t = V.int_tokens(name, value)
        V.check_device(name, t, device)
        if t.shape != shape:
            raise ValueError(f"{name} must have the shape of logits without V, {tuple(shape)}; got {tuple(t.shape)}")
        return t.reshape(-1).contiguous()

    target, xt = tokens("x0", x0), tokens("x_t", x_t)
    mask_id = V.token_id("mask_id", mask_id, vocab)
    excl = -1 if exclude is None else V.token_id("exclude", exclude, vocab)
    w = _weights(weight, shape, device)
    pending = []  # value checks, read with the NaN test after the kernel (one host read; V.defer)
    if checking and w is not None:
        V.defer(pending, ~torch.isfinite(w).all(),
                "weight must be finite and within float32's range (|weight| <= 3.4e38) everywhere")

    guidance, g_offsets, scale = V.guidance_rows(guidance, guidance_scale, logits)

    if checking and target.numel():
        read = xt == mask_id
        if w is not None:
            read &= w != 0
        outside = read & ((target < 0) | (target >= vocab))  # every backend scores such a row NaN, reads nothing

        def outside_message():
            r = int(outside.nonzero()[0, 0])
            return (f"x0{list(V.unravel(r, shape))} = {int(target[r])} is a masked target outside the vocabulary "
                    f"[0, {vocab})")

        V.defer(pending, outside.any(), outside_message)

    req = NllRequest(
        logits=logits, row_offsets=V.row_offsets(logits), target=target, xt=xt, weight=w, mask_id=mask_id,
        exclude=excl, guidance=guidance, guidance_offsets=g_offsets, guidance_scale=scale, n_seqs=n_seqs,
        length=length,
    )
    chosen = _backends.resolve(backend, device.type)
    if torch.compiler.is_compiling():
        out = masked_nll_op(req, chosen)
    else:
        out = run_masked_nll(req, chosen)
        if checking and V.raise_pending(pending, torch.isnan(out)):
            b = int(torch.isnan(out).nonzero()[0, 0])
            where = list(V.unravel(b, shape[:-1]))
            guided = "" if guidance is None else (", or its guided scores l_u + (w + 1)(l_c - l_u) overflow float32 "
                                                  f"(guidance_scale={req.guidance_scale:g})")
            raise ValueError(f"masked_nll of sequence {where} is NaN: one of its masked rows of logits holds NaN or "
                             f"+inf, or has no finite logit{guided}")
    return out.view(shape[:-1])
