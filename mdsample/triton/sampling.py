"""Triton backend of the row draw behind ``sample_categorical`` and ``unmask_step``.

Computes exactly the algorithm of :mod:`mdsample.reference.sampling` (two-level
inverse CDF over chunks of ``CHUNK = 2048`` tokens, one Philox call per row),
reading each logits row in place through its row offset.

Shapes (N rows of V tokens; C = ceil(V / CHUNK) chunks):

- ``logits``: ``[..., V]`` fp16/bf16/fp32/fp64; row ``r`` starts at element
  ``row_offsets[r]`` (int64) of ``logits``, or ``r * row_stride`` when the leading
  dims have one stride; last dim contiguous. Leading dims may be strided or
  expanded; the tensor is never copied.
- per-row parameters: ``[N]``, or one value for every row (no ``[N]`` tensor is
  built for a number; positions default to the row index); scratch: chunk records ``[N, F, C]`` fp32
  (F = 2, or 5 with stats) and chunk argmaxes ``[N, C]`` int32.
- outputs: tokens ``[N]`` int64, stats ``[N, 4]`` fp32 (logprob, prob, margin, entropy).

A row is drawn in three passes:

1. Every chunk ``c`` is reduced on its own into its record: guided fp32 scores ``g``,
   their max ``M_c`` (NaN when the chunk holds a NaN or +inf score), the first index
   of that max, ``S_c = sum exp((g - M_c) / T)`` (fp32) and, when asked, the chunk's
   softmax stats at ``stats_temperature`` relative to its own max (sum of ``e^y``
   over every token but the first max, sum of ``e^y y``, second-largest score).
2. The row is finished from its records in a fixed order: bad flags, row max and
   argmax (exact: max and first index), the stats merged in closed form against the
   row max (float64), and the chunk pick (float64): ``W_c = S_c exp((M_c - M) / T)``,
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

Two launch shapes, identical results. Many rows: one program per row runs all three
passes (``_sample_rows_kernel``). Few rows (decode shapes, too few to fill the GPU):
pass 1 runs as a grid over (row, group of ``GROUP`` chunks) writing the same records
(``_chunk_records_kernel``), then one small program per row runs passes 2-3
(``_finish_rows_kernel``). Both call the same chunk reduction and the same finish,
and a chunk's record does not depend on which program wrote it, so tokens and stats
are bitwise the same either way (and for every autotuning config).

Autotuning (GPU only) covers what does not touch the arithmetic: chunks per loop
step of the row kernel, chunks per program of the split grid.
``num_warps`` stays fixed at 8: it sets the layout, hence the fp32 summation tree,
of a chunk's reductions, so changing it could move ``S_c`` by an ulp; it is part of
the algorithm here, like ``CHUNK``. Under ``TRITON_INTERPRET=1``, or with
``MDSAMPLE_TRITON_AUTOTUNE=0`` (test runs on a GPU: one compile per variant instead of one
per config), the first config of each list runs.
The first call of a new (vocab, rows bucket, dtype) key benchmarks the configs: make
it outside CUDA-graph capture.

Unmask mode (``req.x`` given): the row first flips its reveal coin (Philox domain
REVEAL, words 0-1); rows with ``x != mask_id`` or an unsuccessful coin return ``x``
and never read their logits, like inactive rows of ``sample_categorical``.
"""
from __future__ import annotations

import functools
import os
import struct

import torch
import triton
import triton.language as tl

from .. import _backends
from ..ops._rows import RowDraw, tensor_or_value
from ..reference.philox import DOMAIN_REVEAL, DOMAIN_TOKEN
from ..reference.sampling import CHUNK
from ._device import on_device_of

_DOMAIN_TOKEN = tl.constexpr(DOMAIN_TOKEN)
_DOMAIN_REVEAL = tl.constexpr(DOMAIN_REVEAL)
# Chunk records merged per step of the finish loops: 1024 covers V = 2M tokens in one step.
_MAX_CHUNK_BLOCK = 1024
_NUM_WARPS = 8  # 2048-token chunks: 8 elements per thread. Fixed: see the module docstring.
_INT_MAX = tl.constexpr(2147483647)

# Configs: chunks reduced per loop step (UNROLL) / per program of the split grid (GROUP).
# The first entry of each list is the one the interpreter runs (GROUP = 2 there, so that
# interpreter tests cross program boundaries inside a row). One pipeline stage: the kernels
# have no cp.async pipeline, so num_stages 1 and 2 compile to the same PTX (Triton 3.6 and
# 3.9) and tuning over both only doubled the first call's benchmarking.
ROW_CONFIGS = [triton.Config({"UNROLL": u}, num_warps=_NUM_WARPS, num_stages=1) for u in (1, 2)]
SPLIT_CONFIGS = [triton.Config({"GROUP": g}, num_warps=_NUM_WARPS, num_stages=1) for g in (2, 1, 4)]
# Programs (CTAs) per SM the one-program-per-row grid needs to keep HBM busy; with fewer
# rows than SMs x this the row is split. A first guess, to be measured on the GPU.
_ROWS_PER_SM = 4
# "SMs" assumed under the interpreter: rows < 8 take the split path, so tests cover both.
_INTERPRETER_SMS = 2


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
    """log(1 + x) for x >= 0 (fp32 or fp64), accurate for tiny x: the rounding error of 1 + x cancels in x / (u - 1)."""
    u = 1.0 + x
    return tl.where(u == 1.0, x, tl.log(u) * (x / (u - 1.0)))


