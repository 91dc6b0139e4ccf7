"""``mdsample.unmask_step``: one fused MDLM ancestral step with carry-over (DESIGN.md §5)."""
from __future__ import annotations

import torch

from .. import _backends
from . import _validate as V
from .library import sample_rows_op
from ._rows import run
from .sampling import build_request, raise_bad_rows


def unmask_step(
    logits,
    x,
    *,
    mask_id,
    reveal_prob,
    temperature=1.0,
    seed=0,
    offset=0,
    positions=None,
    guidance=None,
    guidance_scale=0.0,
    return_revealed=False,
    check=True,
    backend="auto",
):
    """Reveal masked positions and draw their tokens, in one pass.

    Each position with ``x == mask_id`` draws a reveal coin from its own Philox
    domain and is revealed with probability ``reveal_prob`` (MDLM:
    ``(alpha_s - alpha_t) / (1 - alpha_t)``); only revealed positions read their
    logits row and take a token from ``softmax(l / temperature)`` without the
    mask token (SUBS). Unmasked and unrevealed positions return ``x`` unread.

    Args:
        logits: ``[B, L, V]`` (any ``[..., V]``) float16/bfloat16/float32/float64.
        x: int64 ``[B, L]`` (the leading dims of ``logits``): current tokens. Not modified.
        mask_id: the mask token id, in [0, V).
        reveal_prob: float in [0, 1] or float tensor broadcastable to ``[B, L]``
            (e.g. ``[B, 1]`` for a per-sequence time).
        temperature, seed, offset, positions, guidance, guidance_scale, check, backend:
            as in :func:`mdsample.sample_categorical`.
        return_revealed: also return the bool ``[B, L]`` mask of positions revealed this step.

    Tensor arguments may be DLPack arrays (NumPy, CuPy, JAX), as in
    :func:`mdsample.sample_categorical`; with ``check=False`` and seed/offset as device
    tensors the step makes no host sync and can be captured in a CUDA graph.

    Returns:
        new tokens int64 ``[B, L]`` as a torch tensor on the logits' device (and the
        revealed mask).
    """
    pending = []
    req = build_request(
        logits, temperature=temperature, seed=seed, offset=offset, positions=positions, exclude=None,
        active=None, fallback=None, guidance=guidance, guidance_scale=guidance_scale,
        stats_temperature=None, return_stats=False, check=check, pending=pending,
    )
    logits = req.logits
    lead, vocab = logits.shape[:-1], logits.shape[-1]
    checking = V.flag("check", check) and not torch.compiler.is_compiling()
    return_revealed = V.flag("return_revealed", return_revealed)
    x = V.as_tensor("x", x)
    if x.dtype not in V.INT_DTYPES:
        raise TypeError(f"x must be an integer tensor of token ids; got {x.dtype}")
    V.check_device("x", x, logits.device)
    if x.shape != lead:
        raise ValueError(f"x must have the leading shape of logits {tuple(lead)}; got {tuple(x.shape)}")
    mask_id = V.token_id("mask_id", mask_id, vocab)
    if V.is_array(reveal_prob):
        prob = V.per_row("reveal_prob", reveal_prob, lead, logits.device, torch.float64, kind="float")
        if checking:
            V.defer(pending, ~((prob >= 0) & (prob <= 1)).all(), "reveal_prob must lie in [0, 1] in every row")
    else:
        prob = V.finite_number("reveal_prob", reveal_prob, low=0.0)
        if prob > 1.0:
            raise ValueError(f"reveal_prob must lie in [0, 1]; got {reveal_prob}")
    flat_x = x.reshape(-1).to(torch.int64).contiguous()
    if checking:  # out-of-vocabulary ids are copied through unread: checked after the kernel
        V.tokens_in_vocab("x", flat_x, vocab, pending)
    # The request is this call's own: filled in place (dataclasses.replace costs more than the kernel here).
    req.x, req.mask_id, req.reveal_prob, req.exclude = flat_x, mask_id, prob, mask_id

    chosen = _backends.resolve(backend, logits.device.type)
    if torch.compiler.is_compiling():
        tokens, _ = sample_rows_op(req, chosen)
    else:
        tokens, _ = run(req, chosen)
        if check:
            raise_bad_rows(req, tokens, flat_x == mask_id, pending)
    if tokens.shape != lead:
        tokens = tokens.view(lead)
    if return_revealed:
        return tokens, (x == mask_id) & (tokens != mask_id)
    return tokens
