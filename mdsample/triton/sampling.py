"""Triton backend of the row draw behind ``sample_categorical`` and ``unmask_step``.

Computes exactly the algorithm of :mod:`mdsample.reference.sampling` (two-level
inverse CDF over chunks of ``CHUNK = 2048`` tokens, one Philox call per row),
reading each logits row in place through its row offset.

Shapes (N rows of V tokens; C = ceil(V / CHUNK) chunks):

- ``logits``: ``[..., V]`` fp16/bf16/fp32/fp64; row ``r`` starts at element
  ``row_offsets[r]`` (int64) of ``logits``, last dim contiguous. Leading dims may
  be strided or expanded; the tensor is never copied.
- per-row parameters: ``[N]``; scratch: ``chunk_max``, ``chunk_sum`` ``[N, C]`` fp32.
- outputs: tokens ``[N]`` int64, stats ``[N, 4]`` fp32 (logprob, prob, margin, entropy).

One program draws one row, in three passes:

1. Every chunk ``c`` of the row: guided fp32 scores ``g``, their max ``M_c`` and
   ``S_c = sum exp((g - M_c) / T)`` (fp32), stored in the scratch; along the way the
   bad-row flags, the argmax (temperature 0) and, when asked, the softmax stats at
   ``stats_temperature`` (the online max / sum / entropy merge of
   ``csrc/include/mdsample/online.h``, with the sum kept as 1 + tail for precision).
2. Chunk pick (float64, reads only the ``[C]`` scratch): ``W_c = S_c exp((M_c - M) / T)``,
   the first chunk whose running sum of ``W`` exceeds ``u1 * sum W``.
3. Token pick: the chosen chunk is read again; ``w_i = exp((g_i - M_c) / T)`` in float64,
   the first token whose running sum exceeds ``u2 * S`` with ``S`` the float64 total of
   these same ``w_i`` (so the draw inside the chunk is exact to double precision).

Exponents are written ``(g - M_c) / T`` rather than the reference's ``g / T - M_c / T``:
equal in exact arithmetic, and the difference of two scores cannot overflow for a
tiny ``T`` the way ``g / T`` can in fp32. Where the kernel rounds differently from
the float64 reference (fp32 scores, guidance combined in fp32, pass 1 in fp32) the
weights differ by ~1e-7 relative, so tokens differ only at such near-ties. fp64
logits beyond the fp32 range (|l| > 3.4e38) become +-inf on load.

GPU notes: one program per row streams the row once (pass 1) and re-reads one
chunk (pass 3); the scratch is ``8 C`` bytes per row. With few rows and a large
vocabulary the grid is small; splitting pass 1 across programs would then help.

Unmask mode (``req.x`` given): the row first flips its reveal coin (Philox domain
REVEAL, words 0-1); rows with ``x != mask_id`` or an unsuccessful coin return ``x``
and never read their logits, like inactive rows of ``sample_categorical``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..ops._rows import RowDraw
from ..reference.philox import DOMAIN_REVEAL, DOMAIN_TOKEN
from ..reference.sampling import CHUNK

_DOMAIN_TOKEN = tl.constexpr(DOMAIN_TOKEN)
_DOMAIN_REVEAL = tl.constexpr(DOMAIN_REVEAL)
# Chunk statistics picked per step of the chunk loop (pass 2): 1024 covers V = 2M tokens in one step.
_MAX_CHUNK_BLOCK = 1024
_NUM_WARPS = 8  # 2048-token chunks: 8 elements per thread


@triton.jit
def _philox_words(seed, offset, position, DOMAIN: tl.constexpr):
    """The four uint32 Philox4x32-10 words of draw (seed, offset, position, DOMAIN); scalars in, scalars out."""
    pos = position.to(tl.uint64)
    off = offset.to(tl.uint64)
    c0 = pos.to(tl.uint32)  # truncation keeps the low word
    c1 = ((pos >> 32) & 0xFFFF).to(tl.uint32) | (DOMAIN << 16)
    c2 = off.to(tl.uint32)
    c3 = (off >> 32).to(tl.uint32)
    return tl.philox(seed, c0, c1, c2, c3, 10)


@triton.jit
def _uniform52(hi, lo):
    """Centred uniform (k + 0.5) * 2^-52 in float64 from two uint32 words (k: 52 bits, so k + 0.5 is exact)."""
    k = (hi.to(tl.uint64) << 20) | (lo.to(tl.uint64) >> 12)
    return (k.to(tl.float64) + 0.5) * 2.220446049250313e-16


@triton.jit
def _log1p(x):
    """log(1 + x) for fp32 x >= 0, accurate for tiny x: the rounding error of 1 + x cancels in x / (u - 1)."""
    u = 1.0 + x
    return tl.where(u == 1.0, x, tl.log(u) * (x / (u - 1.0)))


@triton.jit
def _scores(logits_row, guidance_row, cols, vocab, exclude, guidance_mult, HAS_GUIDANCE: tl.constexpr):
    """fp32 scores of tokens ``cols`` (a block or a scalar) of one row; -inf past the vocab and at ``exclude``."""
    in_row = cols < vocab
    g = tl.load(logits_row + cols, mask=in_row, other=float("-inf")).to(tl.float32)
    if HAS_GUIDANCE:
        u = tl.load(guidance_row + cols, mask=in_row, other=float("-inf")).to(tl.float32)
        # -inf on either side wins even against NaN or +inf on the other, as in the reference.
        either_neginf = (g == float("-inf")) | (u == float("-inf"))
        g = tl.where(either_neginf, float("-inf"), u + guidance_mult * (g - u))
    return tl.where(cols == exclude, float("-inf"), g)


@triton.jit
def _chunk_weights(chunk_max_row, chunk_sum_row, idx, n_chunks, big_m, t64):
    """float64 chunk weights ``W_c = S_c exp((M_c - M) / T)`` of chunks ``idx`` (0 past ``n_chunks``)."""
    ok = idx < n_chunks
    m = tl.load(chunk_max_row + idx, mask=ok, other=float("-inf")).to(tl.float64)
    s = tl.load(chunk_sum_row + idx, mask=ok, other=0.0).to(tl.float64)
    return tl.where(m > float("-inf"), s * tl.exp((m - big_m) / t64), 0.0)


@triton.jit
def _sample_rows_kernel(
    logits_ptr,            # [..., V] fp16/bf16/fp32/fp64
    row_offsets_ptr,       # [N] int64 element offsets of the rows
    guidance_ptr,          # [..., V] like logits, or None
    guidance_offsets_ptr,  # [N] int64, or None
    guidance_mult,         # guidance_scale + 1
    temperature_ptr,       # [N] fp32, 0 = argmax
    seed_ptr,              # [N] int64
    offset_ptr,            # [N] int64
    position_ptr,          # [N] int64
    active_ptr,            # [N] uint8, or None
    fallback_ptr,          # [N] int64, or None
    x_ptr,                 # [N] int64 (unmask mode), or None
    reveal_prob_ptr,       # [N] fp64 (unmask mode), or None
    stats_temperature_ptr,  # [N] fp32, or None
    out_ptr,               # [N] int64
    stats_ptr,             # [N, 4] fp32, or None
    chunk_max_ptr,         # [N, C] fp32 scratch
    chunk_sum_ptr,         # [N, C] fp32 scratch
    vocab,
    n_chunks,
    exclude,               # token id never drawn, -1 for none
    mask_id,
    CHUNK: tl.constexpr,
    CHUNK_BLOCK: tl.constexpr,
    HAS_GUIDANCE: tl.constexpr,
    HAS_ACTIVE: tl.constexpr,
    HAS_FALLBACK: tl.constexpr,
    UNMASK: tl.constexpr,
    STATS: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)
    seed = tl.load(seed_ptr + r)
    offset = tl.load(offset_ptr + r)
    position = tl.load(position_ptr + r)

    # Which rows draw. The others return their carry-over token and do not touch their logits.
    if UNMASK:
        x = tl.load(x_ptr + r)
        reveal_prob = tl.load(reveal_prob_ptr + r)
        coin0, coin1, _, _ = _philox_words(seed, offset, position, _DOMAIN_REVEAL)
        live = (x == mask_id) & (_uniform52(coin0, coin1) < reveal_prob)
        carry = x
    elif HAS_ACTIVE:
        live = tl.load(active_ptr + r) != 0
        if HAS_FALLBACK:
            carry = tl.load(fallback_ptr + r)
        else:
            carry = tl.full([], -1, tl.int64)
    else:
        live = tl.full([], 1, tl.int1)
        carry = tl.full([], -1, tl.int64)

    token = carry
    logprob = tl.full([], float("nan"), tl.float32)
    prob = tl.full([], float("nan"), tl.float32)
    margin = tl.full([], float("nan"), tl.float32)
    entropy = tl.full([], float("nan"), tl.float32)
    if live:
        temperature = tl.load(temperature_ptr + r)
        sampling = temperature > 0
        # Clamped so that a subnormal temperature gives 0 * inv_t = 0 for the maximum (not 0 * inf = NaN).
        inv_t = tl.minimum(1.0 / tl.where(sampling, temperature, 1.0), 3.0e38)
        logits_row = logits_ptr + tl.load(row_offsets_ptr + r)
        guidance_row = logits_row
        if HAS_GUIDANCE:
            guidance_row = guidance_ptr + tl.load(guidance_offsets_ptr + r)
        chunk_max_row = chunk_max_ptr + r * n_chunks
        chunk_sum_row = chunk_sum_ptr + r * n_chunks
        inv_st = 1.0
        if STATS:
            inv_st = tl.minimum(1.0 / tl.load(stats_temperature_ptr + r), 3.0e38)
        lane = tl.arange(0, CHUNK)

        # ---- pass 1: per-chunk max and sum of exp, argmax, bad flags, stats ----
        has_nan = tl.full([], 0, tl.int32)
        has_posinf = tl.full([], 0, tl.int32)
        has_finite = tl.full([], 0, tl.int32)
        row_max = tl.full([], float("-inf"), tl.float32)
        argmax = tl.full([], 0, tl.int32)
        # Online softmax state at stats_temperature, in score units: max, tail = sum of e^y over every
        # token but one maximum (so sum = 1 + tail keeps its small part exactly: a near one-hot row has
        # entropy and log-probability ~1e-9 that 1 + tail in fp32 would round away), sum of e^y * y, top2.
        st_max = tl.full([], float("-inf"), tl.float32)
        st_tail = tl.full([], 0.0, tl.float32)
        st_sx = tl.full([], 0.0, tl.float32)
        top2 = tl.full([], float("-inf"), tl.float32)
        for c in range(0, n_chunks):
            cols = c * CHUNK + lane
            g = _scores(logits_row, guidance_row, cols, vocab, exclude, guidance_mult, HAS_GUIDANCE)

            has_nan = tl.maximum(has_nan, tl.max((g != g).to(tl.int32), 0))
            has_posinf = tl.maximum(has_posinf, tl.max((g == float("inf")).to(tl.int32), 0))
            finite = (g > float("-inf")) & (g < float("inf"))
            has_finite = tl.maximum(has_finite, tl.max(finite.to(tl.int32), 0))

            m_c = tl.max(g, 0)
            first_max = tl.min(tl.where(g == m_c, cols, 2147483647), 0)
            # Strictly greater: on ties across chunks the earlier (lower index) chunk keeps it.
            argmax = tl.where(m_c > row_max, first_max, argmax)
            row_max = tl.maximum(row_max, m_c)

            # A chunk with no finite score gets S_c = 0 (shift by 0 so -inf - -inf never appears).
            shift = tl.where(m_c > float("-inf"), m_c, 0.0)
            d = g - shift
            s_c = tl.sum(tl.exp(d * inv_t), 0)
            tl.store(chunk_max_row + c, m_c)
            tl.store(chunk_sum_row + c, s_c)

            if STATS:
                y = d * inv_st
                e = tl.exp(y)
                not_top = cols != first_max  # the chunk's maximum, e = 1, stays out of its tail
                tail_c = tl.sum(tl.where(not_top, e, 0.0), 0)
                # e == 0 where y == -inf: those terms are 0, not 0 * -inf.
                ex_c = tl.sum(e * tl.where(e > 0, y, 0.0), 0)
                # top2 of the union: the larger of the two seconds and of the smaller first.
                top2_c = tl.max(tl.where(not_top, g, float("-inf")), 0)
                top2 = tl.maximum(tl.maximum(top2, top2_c), tl.minimum(st_max, m_c))
                # Moving a slice from its own max to the joint max scales it by e^d (d <= 0) and adds
                # d to each y. The winner's e^d is 1; the loser's maximum joins the tail. A slice with
                # e^d = 0 (empty, or d = -inf at a tiny temperature) adds nothing: select it out
                # rather than compute 0 * -inf.
                new_max = tl.maximum(st_max, m_c)
                da = (st_max - new_max) * inv_st
                db = (shift - new_max) * inv_st
                ea = tl.where(st_max > float("-inf"), tl.exp(da), 0.0)
                eb = tl.where(m_c > float("-inf"), tl.exp(db), 0.0)
                st_sx = tl.where(ea > 0, ea * (st_sx + da * (1.0 + st_tail)), 0.0) + \
                    tl.where(eb > 0, eb * (ex_c + db * (1.0 + tail_c)), 0.0)
                st_tail = st_tail * ea + tail_c * eb + tl.minimum(ea, eb)
                st_max = new_max

        # Pass 2 reads the scratch from other threads than the ones that stored it: a CTA barrier
        # orders those global writes before the reads (Triton inserts barriers for shared memory only).
        tl.debug_barrier()
        bad = (has_nan > 0) | (has_posinf > 0) | (has_finite == 0)
        token = argmax.to(tl.int64)

        if sampling & ~bad:
            tok0, tok1, tok2, tok3 = _philox_words(seed, offset, position, _DOMAIN_TOKEN)
            u1 = _uniform52(tok0, tok1)
            u2 = _uniform52(tok2, tok3)
            t64 = temperature.to(tl.float64)
            big_m = row_max.to(tl.float64)
            blk = tl.arange(0, CHUNK_BLOCK)

            # ---- pass 2: pick the chunk (float64 running sum of W over the [C] scratch) ----
            # The same block sums in both loops, so the last running sum equals `total` bitwise.
            total = tl.full([], 0.0, tl.float64)
            for cb in range(0, n_chunks, CHUNK_BLOCK):
                idx = cb + blk
                w = _chunk_weights(chunk_max_row, chunk_sum_row, idx, n_chunks, big_m, t64)
                total = tl.max(total + tl.cumsum(w, 0), 0)
            target = u1 * total
            chosen = tl.full([], -1, tl.int32)
            last_positive = tl.full([], -1, tl.int32)
            running = tl.full([], 0.0, tl.float64)
            for cb in range(0, n_chunks, CHUNK_BLOCK):
                idx = cb + blk
                w = _chunk_weights(chunk_max_row, chunk_sum_row, idx, n_chunks, big_m, t64)
                cum = running + tl.cumsum(w, 0)
                hit = tl.min(tl.where(cum > target, idx, 2147483647), 0)
                chosen = tl.where((chosen < 0) & (hit < 2147483647), hit, chosen)
                last_positive = tl.maximum(last_positive, tl.max(tl.where(w > 0, idx, -1), 0))
                running = tl.max(cum, 0)
            # u1 * total rounding up to total leaves no running sum above it: take the last chunk with mass.
            chosen = tl.maximum(tl.where(chosen >= 0, chosen, last_positive), 0)

            # ---- pass 3: pick the token inside the chosen chunk (float64) ----
            cols = chosen * CHUNK + lane
            g = _scores(logits_row, guidance_row, cols, vocab, exclude, guidance_mult, HAS_GUIDANCE)
            m_c = tl.load(chunk_max_row + chosen).to(tl.float64)
            w = tl.exp((g.to(tl.float64) - m_c) / t64)
            cum = tl.cumsum(w, 0)
            target = u2 * tl.max(cum, 0)
            inner = tl.min(tl.where(cum > target, lane, CHUNK), 0)
            inner = tl.where(inner < CHUNK, inner, tl.max(tl.where(w > 0, lane, -1), 0))
            token = chosen.to(tl.int64) * CHUNK + inner.to(tl.int64)

        if bad:
            token = tl.full([], -1, tl.int64)

        if STATS:
            # Bad rows have token -1: read token 0 instead (its stats become NaN below).
            g_tok = _scores(logits_row, guidance_row, tl.maximum(token, 0).to(tl.int32), vocab, exclude,
                            guidance_mult, HAS_GUIDANCE)
            st_sum = 1.0 + st_tail
            log_sum = _log1p(st_tail)
            logprob = (g_tok - st_max) * inv_st - log_sum
            prob = tl.exp(logprob)
            # p1 - p2 = (1 - e^((top2 - top1)/T)) / sum, in float64: top1 and top2 may be close.
            gap = (top2.to(tl.float64) - st_max.to(tl.float64)) * inv_st.to(tl.float64)
            margin = ((1.0 - tl.exp(gap)) / st_sum.to(tl.float64)).to(tl.float32)
            entropy = log_sum - st_sx / st_sum  # both terms >= 0: no cancellation
            if bad:
                logprob = tl.full([], float("nan"), tl.float32)
                prob = tl.full([], float("nan"), tl.float32)
                margin = tl.full([], float("nan"), tl.float32)
                entropy = tl.full([], float("nan"), tl.float32)

    tl.store(out_ptr + r, token)
    if STATS:
        stats_row = stats_ptr + r * 4
        tl.store(stats_row + 0, logprob)
        tl.store(stats_row + 1, prob)
        tl.store(stats_row + 2, margin)
        tl.store(stats_row + 3, entropy)


def sample_rows(req: RowDraw) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Draw one token per row of ``req`` (sample_categorical, or unmask_step when ``req.x`` is set).

    Args:
        req: validated request: logits ``[..., V]`` read through ``row_offsets`` ``[N]``,
            per-row ``[N]`` temperature / seed / offset / position and the optional parts.

    Returns:
        tokens ``[N]`` int64 (-1 for bad rows; ``fallback``/``x`` for rows not drawn) and,
        when ``req.stats_temperature`` is set, stats ``[N, 4]`` fp32 (logprob, prob,
        top1 - top2 margin, entropy; NaN on rows not drawn and bad rows), else None.
    """
    n, vocab = req.n_rows, req.vocab
    device = req.logits.device
    tokens = torch.empty(n, dtype=torch.int64, device=device)
    stats = None
    if req.stats_temperature is not None:
        stats = torch.empty((n, 4), dtype=torch.float32, device=device)
    if n == 0:
        return tokens, stats

    unmask = req.x is not None
    n_chunks = triton.cdiv(vocab, CHUNK)
    chunk_max = torch.empty((n, n_chunks), dtype=torch.float32, device=device)
    chunk_sum = torch.empty((n, n_chunks), dtype=torch.float32, device=device)
    has_active = req.active is not None and not unmask
    _sample_rows_kernel[(n,)](
        req.logits,
        req.row_offsets,
        req.guidance,
        req.guidance_offsets,
        req.guidance_scale + 1.0,
        req.temperature,
        req.seed,
        req.offset,
        req.position,
        req.active.view(torch.uint8) if has_active else None,
        req.fallback if has_active else None,
        req.x if unmask else None,
        req.reveal_prob if unmask else None,
        req.stats_temperature,
        tokens,
        stats,
        chunk_max,
        chunk_sum,
        vocab,
        n_chunks,
        req.mask_id if unmask else req.exclude,
        req.mask_id,
        CHUNK=CHUNK,
        CHUNK_BLOCK=min(triton.next_power_of_2(n_chunks), _MAX_CHUNK_BLOCK),
        HAS_GUIDANCE=req.guidance is not None,
        HAS_ACTIVE=has_active,
        HAS_FALLBACK=has_active and req.fallback is not None,
        UNMASK=unmask,
        STATS=stats is not None,
        num_warps=_NUM_WARPS,
    )
    return tokens, stats