@triton.jit
def _expm1(x):
    """e^x - 1 for x <= 0 (fp32 or fp64), accurate for tiny |x|: the rounding error of e^x cancels in x / log(u);
    -1 at x = -inf."""
    u = tl.exp(x)
    return tl.where(u == 1.0, x, tl.where(u == 0.0, -1.0, (u - 1.0) * (x / tl.log(u))))


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
def _per_row(ptr, value, r, HAS_ARR: tl.constexpr):
    """Row ``r``'s parameter: ``ptr[r]``, or ``value`` for every row (the caller gave one number)."""
    v = value
    if HAS_ARR:
        v = tl.load(ptr + r)
    return v


@triton.jit
def _row_words(r, seed_ptr, seed_val, offset_ptr, offset_val, position_ptr, HAS_SEED_ARR: tl.constexpr,
               HAS_OFFSET_ARR: tl.constexpr, HAS_POSITION_ARR: tl.constexpr, DOMAIN: tl.constexpr):
    """The Philox words of row ``r`` in ``DOMAIN``; without a position array the position is ``r``."""
    return _philox_words(_per_row(seed_ptr, seed_val.to(tl.int64), r, HAS_SEED_ARR),
                         _per_row(offset_ptr, offset_val.to(tl.int64), r, HAS_OFFSET_ARR),
                         _per_row(position_ptr, r, r, HAS_POSITION_ARR), DOMAIN)


@triton.jit
def _row_live(r, seed_ptr, seed_val, offset_ptr, offset_val, position_ptr, active_ptr, fallback_ptr, x_ptr,
              reveal_prob_ptr, reveal_prob_bits, mask_id, HAS_ACTIVE: tl.constexpr, HAS_FALLBACK: tl.constexpr,
              UNMASK: tl.constexpr, HAS_SEED_ARR: tl.constexpr, HAS_OFFSET_ARR: tl.constexpr,
              HAS_POSITION_ARR: tl.constexpr, HAS_REVEAL_PROB_ARR: tl.constexpr):
    """Whether row ``r`` draws, and the token it returns if not (its carry-over; -1 without fallback)."""
    if UNMASK:
        x = tl.load(x_ptr + r)
        # One value comes as its float64 bits: a float kernel argument would be rounded to fp32.
        reveal_prob = _per_row(reveal_prob_ptr, reveal_prob_bits.to(tl.int64).to(tl.float64, bitcast=True), r,
                               HAS_REVEAL_PROB_ARR)
        coin0, coin1, _, _ = _row_words(r, seed_ptr, seed_val, offset_ptr, offset_val, position_ptr, HAS_SEED_ARR,
                                        HAS_OFFSET_ARR, HAS_POSITION_ARR, _DOMAIN_REVEAL)
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
    return live, carry


@triton.jit
def _inv_temperatures(r, temperature, stats_temperature_ptr, stats_temperature_val, STATS: tl.constexpr,
                      HAS_STATS_TEMPERATURE_ARR: tl.constexpr):
    """1 / T for the draw (``temperature``, row ``r``'s T; 1 on argmax rows) and 1 / T_stats (1 without stats),
    both clamped to fp32 range.

    Clamped to the normal range (``inv_temperature`` of csrc/include/mdsample/online.h): a subnormal
    temperature gives 0 * inv_t = 0 for the maximum (not 0 * inf = NaN), and one near the fp32 maximum
    keeps -inf * inv_t = -inf (not -inf * 0 = NaN where denormals flush to zero).
    """
    inv_t = _clamp_inv(1.0 / tl.where(temperature > 0, temperature, 1.0))
    inv_st = 1.0
    if STATS:
        inv_st = _clamp_inv(1.0 / _per_row(stats_temperature_ptr, stats_temperature_val, r,
                                           HAS_STATS_TEMPERATURE_ARR))
    return inv_t, inv_st


@triton.jit
def _clamp_inv(inv):
    # 2^-126 exactly: Triton 3.6 types a Python float literal below it as fp64, which made every
    # exp of pass 1 a float64 one.
    return tl.maximum(tl.minimum(inv, 3.0e38), 1.1754943508222875e-38)


@triton.jit
def _f64_weights(temperature):
    """Whether the row's pass-1 weights are taken in float64 (``f64_weights`` of csrc/include/mdsample/online.h:
    finite T outside [2^-127, 2^120], where the clamped fp32 1/T, or a gap g - M past fp32's range, is wrong)."""
    return (temperature > 0) & (temperature < float("inf")) & (
        (temperature * 1.7014118346046923e38 < 1.0) | (temperature > 1.329227995784916e36))  # T < 2^-127, exactly


