"""``mdsample.sample_categorical``: exact fused categorical sampling from logits (DESIGN.md §5)."""
from __future__ import annotations

import numbers
from typing import NamedTuple

import torch

from .. import _backends
from ..reference.philox import MAX_POSITION
from . import _validate as V
from ._rows import RowDraw, run
from .library import sample_rows_op


class SampleResult(NamedTuple):
    """Tokens and per-token statistics, all over the leading dims ``[...]``.

    ``logprob``/``prob``: log-probability and probability of the returned token;
    ``margin``: top-1 minus top-2 probability; ``entropy``: of the distribution, in nats.
    Statistics are of ``softmax(l / stats_temperature)`` (float32) and NaN on inactive or bad rows.
    """

    tokens: torch.Tensor
    logprob: torch.Tensor
    prob: torch.Tensor
    margin: torch.Tensor
    entropy: torch.Tensor


def build_request(
    logits, *, temperature, seed, offset, positions, exclude, active, fallback, guidance, guidance_scale,
    stats_temperature, return_stats, check, pending: list | None = None,
) -> RowDraw:
    """Validate the arguments shared by sample_categorical and unmask_step into a :class:`RowDraw`; the checks of
    tensor values are appended to ``pending`` (:func:`mdsample.ops._validate.defer`), read after the kernel."""
    check = V.flag("check", check) and not torch.compiler.is_compiling()  # a traced graph cannot branch on values
    pending = [] if pending is None else pending
    logits = V.float_logits("logits", logits)
    device, lead, vocab = logits.device, logits.shape[:-1], logits.shape[-1]

    def rows(name, value, dtype, kind, scalar_ok=False):
        return V.per_row(name, value, lead, device, dtype, kind=kind, scalar_ok=scalar_ok)

    if V.is_array(temperature):
        temp = rows("temperature", temperature, torch.float32, "float")
        if check:
            V.defer(pending, ~((temp >= 0) & torch.isfinite(temp)).all(), "temperature must be finite and >= 0 in every row")
    else:
        temp = V.finite_number("temperature", temperature, low=0.0, fp32=True)

    position = None if positions is None else rows("positions", positions, torch.int64, "int")
    if check and positions is not None:
        V.defer(pending, ~((position >= 0) & (position <= MAX_POSITION)).all(), "positions must lie in [0, 2^48) in every row")

    guidance, scale = V.guidance_input(guidance, guidance_scale, logits)
    g_offsets, g_stride = (None, 0) if guidance is None else V.row_layout(guidance)

    if active is None and fallback is not None:
        raise ValueError("fallback is what inactive rows return: it needs active")
    act = None if active is None else rows("active", active, torch.bool, "bool")
    if isinstance(fallback, numbers.Integral) and not -2**63 <= fallback < 2**63:  # a token id: no unsigned wrap
        raise ValueError(f"fallback must be a token id in the int64 range (e.g. -1); got {fallback}")
    fb = None if fallback is None else rows("fallback", fallback, torch.int64, "int")

    stats_t = None
    return_stats = V.flag("return_stats", return_stats)
    if stats_temperature is not None and not return_stats:
        raise ValueError("stats_temperature needs return_stats=True")
    if return_stats:
        if stats_temperature is None:  # argmax rows report stats at T = 1, as LLaDA does
            stats_t = torch.where(temp > 0, temp, 1.0) if V.is_array(temp) else (temp if _fp32_positive(temp) else 1.0)
        elif V.is_array(stats_temperature):
            stats_t = rows("stats_temperature", stats_temperature, torch.float32, "float")
            if check:
                V.defer(pending, ~((stats_t > 0) & torch.isfinite(stats_t)).all(),
                        "stats_temperature must be finite and > 0 in every row")
        else:
            stats_t = V.finite_number("stats_temperature", stats_temperature, low=0.0, low_inclusive=False, fp32=True)

    offsets, stride = V.row_layout(logits)
    return RowDraw(
        logits=logits,
        row_offsets=offsets,
        row_stride=stride,
        temperature=temp,
        seed=rows("seed", seed, torch.int64, "int", scalar_ok=True),
        offset=rows("offset", offset, torch.int64, "int", scalar_ok=True),
        position=position,
        exclude=-1 if exclude is None else V.token_id("exclude", exclude, vocab),
        guidance=guidance,
        guidance_offsets=g_offsets,
        guidance_row_stride=g_stride,
        guidance_scale=scale,
        active=act,
        fallback=fb,
        stats_temperature=stats_t,
    )


