"""Triton backend of the likelihood ops: lowdisc_timesteps, forward_mask, masked_nll.

Computes exactly the algorithms of :mod:`mdsample.reference.likelihood`, with the
Philox words, centred uniforms and guided scores of :mod:`mdsample.triton.sampling`.

Shapes (B sequences of L tokens, N = B * L rows of V logits):

- timesteps: ``offset`` ``[G]`` int64 -> ``out`` ``[G, n]`` float64.
- forward_mask: ``x0`` ``[B, L]`` int64, ``maskable`` ``[B, L]`` uint8 or None,
  ``seed`` / ``offset`` ``[B]`` int64, ``position`` ``[B, L]`` int64 or None (flat
  index), ``prob`` ``[B]`` float64 or ``count`` ``[B]`` int64 -> ``out`` ``[B, L]`` int64.
- masked_nll: ``logits`` ``[..., V]`` read in place through ``row_offsets`` ``[N]``
  int64 (last dim contiguous), ``target`` / ``xt`` ``[N]`` int64, ``weight`` ``[N]``
  fp32 or None -> per-row values ``[N]`` fp32, summed per sequence in float64.

Kernels:

- ``_timesteps_kernel``: one program per block of lattice points; float64 throughout.
  ``eps`` arrives in a float64 tensor (a Python float argument would be fp32).
- ``_mask_bernoulli_kernel``: one program per block of a row; a coin per token.
- ``_mask_count_kernel``: one program per row; a 52-step radix select finds the
  k-th smallest key (the 52-bit integer of the token's uniform), counting keys
  below a candidate in each step, then one pass masks keys below it and the
  lowest-index ties. Keys stay in registers when the row fits one block (L <= 1024),
  else they go once to an ``[B, L]`` int64 scratch that each step re-reads.
- ``_masked_nll_kernel``: one program per row; an unmasked or zero-weight row
  stores 0 without reading logits; a masked row streams its logits once with a
  per-lane online (max, sum of exp), merges the lanes, and stores
  ``w * (logsumexp - g[target])``.

GPU notes: the count kernel's 52 counting steps are register reductions for
L <= 1024 and scratch re-reads beyond; masked_nll's one-program-per-row grid reads each
masked row once, which is the memory floor.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..reference.philox import DOMAIN_FORWARD_MASK, DOMAIN_TIMESTEP
from ._device import on_device_of
from .sampling import _log1p, _philox_words, _scores, _uniform52, guidance_factor

_DOMAIN_TIMESTEP = tl.constexpr(DOMAIN_TIMESTEP)
_DOMAIN_FORWARD_MASK = tl.constexpr(DOMAIN_FORWARD_MASK)
_MODES = {"stratified": 0, "shifted": 1, "iid": 2}
_BLOCK_TOKENS = 1024
_BLOCK_VOCAB = 2048


@triton.jit
def _timesteps_kernel(offset_ptr, eps_ptr, out_ptr, seed, n, MODE: tl.constexpr, BLOCK: tl.constexpr):
    g = tl.program_id(0)
    i = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    live = i < n
    # Load: the lattice's offset and (1 - eps, eps) in float64.
    offset = tl.load(offset_ptr + g)
    one_minus_eps = tl.load(eps_ptr)
    eps = tl.load(eps_ptr + 1)
    # Compute: the point's uniform (the shifted lattice shares position 0's), the lattice point, the eps map.
    if MODE == 1:
        position = tl.zeros([BLOCK], tl.int64)
    else:
        position = i.to(tl.int64)
    w0, w1, _, _ = _philox_words(seed, offset, position, _DOMAIN_TIMESTEP)
    u = _uniform52(w0, w1)
    fi = i.to(tl.float64)
    if MODE == 0:
        unit = (u + fi) / n
    elif MODE == 1:
        x = u + fi / n
        unit = tl.where(x >= 1.0, x - 1.0, x)
    else:
        unit = u
    # Store.
    tl.store(out_ptr + g.to(tl.int64) * n + i, one_minus_eps * unit + eps, mask=live)  # G * n may pass 2^31


@triton.jit
def _token_uniforms(seed, offset, position_ptr, row_start, idx, HAS_POSITION: tl.constexpr):
    """Forward-mask uniforms (float64) of tokens ``row_start + idx`` of a row keyed (seed, offset)."""
    if HAS_POSITION:
        position = tl.load(position_ptr + row_start + idx)
    else:
        position = (row_start + idx).to(tl.int64)
    w0, w1, _, _ = _philox_words(seed, offset, position, _DOMAIN_FORWARD_MASK)
    return _uniform52(w0, w1)


@triton.jit
def _maskable(maskable_ptr, row_start, idx, live, HAS_MASKABLE: tl.constexpr):
    if HAS_MASKABLE:
        return live & (tl.load(maskable_ptr + row_start + idx, mask=live, other=0) != 0)
    return live


@triton.jit
def _mask_bernoulli_kernel(x0_ptr, maskable_ptr, seed_ptr, offset_ptr, position_ptr, prob_ptr, out_ptr,
                           length, mask_id, HAS_MASKABLE: tl.constexpr, HAS_POSITION: tl.constexpr,
                           BLOCK: tl.constexpr):
    b = tl.program_id(0)
    idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    live = idx < length
    row_start = b.to(tl.int64) * length
    # Load.
    x0 = tl.load(x0_ptr + row_start + idx, mask=live)
    allowed = _maskable(maskable_ptr, row_start, idx, live, HAS_MASKABLE)
    prob = tl.load(prob_ptr + b)
    # Compute: the coin of every token.
    u = _token_uniforms(tl.load(seed_ptr + b), tl.load(offset_ptr + b), position_ptr, row_start,
                        tl.where(live, idx, 0), HAS_POSITION)
    hit = allowed & (u < prob)
    # Store.
    tl.store(out_ptr + row_start + idx, tl.where(hit, mask_id, x0), mask=live)


@triton.jit
def _row_keys(seed, offset, maskable_ptr, position_ptr, row_start, idx, live,
              HAS_MASKABLE: tl.constexpr, HAS_POSITION: tl.constexpr):
    """int64 keys of a block of a row: the 52-bit integer k of u = (k + 0.5) 2^-52; 2^62 where not maskable."""
    u = _token_uniforms(seed, offset, position_ptr, row_start, tl.where(live, idx, 0), HAS_POSITION)
    key = (u * 4503599627370496.0 - 0.5).to(tl.int64)  # exact: u is (k + 0.5) 2^-52
    allowed = _maskable(maskable_ptr, row_start, idx, live, HAS_MASKABLE)
    return tl.where(allowed, key, 1 << 62)  # above every 52-bit key


@triton.jit
def _mask_count_kernel(x0_ptr, maskable_ptr, seed_ptr, offset_ptr, position_ptr, count_ptr, keys_ptr, out_ptr,
                       length, mask_id, HAS_MASKABLE: tl.constexpr, HAS_POSITION: tl.constexpr,
                       BLOCK: tl.constexpr, ONE_BLOCK: tl.constexpr):
    b = tl.program_id(0)
    row_start = b.to(tl.int64) * length
    seed = tl.load(seed_ptr + b)
    offset = tl.load(offset_ptr + b)
    k = tl.load(count_ptr + b)
    idx = tl.arange(0, BLOCK)
    live = idx < length
    # Load: the row's keys, kept in registers when the row fits one block, else in the [B, L] scratch.
    if ONE_BLOCK:
        key = _row_keys(seed, offset, maskable_ptr, position_ptr, row_start, idx, live, HAS_MASKABLE, HAS_POSITION)
    else:
        for lo in range(0, length, BLOCK):
            blk = _row_keys(seed, offset, maskable_ptr, position_ptr, row_start, lo + idx, lo + idx < length,
                            HAS_MASKABLE, HAS_POSITION)
            tl.store(keys_ptr + row_start + lo + idx, blk, mask=lo + idx < length)
    # Reduce: the k-th smallest key T, bit by bit from the top (the largest T with #{key < T} < k).
    threshold = tl.zeros([], tl.int64)
    for j in range(52):
        cand = threshold + (tl.full([], 1, tl.int64) << (51 - j))
        if ONE_BLOCK:
            below = tl.sum((live & (key < cand)).to(tl.int64), 0)
        else:
            below = tl.zeros([], tl.int64)
            for lo in range(0, length, BLOCK):
                blk = tl.load(keys_ptr + row_start + lo + idx, mask=lo + idx < length, other=1 << 62)
                below += tl.sum((blk < cand).to(tl.int64), 0)
        threshold = tl.where(below < k, cand, threshold)
    # Compute and store: keys below T are masked, then the ties at T by lowest index until k are.
    if ONE_BLOCK:
        below = tl.sum((live & (key < threshold)).to(tl.int64), 0)
        tie = (live & (key == threshold)).to(tl.int64)
        hit = live & (key < (1 << 62)) & ((key < threshold) | ((tie != 0) & (below + tl.cumsum(tie, 0) - tie < k)))
        x0 = tl.load(x0_ptr + row_start + idx, mask=live)
        tl.store(out_ptr + row_start + idx, tl.where(hit, mask_id, x0), mask=live)
    else:
        below = tl.zeros([], tl.int64)
        for lo in range(0, length, BLOCK):
            blk = tl.load(keys_ptr + row_start + lo + idx, mask=lo + idx < length, other=1 << 62)
            below += tl.sum((blk < threshold).to(tl.int64), 0)
        ties_before = tl.zeros([], tl.int64)
        for lo in range(0, length, BLOCK):
            in_row = lo + idx < length
            blk = tl.load(keys_ptr + row_start + lo + idx, mask=in_row, other=1 << 62)
            tie = (in_row & (blk == threshold)).to(tl.int64)
            tie_rank = ties_before + tl.cumsum(tie, 0) - tie
            hit = in_row & (blk < (1 << 62)) & ((blk < threshold) | ((tie != 0) & (below + tie_rank < k)))
            x0 = tl.load(x0_ptr + row_start + lo + idx, mask=in_row)
            tl.store(out_ptr + row_start + lo + idx, tl.where(hit, mask_id, x0), mask=in_row)
            ties_before += tl.sum(tie, 0)


@triton.jit
def _nll_from_rest(g_t, m, s):
    """-log softmax(g)[t] from the target's score and the other scores' max ``m`` and sum of exp ``s``
    (``nll_from_rest`` of csrc/include/mdsample/likelihood_math.h)."""
    near = _log1p(s * tl.exp(tl.minimum(m - g_t, 0.0)))
    far = (m - g_t) + tl.log(s + tl.exp(tl.minimum(g_t - m, 0.0)))
    nll = tl.where(g_t >= m, near, far)
    return tl.where((g_t == float("inf")) | ((g_t == float("-inf")) & (m == float("-inf"))), float("nan"), nll)


@triton.jit
def _masked_nll_kernel(logits_ptr, row_offsets_ptr, guidance_ptr, guidance_offsets_ptr, guidance_mult,
                       target_ptr, xt_ptr, weight_ptr, row_value_ptr, vocab, mask_id, exclude,
                       HAS_GUIDANCE: tl.constexpr, HAS_WEIGHT: tl.constexpr, BLOCK: tl.constexpr,
                       ROW_ALIGN: tl.constexpr):
    r = tl.program_id(0)
    # Load: the row's state; an unmasked or zero-weight row stores 0 and reads no logits.
    xt = tl.load(xt_ptr + r)
    if HAS_WEIGHT:
        w = tl.load(weight_ptr + r)
    else:
        w = tl.full([], 1.0, tl.float32)
    value = tl.zeros([], tl.float32)
    if (xt == mask_id) & (w != 0.0):
        # ROW_ALIGN divides every offset (the host knows it from the strides): with it Triton can
        # read 16-byte vectors; an offset loaded from memory tells it nothing.
        logits_row = logits_ptr + tl.multiple_of(tl.load(row_offsets_ptr + r), ROW_ALIGN)
        guidance_row = logits_row
        if HAS_GUIDANCE:
            guidance_row = guidance_ptr + tl.multiple_of(tl.load(guidance_offsets_ptr + r), ROW_ALIGN)
        target = tl.load(target_ptr + r)
        # Compute: per-lane online max and sum of exp over the row, one read, of the scores other than the
        # target's (it joins at the end: _nll_from_rest).
        m = tl.full([BLOCK], float("-inf"), tl.float32)
        s = tl.zeros([BLOCK], tl.float32)
        bad = tl.zeros([BLOCK], tl.int1)
        for lo in range(0, vocab, BLOCK):
            cols = lo + tl.arange(0, BLOCK)
            g = _scores(logits_row, guidance_row, cols, vocab, exclude, guidance_mult, HAS_GUIDANCE)
            bad = bad | (g != g) | (g == float("inf"))
            g = tl.where(cols == target, float("-inf"), g)
            m_new = tl.maximum(m, g)
            base = tl.where(m_new == float("-inf"), 0.0, m_new)
            s = s * tl.exp(m - base) + tl.exp(g - base)
            m = m_new
        # Reduce: merge the lanes.
        row_max = tl.max(m, 0)
        base = tl.where(row_max == float("-inf"), 0.0, row_max)
        total = tl.sum(s * tl.exp(m - base), 0)
        in_vocab = (target >= 0) & (target < vocab)
        g_target = _scores(logits_row, guidance_row, tl.where(in_vocab, target, 0), vocab, exclude, guidance_mult,
                           HAS_GUIDANCE)
        nll = _nll_from_rest(g_target, row_max, total)
        any_bad = (tl.max(bad.to(tl.int32), 0) != 0) | ~in_vocab
        value = tl.where(any_bad, float("nan"), w * nll)
    # Store.
    tl.store(row_value_ptr + r, value)


def lowdisc_timesteps(n: int, *, eps: float, mode: str, seed: int, offset: torch.Tensor) -> torch.Tensor:
    """Timesteps ``[G, n]`` float64 for lattice offsets ``offset`` (int64 ``[G]``)."""
    out = torch.empty((offset.numel(), n), dtype=torch.float64, device=offset.device)
    if out.numel() == 0:
        return out
    block = min(triton.next_power_of_2(n), _BLOCK_TOKENS)
    eps_pair = torch.tensor([1.0 - eps, eps], dtype=torch.float64, device=offset.device)
    # No FMA: the eps map is a product then a sum on every backend (likelihood_math.h), and a fused
    # multiply-add (Triton's default on a GPU) rounds once, so the times would differ in the last bit.
    with on_device_of(out):
        _timesteps_kernel[(offset.numel(), triton.cdiv(n, block))](offset, eps_pair, out, seed, n,
                                                                   MODE=_MODES[mode], BLOCK=block,
                                                                   enable_fp_fusion=False)
    return out


def forward_mask(x0, *, mask_id, seed, offset, position, maskable, prob, count) -> torch.Tensor:
    """``x_t`` ``[B, L]`` int64 (see :func:`mdsample.reference.likelihood.forward_mask`; position None = flat index)."""
    batch, length = x0.shape
    out = torch.empty_like(x0)
    if out.numel() == 0:
        return out
    block = min(triton.next_power_of_2(length), _BLOCK_TOKENS)
    maskable_u8 = None if maskable is None else maskable.view(torch.uint8)
    flags = dict(HAS_MASKABLE=maskable is not None, HAS_POSITION=position is not None, BLOCK=block)
    with on_device_of(out):
        if prob is not None:
            _mask_bernoulli_kernel[(batch, triton.cdiv(length, block))](
                x0, maskable_u8, seed, offset, position, prob, out, length, mask_id, **flags)
        else:
            one_block = length <= block
            keys = out if one_block else torch.empty_like(x0)  # scratch only when a row spans blocks
            _mask_count_kernel[(batch,)](x0, maskable_u8, seed, offset, position, count, keys, out, length,
                                         mask_id, ONE_BLOCK=one_block, **flags)
    return out


def _offset_multiple(*tensors) -> int:
    """The largest power of two, up to 16 bytes of elements, that divides every leading-dim stride of the
    tensors (None skipped; a dim of size 1 adds nothing to an offset, whatever its stride), hence every row
    offset of theirs."""
    strides = [s for t in tensors if t is not None for n, s in zip(t.shape[:-1], t.stride()[:-1]) if n > 1]
    k = 16 // tensors[0].element_size()
    while k > 1 and any(s % k for s in strides):
        k //= 2
    return k


def masked_nll(req) -> torch.Tensor:
    """Per-sequence NLL ``[n_seqs]`` fp32 of a validated :class:`mdsample.ops._likelihood.NllRequest`."""
    n_rows = req.n_seqs * req.length
    row_value = torch.empty(n_rows, dtype=torch.float32, device=req.logits.device)
    if n_rows:
        vocab = req.logits.shape[-1]
        with on_device_of(row_value):
            _masked_nll_kernel[(n_rows,)](
                req.logits, req.row_offsets, req.guidance, req.guidance_offsets, guidance_factor(req.guidance_scale),
                req.target, req.xt, req.weight, row_value, vocab, req.mask_id, req.exclude,
                HAS_GUIDANCE=req.guidance is not None, HAS_WEIGHT=req.weight is not None,
                BLOCK=min(triton.next_power_of_2(vocab), _BLOCK_VOCAB),
                ROW_ALIGN=_offset_multiple(req.logits, req.guidance),
            )
    return row_value.view(req.n_seqs, req.length).to(torch.float64).sum(-1).to(torch.float32)