@triton.jit
def _reduce_chunk(logits_row, guidance_row, rec_row, arg_row, c, n_chunks, vocab, exclude, guidance_mult, temperature,
                  inv_t, inv_st, CHUNK: tl.constexpr, HAS_GUIDANCE: tl.constexpr, STATS: tl.constexpr):
    """Pass 1 for chunk ``c`` of one row: its record ``rec_row[f * C + c]`` and argmax ``arg_row[c]``.

    Nothing is stored for ``c >= n_chunks`` (its loads are all masked), so callers may step past the end.
    """
    lane = tl.arange(0, CHUNK)
    cols = c * CHUNK + lane
    g = _scores(logits_row, guidance_row, cols, vocab, exclude, guidance_mult, HAS_GUIDANCE)
    bad = tl.max(((g != g) | (g == float("inf"))).to(tl.int32), 0) > 0
    m_c = tl.max(g, 0)
    first_max = tl.min(tl.where(g == m_c, cols, _INT_MAX), 0)
    # A chunk with no finite score gets S_c = 0 (shift by 0 so -inf - -inf never appears).
    shift = tl.where(m_c > float("-inf"), m_c, 0.0)
    d = g - shift
    if _f64_weights(temperature):  # rare: the difference and the division in float64
        s_c = tl.sum(tl.exp((g.to(tl.float64) - shift.to(tl.float64)) / temperature.to(tl.float64)), 0).to(tl.float32)
    else:
        s_c = tl.sum(tl.exp(d * inv_t), 0)
    ok = c < n_chunks
    tl.store(rec_row + c, tl.where(bad, float("nan"), m_c), mask=ok)
    tl.store(rec_row + n_chunks + c, s_c, mask=ok)
    tl.store(arg_row + c, first_max, mask=ok)
    if STATS:
        # Stats at stats_temperature in units of the chunk's own max: the max itself (e = 1) stays out
        # of the tail, so that 1 + tail keeps a tail of ~1e-9 that fp32 would round away.
        y = d * inv_st
        e = tl.exp(y)
        not_top = cols != first_max
        tail_c = tl.sum(tl.where(not_top, e, 0.0), 0)
        ex_c = tl.sum(e * tl.where(e > 0, y, 0.0), 0)  # e == 0 where y == -inf: 0, not 0 * -inf
        top2_c = tl.max(tl.where(not_top, g, float("-inf")), 0)
        tl.store(rec_row + 2 * n_chunks + c, tail_c, mask=ok)
        tl.store(rec_row + 3 * n_chunks + c, ex_c, mask=ok)
        tl.store(rec_row + 4 * n_chunks + c, top2_c, mask=ok)


@triton.jit
def _row_pointers(r, logits_ptr, row_offsets_ptr, row_stride, guidance_ptr, guidance_offsets_ptr,
                  guidance_row_stride, HAS_GUIDANCE: tl.constexpr, HAS_ROW_OFFSETS_ARR: tl.constexpr,
                  HAS_GUIDANCE_OFFSETS_ARR: tl.constexpr):
    """Pointers to the first token of row ``r`` of the logits and of the guidance (the logits without it)."""
    logits_row = logits_ptr + _per_row(row_offsets_ptr, r * row_stride, r, HAS_ROW_OFFSETS_ARR)
    guidance_row = logits_row
    if HAS_GUIDANCE:
        guidance_row = guidance_ptr + _per_row(guidance_offsets_ptr, r * guidance_row_stride, r,
                                               HAS_GUIDANCE_OFFSETS_ARR)
    return logits_row, guidance_row


@triton.jit
def _reduce_chunks(r, c0, COUNT: tl.constexpr, logits_ptr, row_offsets_ptr, row_stride, guidance_ptr,
                   guidance_offsets_ptr, guidance_row_stride, guidance_mult, temperature_ptr, temperature_val,
                   stats_temperature_ptr, stats_temperature_val, rec_ptr, arg_ptr, vocab, n_chunks, exclude,
                   CHUNK: tl.constexpr, FIELDS: tl.constexpr, HAS_GUIDANCE: tl.constexpr, STATS: tl.constexpr,
                   HAS_ROW_OFFSETS_ARR: tl.constexpr, HAS_GUIDANCE_OFFSETS_ARR: tl.constexpr,
                   HAS_TEMPERATURE_ARR: tl.constexpr, HAS_STATS_TEMPERATURE_ARR: tl.constexpr):
    """Pass 1 for chunks ``c0 .. c0 + COUNT - 1`` of row ``r`` (unrolled: their loads are in flight together)."""
    temperature = _per_row(temperature_ptr, temperature_val, r, HAS_TEMPERATURE_ARR)
    inv_t, inv_st = _inv_temperatures(r, temperature, stats_temperature_ptr, stats_temperature_val, STATS,
                                      HAS_STATS_TEMPERATURE_ARR)
    logits_row, guidance_row = _row_pointers(r, logits_ptr, row_offsets_ptr, row_stride, guidance_ptr,
                                             guidance_offsets_ptr, guidance_row_stride, HAS_GUIDANCE,
                                             HAS_ROW_OFFSETS_ARR, HAS_GUIDANCE_OFFSETS_ARR)
    for i in tl.static_range(COUNT):
        _reduce_chunk(logits_row, guidance_row, rec_ptr + r * (FIELDS * n_chunks), arg_ptr + r * n_chunks, c0 + i,
                      n_chunks, vocab, exclude, guidance_mult, temperature, inv_t, inv_st, CHUNK, HAS_GUIDANCE, STATS)