def _fp32_positive(t: float) -> bool:
    """Whether ``t >= 0`` stays > 0 in float32 (the kernels' temperature): values <= 2^-150 round to 0."""
    return t > 2.0**-150


def raise_bad_rows(req: RowDraw, tokens: torch.Tensor, considered: torch.Tensor | None, pending=()) -> None:
    """With check=True: raise the first failed ``pending`` check, else ValueError naming the first row that had
    no valid draw; one host read when all is well."""
    bad = tokens < 0
    if considered is not None:
        bad &= considered
    if not V.raise_pending(pending, bad):
        return
    r = int(bad.nonzero()[0, 0])
    lead = req.logits.shape[:-1]
    index = list(V.unravel(r, lead)) if lead else ""
    sides = [("logits", req.logits)] + ([("guidance", req.guidance)] if req.guidance is not None else [])
    for name, t in sides:  # a NaN or +inf on either side spoils the guided row
        row = t.reshape(-1, req.vocab)[r]
        if torch.isnan(row).any():
            raise ValueError(f"{name}{index} contains NaN (row {r} of {len(tokens)})")
        if torch.isposinf(row).any():
            raise ValueError(f"{name}{index} contains +inf (row {r} of {len(tokens)})")
    if req.guidance is not None:  # finite sides, but l_u + (w + 1)(l_c - l_u) beyond float32 (a huge w)
        c, u = (t.reshape(-1, req.vocab)[r].float() for t in (req.logits, req.guidance))
        guided = u + (req.guidance_scale + 1.0) * (c - u)
        if not bool(torch.isfinite(guided[torch.isfinite(c) & torch.isfinite(u)]).all()):
            raise ValueError(f"the guided scores of logits{index} overflow float32 (guidance_scale="
                             f"{req.guidance_scale:g}; row {r} of {len(tokens)})")
    row = req.logits.reshape(-1, req.vocab)[r]
    if row.dtype == torch.float64 and bool((torch.isfinite(row) & ~torch.isfinite(row.float())).any()):
        raise ValueError(f"logits{index} holds float64 values beyond float32's range (|l| > 3.4e38), which the "
                         f"compiled backends read float64 logits as (row {r} of {len(tokens)}): subtract the row "
                         "max first, or use backend='reference'")
    outside = f" besides the excluded token {req.exclude}" if req.exclude >= 0 else ""
    raise ValueError(f"logits{index} has no finite logit{outside} (row {r} of {len(tokens)}): nothing to sample")


