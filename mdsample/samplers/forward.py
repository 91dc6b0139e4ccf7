"""Logits for the rows a sampler draws from, with unsupervised CFG in one doubled batch.

:class:`RowForward` is the samplers' only way to run the model. It forwards only the
sequences it is given (the others need no logits this step) and, through the
backbone's ``hidden``/``head`` when offered, computes logits only for the chosen rows.

Classifier-free guidance is SMDM's / LLaDA's unsupervised CFG: the unconditional input
is the same sequence with its prompt positions replaced by the mask token; both halves
run in one call on a doubled batch, and the sampling op combines them as
``l_u + (w + 1)(l_c - l_u)`` while reading the rows (no combined tensor is materialised).

A KV-cache forward (Fast-dLLM prefix / dual cache, BD3-LM block cache; issue 5) is a
subclass that overrides :meth:`RowForward.begin_block` (prefill at a block start) and
:meth:`RowForward.rows` (feed only the block against the cache); the samplers call
only these two methods, so a cache mode needs no change to them.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..models.protocol import Backbone
from ._checks import check_vocab


class RowForward:
    """Row logits of a canvas ``x`` ``[B, L]`` through a :class:`Backbone`.

    Args:
        backbone: the model, wrapped.
        mask_id: the mask token (used to build the unconditional input; checked against V).
        cfg_scale: guidance weight w; 0 disables CFG.
        uncond_mask: bool ``[B, L]``: positions masked in the unconditional input (the prompt).
        attention_mask: ``[B, L]`` passed to the model (doubled with CFG), or None.
    """

    def __init__(self, backbone: Backbone, *, mask_id: int, cfg_scale: float = 0.0,
                 uncond_mask: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None):
        self.backbone = backbone
        self.mask_id = mask_id
        self.cfg = cfg_scale > 0.0
        self.cfg_scale = cfg_scale
        self.uncond_mask = uncond_mask
        self.attention_mask = attention_mask
        self._ids: dict[str, int] = {}
        self._logits_vocab: Optional[int] = None  # V of the first logits, once seen
        self.check_id("mask_id", mask_id)

    def check_id(self, arg: str, token: int) -> None:
        """``token`` (the argument ``arg``: mask_id, eos_id) must be an id of the model's vocabulary: the one it
        declares, checked now, and the logits' V, checked at the first logits (now if they were seen)."""
        self._ids[arg] = token
        for vocab in (self.backbone.vocab_size, self._logits_vocab):
            if vocab is not None:
                check_vocab("model", vocab, token, arg=arg)

    def begin_block(self, x: torch.Tensor, start: int, end: int) -> None:
        """Called when a semi-AR block ``[start, end)`` begins (no-op without a cache)."""

    def _inputs(self, x: torch.Tensor, seqs: torch.Tensor, sigma: Optional[torch.Tensor]):
        xs = x.index_select(0, seqs)
        am = None if self.attention_mask is None else self.attention_mask.index_select(0, seqs)
        if not self.cfg:
            return xs, am, sigma
        xu = xs.masked_fill(self.uncond_mask.index_select(0, seqs), self.mask_id)
        doubled = lambda t: None if t is None else torch.cat([t, t], 0)  # noqa: E731
        return torch.cat([xs, xu], 0), doubled(am), doubled(sigma)

    def _check(self, logits: torch.Tensor) -> None:
        if self._logits_vocab is None:
            for arg, token in self._ids.items():
                check_vocab("model", logits.shape[-1], token, arg=arg)
            self._logits_vocab = logits.shape[-1]

    def rows(self, x: torch.Tensor, seqs: torch.Tensor, row_seq: torch.Tensor, row_pos: torch.Tensor, *,
             sigma: Optional[torch.Tensor] = None):
        """Logits of rows ``(seqs[row_seq[j]], row_pos[j])``.

        Args:
            x: int64 ``[B, L]`` canvas.
            seqs: int64 ``[n]`` sequences to forward.
            row_seq: int64 ``[N]`` in ``[0, n)``; row_pos: int64 ``[N]`` in ``[0, L)``.
            sigma: float32 ``[n]`` for time-conditioned models.

        Returns:
            ``(logits [N, V], guidance [N, V] or None)``: guidance is the unconditional
            rows, to pass to the sampling op with ``guidance_scale=cfg_scale``.
        """
        xs, am, sg = self._inputs(x, seqs, sigma)
        n, N = seqs.numel(), row_seq.numel()
        if self.cfg:
            row_seq = torch.cat([row_seq, row_seq + n])
            row_pos = torch.cat([row_pos, row_pos])
        out = self.backbone.logits_at(xs, row_seq, row_pos, sigma=sg, attention_mask=am)
        self._check(out)
        if self.cfg:
            return out[:N], out[N:]
        return out, None

    def full(self, x: torch.Tensor, seqs: torch.Tensor, *, sigma: Optional[torch.Tensor] = None):
        """Full logits ``([n, L, V], guidance [n, L, V] or None)`` of sequences ``seqs``."""
        xs, am, sg = self._inputs(x, seqs, sigma)
        out = self.backbone.logits(xs, sigma=sg, attention_mask=am)
        self._check(out)
        if self.cfg:
            n = seqs.numel()
            return out[:n], out[n:]
        return out, None