@triton.jit
def _finish_row(
    r, logits_ptr, row_offsets_ptr, row_stride, guidance_ptr, guidance_offsets_ptr, guidance_row_stride, guidance_mult,
    temperature_ptr, temperature_val, seed_ptr, seed_val, offset_ptr, offset_val, position_ptr, active_ptr,
    fallback_ptr, x_ptr, reveal_prob_ptr, reveal_prob_bits, stats_temperature_ptr, stats_temperature_val, out_ptr,
    stats_ptr, rec_ptr, arg_ptr, vocab, n_chunks, exclude, mask_id,
    CHUNK: tl.constexpr, CHUNK_BLOCK: tl.constexpr, FIELDS: tl.constexpr, HAS_GUIDANCE: tl.constexpr,
    HAS_ACTIVE: tl.constexpr, HAS_FALLBACK: tl.constexpr, UNMASK: tl.constexpr, STATS: tl.constexpr,
    HAS_ROW_OFFSETS_ARR: tl.constexpr, HAS_GUIDANCE_OFFSETS_ARR: tl.constexpr, HAS_TEMPERATURE_ARR: tl.constexpr,
    HAS_SEED_ARR: tl.constexpr, HAS_OFFSET_ARR: tl.constexpr, HAS_POSITION_ARR: tl.constexpr,
    HAS_REVEAL_PROB_ARR: tl.constexpr, HAS_STATS_TEMPERATURE_ARR: tl.constexpr,
):
    """Passes 2-3 of row ``r`` from its chunk records; stores its token and stats."""
    live, carry = _row_live(r, seed_ptr, seed_val, offset_ptr, offset_val, position_ptr, active_ptr, fallback_ptr, x_ptr,
                            reveal_prob_ptr, reveal_prob_bits, mask_id, HAS_ACTIVE, HAS_FALLBACK, UNMASK, HAS_SEED_ARR,
                            HAS_OFFSET_ARR, HAS_POSITION_ARR, HAS_REVEAL_PROB_ARR)
    token = carry
    logprob = tl.full([], float("nan"), tl.float32)
    prob = tl.full([], float("nan"), tl.float32)
    margin = tl.full([], float("nan"), tl.float32)
    entropy = tl.full([], float("nan"), tl.float32)
    if live:
        temperature = _per_row(temperature_ptr, temperature_val, r, HAS_TEMPERATURE_ARR)
        _, inv_st = _inv_temperatures(r, temperature, stats_temperature_ptr, stats_temperature_val, STATS,
                                      HAS_STATS_TEMPERATURE_ARR)
        logits_row, guidance_row = _row_pointers(r, logits_ptr, row_offsets_ptr, row_stride, guidance_ptr,
                                                 guidance_offsets_ptr, guidance_row_stride, HAS_GUIDANCE,
                                                 HAS_ROW_OFFSETS_ARR, HAS_GUIDANCE_OFFSETS_ARR)
        rec_row = rec_ptr + r * (FIELDS * n_chunks)
        arg_row = arg_ptr + r * n_chunks
        blk = tl.arange(0, CHUNK_BLOCK)

        # ---- merge: bad flags, row max, first argmax (all exact, so the order cannot matter) ----
        has_bad = tl.full([], 0, tl.int32)
        has_finite = tl.full([], 0, tl.int32)
        row_max = tl.full([], float("-inf"), tl.float32)
        argmax = tl.full([], 0, tl.int32)
        for cb in range(0, n_chunks, CHUNK_BLOCK):
            idx = cb + blk
            ok = idx < n_chunks
            m = tl.load(rec_row + idx, mask=ok, other=float("-inf"))
            has_bad = tl.maximum(has_bad, tl.max((m != m).to(tl.int32), 0))
            has_finite = tl.maximum(has_finite, tl.max((m > float("-inf")).to(tl.int32), 0))
            m_blk = tl.max(tl.where(m == m, m, float("-inf")), 0)
            arg_blk = tl.min(tl.where(ok & (m == m_blk), tl.load(arg_row + idx, mask=ok, other=0), _INT_MAX), 0)
            # Strictly greater: on ties across blocks the earlier (lower index) one keeps it.
            argmax = tl.where(m_blk > row_max, arg_blk, argmax)
            row_max = tl.maximum(row_max, m_blk)
        bad = (has_bad > 0) | (has_finite == 0)
        token = argmax.to(tl.int64)

        if (temperature > 0) & ~bad:
            tok0, tok1, tok2, tok3 = _row_words(r, seed_ptr, seed_val, offset_ptr, offset_val, position_ptr,
                                                HAS_SEED_ARR, HAS_OFFSET_ARR, HAS_POSITION_ARR, _DOMAIN_TOKEN)
            u1 = _uniform52(tok0, tok1)
            u2 = _uniform52(tok2, tok3)
            # T = +inf divides by the kernels' clamped 2^126 (inv_temperature): -inf / inf would be NaN.
            t64 = tl.where(temperature < float("inf"), temperature.to(tl.float64), 8.507059173023462e37)
            big_m = row_max.to(tl.float64)

            # ---- pass 2: pick the chunk (float64 running sum of W over the records) ----
            # The same block sums in both loops, so the last running sum equals `total` bitwise.
            total = tl.full([], 0.0, tl.float64)
            for cb in range(0, n_chunks, CHUNK_BLOCK):
                w = _chunk_weights(rec_row, rec_row + n_chunks, cb + blk, n_chunks, big_m, t64)
                total = tl.max(total + tl.cumsum(w, 0), 0)
            target = u1 * total
            chosen = tl.full([], -1, tl.int32)
            last_positive = tl.full([], -1, tl.int32)
            running = tl.full([], 0.0, tl.float64)
            for cb in range(0, n_chunks, CHUNK_BLOCK):
                idx = cb + blk
                w = _chunk_weights(rec_row, rec_row + n_chunks, idx, n_chunks, big_m, t64)
                cum = running + tl.cumsum(w, 0)
                # w > 0 too: on a GPU tl.cumsum is a tree scan, whose running sum can gain an ulp at a
                # position of no mass; that position must not be the one that crosses the target.
                hit = tl.min(tl.where((cum > target) & (w > 0), idx, _INT_MAX), 0)
                chosen = tl.where((chosen < 0) & (hit < _INT_MAX), hit, chosen)
                last_positive = tl.maximum(last_positive, tl.max(tl.where(w > 0, idx, -1), 0))
                running = tl.max(cum, 0)
            # u1 * total rounding up to total leaves no running sum above it: take the last chunk with mass.
            chosen = tl.maximum(tl.where(chosen >= 0, chosen, last_positive), 0)

            # ---- pass 3: pick the token inside the chosen chunk (float64) ----
            lane = tl.arange(0, CHUNK)
            cols = chosen * CHUNK + lane
            g = _scores(logits_row, guidance_row, cols, vocab, exclude, guidance_mult, HAS_GUIDANCE)
            m_c = tl.load(rec_row + chosen).to(tl.float64)
            w = tl.exp((g.to(tl.float64) - m_c) / t64)
            cum = tl.cumsum(w, 0)
            target = u2 * tl.max(cum, 0)
            inner = tl.min(tl.where((cum > target) & (w > 0), lane, CHUNK), 0)  # w > 0: as in pass 2
            inner = tl.where(inner < CHUNK, inner, tl.max(tl.where(w > 0, lane, -1), 0))
            token = chosen.to(tl.int64) * CHUNK + inner.to(tl.int64)

        if bad:
            token = tl.full([], -1, tl.int64)

        if STATS:
            # Every chunk moved from its own max M_c to the row max M: its e^y scale by e_c = e^(a_c),
            # a_c = (M_c - M) / T_stats <= 0, and its y shift by a_c. The first max's chunk has e_c = 1 and
            # keeps its max out of the tail; every other chunk's max joins it. e_c = 0 (an empty chunk, or
            # a_c = -inf at a tiny temperature) adds nothing: selected out rather than 0 * -inf.
            big_m = row_max.to(tl.float64)
            inv_st64 = inv_st.to(tl.float64)
            first_chunk = argmax // CHUNK
            tail = tl.full([], 0.0, tl.float64)
            sx = tl.full([], 0.0, tl.float64)
            top2 = tl.full([], float("-inf"), tl.float32)
            for cb in range(0, n_chunks, CHUNK_BLOCK):
                idx = cb + blk
                ok = idx < n_chunks
                m = tl.load(rec_row + idx, mask=ok, other=float("-inf"))
                tail_c = tl.load(rec_row + 2 * n_chunks + idx, mask=ok, other=0.0).to(tl.float64)
                ex_c = tl.load(rec_row + 3 * n_chunks + idx, mask=ok, other=0.0).to(tl.float64)
                top2_c = tl.load(rec_row + 4 * n_chunks + idx, mask=ok, other=float("-inf"))
                a = (m.to(tl.float64) - big_m) * inv_st64
                e = tl.where(m > float("-inf"), tl.exp(a), 0.0)
                others = idx != first_chunk
                tail += tl.sum(tl.where(e > 0, e * tail_c, 0.0) + tl.where(others, e, 0.0), 0)
                sx += tl.sum(tl.where(e > 0, e * (ex_c + a * (1.0 + tail_c)), 0.0), 0)
                top2 = tl.maximum(top2, tl.max(tl.maximum(top2_c, tl.where(others & ok, m, float("-inf"))), 0))
            # Bad rows have token -1: read token 0 instead (their stats become NaN below).
            g_tok = _scores(logits_row, guidance_row, tl.maximum(token, 0).to(tl.int32), vocab, exclude,
                            guidance_mult, HAS_GUIDANCE)
            st_sum = 1.0 + tail
            log_sum = _log1p(tail)
            logprob64 = (g_tok.to(tl.float64) - big_m) * inv_st64 - log_sum
            logprob = logprob64.to(tl.float32)
            prob = tl.exp(logprob64).to(tl.float32)
            # p1 - p2 = -expm1((top2 - top1)/T) / sum: 1 - e^gap would cancel at a near-tie.
            gap = (top2.to(tl.float64) - big_m) * inv_st64
            margin = (-_expm1(gap) / st_sum).to(tl.float32)
            entropy = (log_sum - sx / st_sum).to(tl.float32)  # both terms >= 0: no cancellation
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