def sample_categorical(
    logits,
    *,
    temperature=1.0,
    seed=0,
    offset=0,
    positions=None,
    exclude=None,
    active=None,
    fallback=None,
    guidance=None,
    guidance_scale=0.0,
    return_stats=False,
    stats_temperature=None,
    check=True,
    backend="auto",
):
    """Draw one token per row of ``logits`` from ``softmax(logits / temperature)``, exactly.

    Every tensor argument may also be any DLPack array (NumPy, CuPy, JAX): it is read
    in place through ``torch.from_dlpack`` (no copy, never written), and the results
    are torch tensors on the same device.

    Args:
        logits: ``[..., V]`` float16/bfloat16/float32/float64, last dim stride 1;
            leading dims may have any strides (an expanded tensor is not copied). The compiled
            backends (cpu, cuda, triton) read float64 as float32, with its precision and range: a row
            holding a value above 3.4e38 raises (``check=False``: gives -1), one below -3.4e38 reads as
            -inf (never drawn, and out of the guided row as a masked token is); ``reference`` reads float64.
        temperature: float >= 0 or float tensor over the leading dims ``[...]``; 0 = argmax
            (lowest index on ties, no randomness consumed).
        seed, offset: int or int64 tensor over ``[...]``: the Philox key and step counter.
        positions: int64 ``[...]`` in [0, 2^48), the row's identity in the counter
            (default: flat row index). Same (seed, offset, position) = same token,
            whatever the batch or backend.
        exclude: token id never returned (the mask token).
        active: bool ``[...]``; inactive rows are not read and return ``fallback``
            (int or int64 ``[...]``; -1 when not given).
        guidance: unconditional logits, same shape/dtype as ``logits``; the draw is from
            ``l_u + (guidance_scale + 1)(l_c - l_u)`` (SMDM / LLaDA CFG), fused in the same read. At
            ``guidance_scale=0`` that is the formula, l_c up to float32 rounding; the samplers pass no guidance
            then (``cfg_scale=0`` runs no unconditional pass, as LLaDA's ``if cfg_scale > 0`` does). The
            compiled backends combine in float32: a guided score beyond 3.4e38 from finite inputs (e.g. l_c = 3e38,
            l_u = -3e38) makes its row bad (a ValueError; ``check=False``: -1), where ``reference`` (float64) draws.
        return_stats: also return logprob, prob, margin and entropy (a :class:`SampleResult`).
        stats_temperature: temperature of those statistics: default the sampling temperature
            (Dream), 1.0 on argmax rows; pass 1.0 for LLaDA's confidence. The kernels scale by
            1 / stats_temperature in float32, held in its normal range [2^-126, 3e38]: a value outside
            [3.3e-39, 8.5e37] gives the statistics of that bound, which differ only where they leave float32's
            normal range themselves (a log-probability past -1e37, a margin under 1e-38). Score gaps are
            float32 too: in a row spanning more than 3.4e38 the far tokens count as probability 0 in the
            statistics, which shows only at a stats_temperature above ~2^120 (the draw weighs such rows in
            double).
        check: validate values (NaN rows, ranges) with a host sync; False makes no host
            sync, so with seed/offset as device tensors the call can be captured in a
            CUDA graph that replays with fresh noise; bad rows then give -1. Under ``torch.compile``
            the value checks are skipped, as with False (a traced graph cannot raise on values).
        backend: "auto", "cuda", "triton", "cpu" or "reference".

    Returns:
        int64 torch tokens ``[...]`` on the logits' device, or a :class:`SampleResult`
        with ``return_stats=True``.
    """
    pending = []
    req = build_request(
        logits, temperature=temperature, seed=seed, offset=offset, positions=positions, exclude=exclude,
        active=active, fallback=fallback, guidance=guidance, guidance_scale=guidance_scale,
        stats_temperature=stats_temperature, return_stats=return_stats, check=check, pending=pending,
    )
    chosen = _backends.resolve(backend, req.logits.device.type)
    if torch.compiler.is_compiling():
        tokens, stats = sample_rows_op(req, chosen)
    else:
        tokens, stats = run(req, chosen)
        if check:
            raise_bad_rows(req, tokens, req.active, pending)
    return shape_result(req, tokens, stats)


def shape_result(req: RowDraw, tokens: torch.Tensor, stats: torch.Tensor | None):
    """Reshape ``[N]`` tokens and ``[N, 4]`` stats to the leading dims of the logits."""
    lead = req.logits.shape[:-1]
    if tokens.shape != lead:  # [N] is already the shape for 2-D logits
        tokens = tokens.view(lead)
    if stats is None:
        return tokens
    return SampleResult(tokens, *stats.view(*lead, 4).unbind(-1))  # views, made in one call