CACHE_MODES = ("prefix", "dual")


class CachedRowForward(RowForward):
    """Fast-dLLM's approximate KV cache for semi-AR blocks of a bidirectional model.

    Every call forwards the whole batch (the cache holds all ``B`` rows, ``2B`` with CFG);
    only the requested rows get logits. Per block ``[start, end)``:

    - refresh call (the block's first forward, and every ``refresh_every``-th after it): a
      full forward of the canvas, which writes the K/V of every position; the prefix
      ``[0, start)`` is then committed;
    - ``"prefix"``: later calls feed ``x[:, start:]`` (block + suffix) against the cached
      prefix K/V;
    - ``"dual"``: later calls feed only ``x[:, start:end]`` and attend to the whole canvas:
      the block's K/V rows are overwritten, the suffix K/V stay as of the last refresh.
      ``vicinity=(p, a)`` (dInfer's vicinity refresh, ``prefix_look`` / ``after_look``) widens
      the fed window to ``[start - p, end + a)``, whose K/V are then refreshed every call; at
      the canvas' edges the window keeps its width and slides inside (dInfer cuts it), so every
      block step feeds the same number of positions.

    With ``refresh_every=1`` every call is a full forward (the uncached computation). For a
    next-token-aligned backbone (``logits_shift`` 1, Dream) each non-refresh chunk starts one
    position before the block, whose output scores the block's first position. A padded
    batch (``attention_mask``) hides its padding keys in every call, cached or fed.
    Requested rows must lie in the part fed (the block and, for ``"prefix"``, the suffix).

    Fixed-shape steps (``begin_block(..., static=True)``, for CUDA-graph replay): ``"dual"``
    calls then feed the block at :attr:`block_start`, a 0-dim int64 device tensor set at each
    block start, so one captured call serves every block; ``"prefix"`` chunks (block + suffix)
    shrink from block to block and keep the Python-int start. The caller decides refreshes
    with :meth:`advance` and passes ``refresh=`` explicitly, since a replayed call runs no
    Python.
    """

    def __init__(self, backbone: Backbone, *, mode: str, total: int, batch_size: int,
                 refresh_every: Optional[int] = None, vicinity: tuple[int, int] = (0, 0), **kw):
        super().__init__(backbone, **kw)
        if mode not in CACHE_MODES:
            raise ValueError(f"cache must be None or one of {CACHE_MODES}; got {mode!r}")
        if mode != "dual" and vicinity != (0, 0):
            raise ValueError(f"vicinity widens the dual cache's window; cache={mode!r} feeds the suffix anyway")
        self.mode = mode
        self.vicinity = vicinity
        self.refresh_every = refresh_every
        self.total = total
        self.batch_size = batch_size
        self.cache = backbone.new_cache(batch_size * (2 if self.cfg else 1), total,
                                        attention_mask=self._cache_mask(self.attention_mask))
        self.start, self.end, self.calls_in_block = 0, total, 0
        self.refreshes = 0
        self.static = False
        self.block_start: Optional[torch.Tensor] = None

    def _cache_mask(self, attention_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """``attention_mask`` ``[B, L]`` for the cache, which holds the doubled CFG batch (both halves share it)."""
        return attention_mask if attention_mask is None or not self.cfg else torch.cat([attention_mask] * 2, 0)

    def set_padding(self, attention_mask: torch.Tensor) -> None:
        """A new call's padded-batch mask ``[B, L]`` (1 = real token) in this cache (``StepGraphs``
        restarts): the cache's key mask, which a captured graph reads in place."""
        self.attention_mask = attention_mask
        self.cache.set_key_mask(self._cache_mask(attention_mask))

    def begin_block(self, x: torch.Tensor, start: int, end: int, *, static: bool = False) -> None:
        """Start block ``[start, end)``; ``static=True``: fixed-shape calls (class docstring)."""
        self.start, self.end, self.calls_in_block, self.static = start, end, 0, static
        if static:
            if self.block_start is None:
                self.block_start = torch.zeros((), dtype=torch.int64, device=x.device)
            self.block_start.fill_(start)

    def advance(self) -> bool:
        """Count one call of the current block; True when that call is a refresh (full forward)."""
        k, every = self.calls_in_block, self.refresh_every
        self.calls_in_block += 1
        return k == 0 or (every is not None and k % every == 0)

    def rows(self, x: torch.Tensor, seqs: torch.Tensor, row_seq: torch.Tensor, row_pos: torch.Tensor, *,
             sigma: Optional[torch.Tensor] = None, refresh: Optional[bool] = None):
        """As :meth:`RowForward.rows`; ``refresh``: None = decided (and counted) by :meth:`advance`."""
        if sigma is not None:
            raise ValueError("the KV-cache modes do not support time-conditioned backbones")
        b = self.batch_size
        everyone = torch.arange(b, device=x.device)
        xin, _, _ = self._inputs(x, everyone, None)
        if refresh is None:
            refresh = self.advance()
        # A next-token-aligned model (logits_shift 1) scores position p by the output at p - 1: the
        # fed chunk then starts one position earlier (kept inside the canvas), and p - 1 is the row.
        shift, total = self.backbone.logits_shift, self.total
        if refresh:
            chunk, cstart, kv_len = xin, 0, None
        elif self.mode == "prefix":
            c0 = max(self.start - shift, 0)
            chunk, cstart, kv_len = xin[:, c0:], c0, None
        else:
            # dual: the block, the positions before it that a shifted model or the vicinity needs, the
            # vicinity after it; a window of fixed width, slid to stay inside the canvas.
            before, after = max(self.vicinity[0], shift), self.vicinity[1]
            width = min(before + self.end - self.start + after, total)
            if self.static:
                c0 = (self.block_start - before).clamp(0, total - width)
                cols = c0 + torch.arange(width, device=x.device)
                chunk, cstart, kv_len = xin.gather(1, cols.expand(xin.shape[0], -1)), c0, total
            else:
                c0 = min(max(self.start - before, 0), total - width)
                chunk, cstart, kv_len = xin[:, c0:c0 + width], c0, total
        seq = seqs[row_seq]
        pos = ((row_pos - shift).clamp_min(0) if shift else row_pos) - cstart
        n = row_seq.numel()
        if self.cfg:
            seq = torch.cat([seq, seq + b])
            pos = torch.cat([pos, pos])
        out = self.backbone.cache_rows(self.cache, chunk, cstart, seq, pos, kv_len=kv_len)
        if refresh:
            self.refreshes += 1
            self.backbone.cache_commit(self.cache, 0, self.start)
        self._check(out)
        if self.cfg:
            return out[:n], out[n:]
        return out, None