# The three kernels share one argument list (see sample_rows); the comments give shapes. Each
# per-row parameter is a pointer to its [N] values (HAS_<NAME>_ARR) or, when the caller gave
# one number, None and that value for every row; rows without offsets start at r * row_stride.
# The values are not specialized (Triton would make a 1 a constant and recompile for it). The row
# strides are: a stride divisible by 16 is what tells Triton the rows are 16-byte aligned, so
# that it reads them with vector loads (one binary per kind of stride, not per value).
_NOT_SPECIALIZED = ["rows_key", "seed_val", "offset_val", "reveal_prob_bits"]


@triton.jit(do_not_specialize=_NOT_SPECIALIZED)  # rows_key: an autotuning key only, one binary for every N
def _sample_rows_kernel(
    logits_ptr,            # [..., V] fp16/bf16/fp32/fp64
    row_offsets_ptr,       # [N] int64 element offsets of the rows, or None:
    row_stride,            # row r at r * row_stride
    guidance_ptr,          # [..., V] like logits, or None
    guidance_offsets_ptr,  # [N] int64, or None: row r at r * guidance_row_stride
    guidance_row_stride,
    guidance_mult,         # guidance_scale + 1
    temperature_ptr,       # [N] fp32, or None: temperature_val; 0 = argmax
    temperature_val,
    seed_ptr,              # [N] int64, or None: seed_val
    seed_val,
    offset_ptr,            # [N] int64, or None: offset_val
    offset_val,
    position_ptr,          # [N] int64, or None: the row index
    active_ptr,            # [N] uint8, or None
    fallback_ptr,          # [N] int64, or None
    x_ptr,                 # [N] int64 (unmask mode), or None
    reveal_prob_ptr,       # [N] fp64 (unmask mode), or None: reveal_prob_bits
    reveal_prob_bits,      # one fp64 reveal probability, as its int64 bits
    stats_temperature_ptr,  # [N] fp32, or None: stats_temperature_val
    stats_temperature_val,
    out_ptr,               # [N] int64
    stats_ptr,             # [N, 4] fp32, or None
    rec_ptr,               # [N, FIELDS, C] fp32 scratch: M_c, S_c (+ tail, sum e^y y, top2)
    arg_ptr,               # [N, C] int32 scratch: first argmax of each chunk
    vocab,
    n_chunks,
    exclude,               # token id never drawn, -1 for none
    mask_id,
    rows_key,              # autotuning key only: next power of two of N
    CHUNK: tl.constexpr,
    CHUNK_BLOCK: tl.constexpr,
    FIELDS: tl.constexpr,
    HAS_GUIDANCE: tl.constexpr,
    HAS_ACTIVE: tl.constexpr,
    HAS_FALLBACK: tl.constexpr,
    UNMASK: tl.constexpr,
    STATS: tl.constexpr,
    HAS_ROW_OFFSETS_ARR: tl.constexpr,
    HAS_GUIDANCE_OFFSETS_ARR: tl.constexpr,
    HAS_TEMPERATURE_ARR: tl.constexpr,
    HAS_SEED_ARR: tl.constexpr,
    HAS_OFFSET_ARR: tl.constexpr,
    HAS_POSITION_ARR: tl.constexpr,
    HAS_REVEAL_PROB_ARR: tl.constexpr,
    HAS_STATS_TEMPERATURE_ARR: tl.constexpr,
    UNROLL: tl.constexpr,  # chunks reduced per loop step (their loads in flight together)
):
    """One program per row: pass 1 over all its chunks, then the finish."""
    r = tl.program_id(0).to(tl.int64)
    live, _ = _row_live(r, seed_ptr, seed_val, offset_ptr, offset_val, position_ptr, active_ptr, fallback_ptr, x_ptr,
                        reveal_prob_ptr, reveal_prob_bits, mask_id, HAS_ACTIVE, HAS_FALLBACK, UNMASK, HAS_SEED_ARR,
                        HAS_OFFSET_ARR, HAS_POSITION_ARR, HAS_REVEAL_PROB_ARR)
    if live:
        for c0 in range(0, n_chunks, UNROLL):
            _reduce_chunks(r, c0, UNROLL, logits_ptr, row_offsets_ptr, row_stride, guidance_ptr, guidance_offsets_ptr,
                           guidance_row_stride, guidance_mult, temperature_ptr, temperature_val,
                           stats_temperature_ptr, stats_temperature_val, rec_ptr, arg_ptr, vocab, n_chunks, exclude,
                           CHUNK, FIELDS, HAS_GUIDANCE, STATS, HAS_ROW_OFFSETS_ARR, HAS_GUIDANCE_OFFSETS_ARR,
                           HAS_TEMPERATURE_ARR, HAS_STATS_TEMPERATURE_ARR)
    # The finish reads records stored by other threads of the CTA: a barrier orders those global
    # writes before the reads (Triton inserts barriers for shared memory only).
    tl.debug_barrier()
    _finish_row(r, logits_ptr, row_offsets_ptr, row_stride, guidance_ptr, guidance_offsets_ptr, guidance_row_stride,
                guidance_mult, temperature_ptr, temperature_val, seed_ptr, seed_val, offset_ptr, offset_val,
                position_ptr, active_ptr, fallback_ptr, x_ptr, reveal_prob_ptr, reveal_prob_bits,
                stats_temperature_ptr, stats_temperature_val, out_ptr, stats_ptr, rec_ptr, arg_ptr, vocab, n_chunks,
                exclude, mask_id, CHUNK, CHUNK_BLOCK, FIELDS, HAS_GUIDANCE, HAS_ACTIVE, HAS_FALLBACK, UNMASK, STATS,
                HAS_ROW_OFFSETS_ARR, HAS_GUIDANCE_OFFSETS_ARR, HAS_TEMPERATURE_ARR, HAS_SEED_ARR, HAS_OFFSET_ARR,
                HAS_POSITION_ARR, HAS_REVEAL_PROB_ARR, HAS_STATS_TEMPERATURE_ARR)


@triton.jit(do_not_specialize=_NOT_SPECIALIZED)
def _chunk_records_kernel(
    logits_ptr, row_offsets_ptr, row_stride, guidance_ptr, guidance_offsets_ptr, guidance_row_stride, guidance_mult,
    temperature_ptr, temperature_val, seed_ptr, seed_val, offset_ptr, offset_val, position_ptr, active_ptr,
    fallback_ptr, x_ptr, reveal_prob_ptr, reveal_prob_bits, stats_temperature_ptr, stats_temperature_val, out_ptr,
    stats_ptr, rec_ptr, arg_ptr, vocab, n_chunks, exclude, mask_id, rows_key,
    CHUNK: tl.constexpr, CHUNK_BLOCK: tl.constexpr, FIELDS: tl.constexpr, HAS_GUIDANCE: tl.constexpr,
    HAS_ACTIVE: tl.constexpr, HAS_FALLBACK: tl.constexpr, UNMASK: tl.constexpr, STATS: tl.constexpr,
    HAS_ROW_OFFSETS_ARR: tl.constexpr, HAS_GUIDANCE_OFFSETS_ARR: tl.constexpr, HAS_TEMPERATURE_ARR: tl.constexpr,
    HAS_SEED_ARR: tl.constexpr, HAS_OFFSET_ARR: tl.constexpr, HAS_POSITION_ARR: tl.constexpr,
    HAS_REVEAL_PROB_ARR: tl.constexpr, HAS_STATS_TEMPERATURE_ARR: tl.constexpr,
    GROUP: tl.constexpr,   # chunks per program
):
    """Split path, pass 1: program (r, j) reduces chunks [j * GROUP, (j + 1) * GROUP) of row r."""
    r = tl.program_id(0).to(tl.int64)
    live, _ = _row_live(r, seed_ptr, seed_val, offset_ptr, offset_val, position_ptr, active_ptr, fallback_ptr, x_ptr,
                        reveal_prob_ptr, reveal_prob_bits, mask_id, HAS_ACTIVE, HAS_FALLBACK, UNMASK, HAS_SEED_ARR,
                        HAS_OFFSET_ARR, HAS_POSITION_ARR, HAS_REVEAL_PROB_ARR)
    if live:
        _reduce_chunks(r, tl.program_id(1) * GROUP, GROUP, logits_ptr, row_offsets_ptr, row_stride, guidance_ptr,
                       guidance_offsets_ptr, guidance_row_stride, guidance_mult, temperature_ptr, temperature_val,
                       stats_temperature_ptr, stats_temperature_val, rec_ptr, arg_ptr, vocab, n_chunks, exclude,
                       CHUNK, FIELDS, HAS_GUIDANCE, STATS, HAS_ROW_OFFSETS_ARR, HAS_GUIDANCE_OFFSETS_ARR,
                       HAS_TEMPERATURE_ARR, HAS_STATS_TEMPERATURE_ARR)


@triton.jit(do_not_specialize=_NOT_SPECIALIZED)
def _finish_rows_kernel(
    logits_ptr, row_offsets_ptr, row_stride, guidance_ptr, guidance_offsets_ptr, guidance_row_stride, guidance_mult,
    temperature_ptr, temperature_val, seed_ptr, seed_val, offset_ptr, offset_val, position_ptr, active_ptr,
    fallback_ptr, x_ptr, reveal_prob_ptr, reveal_prob_bits, stats_temperature_ptr, stats_temperature_val, out_ptr,
    stats_ptr, rec_ptr, arg_ptr, vocab, n_chunks, exclude, mask_id, rows_key,
    CHUNK: tl.constexpr, CHUNK_BLOCK: tl.constexpr, FIELDS: tl.constexpr, HAS_GUIDANCE: tl.constexpr,
    HAS_ACTIVE: tl.constexpr, HAS_FALLBACK: tl.constexpr, UNMASK: tl.constexpr, STATS: tl.constexpr,
    HAS_ROW_OFFSETS_ARR: tl.constexpr, HAS_GUIDANCE_OFFSETS_ARR: tl.constexpr, HAS_TEMPERATURE_ARR: tl.constexpr,
    HAS_SEED_ARR: tl.constexpr, HAS_OFFSET_ARR: tl.constexpr, HAS_POSITION_ARR: tl.constexpr,
    HAS_REVEAL_PROB_ARR: tl.constexpr, HAS_STATS_TEMPERATURE_ARR: tl.constexpr,
):
    """Split path, passes 2-3: one program per row, from the records of _chunk_records_kernel."""
    _finish_row(tl.program_id(0).to(tl.int64), logits_ptr, row_offsets_ptr, row_stride, guidance_ptr,
                guidance_offsets_ptr, guidance_row_stride, guidance_mult, temperature_ptr, temperature_val, seed_ptr,
                seed_val, offset_ptr, offset_val, position_ptr, active_ptr, fallback_ptr, x_ptr, reveal_prob_ptr,
                reveal_prob_bits, stats_temperature_ptr, stats_temperature_val, out_ptr, stats_ptr, rec_ptr, arg_ptr,
                vocab, n_chunks, exclude, mask_id, CHUNK, CHUNK_BLOCK, FIELDS, HAS_GUIDANCE, HAS_ACTIVE,
                HAS_FALLBACK, UNMASK, STATS, HAS_ROW_OFFSETS_ARR, HAS_GUIDANCE_OFFSETS_ARR, HAS_TEMPERATURE_ARR,
                HAS_SEED_ARR, HAS_OFFSET_ARR, HAS_POSITION_ARR, HAS_REVEAL_PROB_ARR, HAS_STATS_TEMPERATURE_ARR)


def _quick_bench(fn, quantiles):
    """Autotuning timer: a few ms per config (the default spends ~125 ms on each)."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=5, rep=20, quantiles=quantiles)


_KEY = ["vocab", "rows_key"]  # plus the dtypes of the tensor arguments, which the autotuner adds
_rows_tuned = triton.autotune(ROW_CONFIGS, key=_KEY, do_bench=_quick_bench, cache_results=True)(_sample_rows_kernel)
_chunks_tuned = triton.autotune(SPLIT_CONFIGS, key=_KEY, do_bench=_quick_bench, cache_results=True)(
    _chunk_records_kernel)


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (a fixed stand-in under the interpreter)."""
    if device.type != "cuda":
        return _INTERPRETER_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


def use_split(n_rows: int, vocab: int, sms: int) -> bool:
    """Whether ``n_rows`` rows of ``vocab`` tokens take the split path on a GPU of ``sms`` SMs.

    One program per row leaves SMs idle when the rows are fewer than the programs that keep
    HBM busy (``_ROWS_PER_SM`` per SM); a row of one chunk has nothing to split.
    """
    return triton.cdiv(vocab, CHUNK) > 1 and n_rows < _ROWS_PER_SM * sms


def guidance_factor(guidance_scale: float) -> float:
    """``w + 1`` as the C++ kernels compute it, ``float(w) + 1.0f`` in fp32 (two roundings): the sum in double
    rounded once to the fp32 argument parted from it by an ulp at w = 2/3, and an exact tie's argmax with it."""
    w = struct.unpack("<f", struct.pack("<f", guidance_scale))[0]
    return struct.unpack("<f", struct.pack("<f", w + 1.0))[0]


def _reveal_prob(req: RowDraw):
    """``tensor_or_value`` of the float64 reveal probability: one value goes as its int64 bits
    (a float kernel argument would be rounded to fp32)."""
    tensor, value = tensor_or_value(req, "reveal_prob")
    return tensor, struct.unpack("<q", struct.pack("<d", float(value)))[0]


def sample_rows(req: RowDraw, *, split: bool | None = None,
                config: triton.Config | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Draw one token per row of ``req`` (sample_categorical, or unmask_step when ``req.x`` is set).

    Args:
        req: validated request: logits ``[..., V]`` read through ``row_offsets`` ``[N]`` or
            ``row_stride``, per-row temperature / seed / offset (``[N]`` or one number),
            position (``[N]`` or None: the row index) and the optional parts.
        split: force the split path (True) or one program per row (False); None chooses by
            :func:`use_split` with the device's SM count. Results are the same either way.
        config: run this entry of ``SPLIT_CONFIGS`` (split path) or ``ROW_CONFIGS`` instead of
            the autotuned one (GPU) or the first entry (interpreter, ``MDSAMPLE_TRITON_AUTOTUNE=0``).
            Results are the same.

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
    if split is None:
        split = use_split(n, vocab, _sm_count(device))

    unmask = req.x is not None
    n_chunks = triton.cdiv(vocab, CHUNK)
    fields = 5 if stats is not None else 2
    records = torch.empty((n, fields, n_chunks), dtype=torch.float32, device=device)
    argmaxes = torch.empty((n, n_chunks), dtype=torch.int32, device=device)
    has_active = req.active is not None and not unmask
    args = (
        req.logits, req.row_offsets, req.row_stride, req.guidance, req.guidance_offsets, req.guidance_row_stride,
        guidance_factor(req.guidance_scale), *tensor_or_value(req, "temperature"), *tensor_or_value(req, "seed"),
        *tensor_or_value(req, "offset"), req.position,
        req.active.view(torch.uint8) if has_active else None,
        req.fallback if has_active else None,
        req.x if unmask else None,
        *_reveal_prob(req),
        *tensor_or_value(req, "stats_temperature"), tokens, stats, records, argmaxes, vocab, n_chunks,
        req.mask_id if unmask else req.exclude,
        req.mask_id,
        triton.next_power_of_2(n),
    )
    meta = dict(
        CHUNK=CHUNK,
        CHUNK_BLOCK=min(triton.next_power_of_2(n_chunks), _MAX_CHUNK_BLOCK),
        FIELDS=fields,
        HAS_GUIDANCE=req.guidance is not None,
        HAS_ACTIVE=has_active,
        HAS_FALLBACK=has_active and req.fallback is not None,
        UNMASK=unmask,
        STATS=stats is not None,
        HAS_ROW_OFFSETS_ARR=req.row_offsets is not None,
        HAS_GUIDANCE_OFFSETS_ARR=req.guidance_offsets is not None,
        HAS_TEMPERATURE_ARR=isinstance(req.temperature, torch.Tensor),
        HAS_SEED_ARR=isinstance(req.seed, torch.Tensor),
        HAS_OFFSET_ARR=isinstance(req.offset, torch.Tensor),
        HAS_POSITION_ARR=req.position is not None,
        HAS_REVEAL_PROB_ARR=unmask and isinstance(req.reveal_prob, torch.Tensor),
        HAS_STATS_TEMPERATURE_ARR=isinstance(req.stats_temperature, torch.Tensor),
    )
    if config is None and (_backends.triton_interpreted() or os.environ.get("MDSAMPLE_TRITON_AUTOTUNE") == "0"):
        config = (SPLIT_CONFIGS if split else ROW_CONFIGS)[0]
    with on_device_of(req.logits):
        if split:
            grid = lambda m: (n, triton.cdiv(n_chunks, m["GROUP"]))  # noqa: E731
            if config is None:
                _chunks_tuned[grid](*args, **meta)
            else:
                _chunk_records_kernel[grid](*args, **meta, **config.all_kwargs())
            _finish_rows_kernel[(n,)](*args, **meta, num_warps=_NUM_WARPS)
        elif config is None:
            _rows_tuned[(n,)](*args, **meta)
        else:
            _sample_rows_kernel[(n,)](*args, **meta, **config.all_kwargs())
    return tokens, stats
