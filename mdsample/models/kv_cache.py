"""Static, preallocated KV cache with a cache-aware forward for :class:`Transformer`.

Storage: one tensor ``kv`` of shape ``[layers, 2, B, kv_heads, max_len, head_dim]``
(index 0 = keys, 1 = values), allocated once. Keys are stored *after* RoPE, at their
absolute positions, so a cached key is never rotated again and never moved.

A call feeds a chunk of ``n`` tokens at absolute positions ``start .. start+n-1``:

1. its K/V are written in place into slots ``[start, start+n)`` of every layer (a slice
   copy: no ``torch.cat``, no reallocation);
2. its queries attend to the slots ``[0, kv_len)`` (default ``kv_len = start + n``), under
   the model's attention mode evaluated on absolute positions.

This one primitive covers the semi-AR cache patterns:

- AR decoding (``"causal"``): ``prefill(prompt)``; then per token ``forward_block(tok, start=t)``
  and ``commit(t, 1)``;
- BD3-LM (``"block_causal"``, exact): finished blocks sit in ``[0, start)``; every denoising
  step calls ``forward_block(x_block, start)``; once the block is final, its clean K/V are
  written by one more call (which can be fused with the next block's first step by feeding
  ``[clean block | next block]``: the block-causal mask keeps the clean block from seeing the
  next one) and ``commit(start, block_size)`` makes them part of the prefix;
- Fast-dLLM prefix cache (``"bidirectional"``, approximate): a full forward at block start
  (``forward_block(x, 0)``, also the block's first step), ``commit(0, block_start)``; later
  steps feed block + suffix, ``forward_block(x[:, block_start:], block_start)``;
- Fast-dLLM dual cache: the same full forward, then steps feed only the block and attend to
  the whole canvas, ``forward_block(x_block, block_start, kv_len=L)``; the block's own rows are
  overwritten each step, the suffix K/V stay frozen until the next refresh.

Host bookkeeping (``length`` = committed prefix, ``filled`` = end of written slots) is plain
Python ints, so the step path does no device-to-host sync (.item(), .nonzero(), bool(t)).

Padding: :meth:`KVCache.set_key_mask` hides a left-padded batch's padding keys from every real query
(cached or fed), as :meth:`Transformer.hidden` does with ``attention_mask``.

Graph-safe variant: pass ``start`` (and optionally ``kv_len``) as 0-dim int64 device tensors.
The chunk is then scattered with ``index_copy_`` and attends over all ``max_len`` slots with
a mask, so every call of one chunk shape has the same shapes and no Python-side value
dependence: one CUDA graph per (batch, chunk) shape replays for any block position. That
path does no bookkeeping and no bounds checks (positions must lie in ``[0, max_len)``).
``kv_len`` may stay a Python int there; a bidirectional chunk with ``kv_len >= max_len``
(dual cache over the whole canvas) needs no mask and runs the eager path's attention kernel.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from ..ops import _validate as V
from .transformer import Transformer, attention_allowed, first_real, key_padding_mask

Index = Union[int, torch.Tensor]


class KVCache:
    """Static KV cache of one :class:`Transformer` for ``batch_size`` rows.

    Args:
        model: the transformer whose K/V are cached (any attention mode).
        batch_size: rows ``B`` of every chunk fed to this cache.
        max_len: slots per row (default ``model.config.max_seq_len``; at most that).
        device, dtype: of the storage: the model's (the default; others are refused, since attention
            reads the cached keys and values beside the queries, in their device and dtype).

    Attributes:
        kv: ``[layers, 2, B, kv_heads, max_len, head_dim]`` post-RoPE keys (``[:, 0]``) and values.
        length: committed prefix: slots ``[0, length)`` hold final K/V (host int).
        filled: slots ``[0, filled)`` have been written at least once (host int).
    """

    def __init__(self, model: Transformer, batch_size: int, max_len: Optional[int] = None, *, device=None,
                 dtype=None):
        cfg = model.config
        batch_size = V.int_number("batch_size", batch_size, low=1)
        max_len = V.int_number("max_len (at most the model's max_seq_len)",
                               cfg.max_seq_len if max_len is None else max_len, low=1, high=cfg.max_seq_len)
        d = None if device is None else torch.device(device)
        if d is not None and (d.type != model.device.type or d.index not in (None, model.device.index)):
            raise ValueError(f"device must be the model's ({model.device}): attention reads the cache beside the "
                             f"queries; got {device}")
        if dtype is not None and dtype != model.dtype:
            raise ValueError(f"dtype must be the model's ({model.dtype}): attention reads the cache beside the "
                             f"queries; got {dtype}")
        self.model = model
        self.batch_size, self.max_len = batch_size, max_len
        self.kv = torch.zeros(cfg.num_layers, 2, batch_size, cfg.num_kv_heads, max_len, cfg.head_dim,
                              device=model.device, dtype=model.dtype)
        self.length = 0
        self.filled = 0
        self.key_mask: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------ bookkeeping

    def set_key_mask(self, attention_mask: Optional[torch.Tensor]) -> None:
        """Hide padding keys from every real query: ``attention_mask`` ``[B, <= max_len]`` (1 = real token), or
        None for none. Copied into one persistent bool ``[B, max_len]`` buffer (slots past the mask count
        as real), so a captured CUDA graph reads the new mask when it is set again.

        In ``"block_causal"`` mode the cache's blocks lie at absolute positions (its commits end on their
        boundaries), so each row's padding before its first real token must be whole blocks; otherwise the
        real tokens would be grouped into other blocks than alone (one host read checks it)."""
        if attention_mask is None:
            self.key_mask = None
            return
        attention_mask = V.as_tensor("attention_mask", attention_mask)
        b, n = attention_mask.shape if attention_mask.dim() == 2 else (None, None)
        if b != self.batch_size or n > self.max_len:
            raise ValueError(f"attention_mask must be [B={self.batch_size}, <= {self.max_len}]; "
                             f"got {tuple(attention_mask.shape)}")
        bs = self.model.config.block_size
        if self.model.config.attention == "block_causal" and n:
            first = first_real(attention_mask)
            partial = first % bs != 0
            if bool(partial.any()):
                row = int(partial.int().argmax())
                raise ValueError(f"attention_mask row {row} has {int(first[row])} padding positions before its "
                                 f"first real token, not a multiple of block_size={bs}: the cache's blocks lie at "
                                 "absolute positions, so pad each prompt by whole blocks")
        if self.key_mask is None:
            self.key_mask = torch.ones(self.batch_size, self.max_len, dtype=torch.bool, device=self.kv.device)
        self.key_mask[:, :n].copy_(attention_mask != 0)
        self.key_mask[:, n:] = True  # a longer mask set before must not leave its padding behind

    def reset(self) -> None:
        """Forget everything (the storage is kept; stale slots are never read before rewritten)."""
        self.length = 0
        self.filled = 0

    def commit(self, start: Index, length: int) -> None:
        """Declare the K/V in slots ``[start, start+length)`` final: they become part of the prefix.

        Nothing is copied: the last call that covered these slots wrote them in place (so that
        call must have been fed the finished tokens). The committed prefix becomes
        ``[0, start+length)``; committing less than before truncates it (rollback). A tensor
        ``start`` (graph-safe path) is accepted and ignored: that path keeps no bookkeeping.

        In ``"block_causal"`` mode the committed prefix must end on a block boundary (or at
        ``max_len``): a position's K/V depend on its whole block, so a partial block's K/V are
        not final until the rest of the block has been fed with it.
        """
        if isinstance(start, torch.Tensor):
            return
        cfg = self.model.config
        start = V.int_number("start", start)
        length = V.int_number("length", length, low=0)
        end = start + length
        if cfg.attention == "block_causal" and end % cfg.block_size and end != self.max_len:
            raise ValueError(f"commit({start}, {length}) ends inside a block of {cfg.block_size}: in block_causal "
                             "mode only whole blocks are final")
        if not 0 <= start <= self.length:
            raise ValueError(f"commit(start={start}) would leave a gap: the committed prefix ends at {self.length}")
        if start + length > self.filled:
            raise ValueError(f"commit({start}, {length}) covers slots never written (written up to {self.filled})")
        self.length = start + length

    # ------------------------------------------------------------------ forward

    def prefill(self, x: torch.Tensor) -> torch.Tensor:
        """Compute and store the K/V of a prefix ``x`` ``[B, P]`` (positions 0..P-1) and commit it.

        In ``"block_causal"`` mode only the whole blocks of the prefix are committed
        (``length = P - P % block_size``): the next call starts at that block boundary and
        feeds the partial block again together with its continuation.

        Returns the final-normed hidden states ``[B, P, D]`` (apply ``model.head`` to the rows
        that need logits, e.g. ``h[:, -1]`` for the next AR token).
        """
        self.reset()
        h = self.hidden_block(x, 0)
        n, cfg = x.shape[1], self.model.config
        self.commit(0, n - n % cfg.block_size if cfg.attention == "block_causal" and n != self.max_len else n)
        return h

    def forward_block(self, x: torch.Tensor, start: Optional[Index] = None, *,
                      kv_len: Optional[Index] = None) -> torch.Tensor:
        """Logits ``[B, n, V]`` of a chunk ``x`` ``[B, n]`` at positions ``start..start+n-1``,
        attending to cached slots ``[0, kv_len)``; writes the chunk's K/V in place. See
        :meth:`hidden_block`."""
        return self.model.head(self.hidden_block(x, start, kv_len=kv_len))

    def hidden_block(self, x: torch.Tensor, start: Optional[Index] = None, *,
                     kv_len: Optional[Index] = None) -> torch.Tensor:
        """Cache-aware forward of a chunk: final-normed hidden ``[B, n, D]``.

        Args:
            x: LongTensor ``[B, n]``, the tokens at positions ``start .. start+n-1``.
            start: first position of the chunk (default: ``length``, the end of the committed
                prefix). A Python int takes the eager path; a 0-dim int64 device tensor the
                graph-safe path (module docstring).
            kv_len: the queries attend to slots ``[0, kv_len)`` (default ``start + n``). Larger
                values read K/V written by earlier calls past the chunk (dual cache's suffix).

        Returns:
            ``[B, n, D]`` final-normed hidden states of the chunk. Slots ``[start, start+n)``
            of ``kv`` now hold this chunk's K/V.
        """
        self.model._check_tokens(x)
        b, n = x.shape
        if b != self.batch_size:
            raise ValueError(f"x has batch {b}; this cache was built for batch {self.batch_size}")
        if n == 0:
            raise ValueError("x must hold at least one position")
        if start is None:
            start = self.length
        if isinstance(kv_len, torch.Tensor) and not isinstance(start, torch.Tensor):
            raise TypeError("kv_len may be a tensor only with a tensor start (the graph-safe path)")
        if kv_len is not None and not isinstance(kv_len, torch.Tensor):
            kv_len = V.int_number("kv_len", kv_len)
        if isinstance(start, torch.Tensor):
            return self._hidden_static(x, start, kv_len)
        return self._hidden_eager(x, V.int_number("start", start), kv_len)

    def _hidden_eager(self, x: torch.Tensor, start: int, kv_len: Optional[Index]) -> torch.Tensor:
        """Python-int positions: attend to the slice ``[0, kv_len)`` only (no work on empty slots)."""
        n, cfg, model = x.shape[1], self.model.config, self.model
        end = start + n
        kv_len = end if kv_len is None else kv_len
        if start < 0 or end > self.max_len:
            raise ValueError(f"chunk [{start}, {end}) does not fit the cache's {self.max_len} slots")
        if start > self.length:
            raise ValueError(f"start={start} is past the committed prefix ({self.length}): the chunk would "
                             "attend to K/V that were never committed; commit() the blocks before it")
        if not end <= kv_len <= max(self.filled, end):
            raise ValueError(f"kv_len={kv_len} must cover the chunk (>= {end}) and only written slots "
                             f"(<= {max(self.filled, end)})")
        mode = cfg.attention
        # Skip the mask when every query may see every key in [0, kv_len): SDPA then takes its
        # fastest kernel. For block_causal, that is when all keys lie in the first query's block
        # or earlier; for causal, when the chunk is one token at the end of the keys.
        if mode == "bidirectional":
            mask = None
        elif mode == "block_causal" and (kv_len - 1) // cfg.block_size <= start // cfg.block_size:
            mask = None
        elif mode == "causal" and kv_len <= start + 1:
            mask = None
        else:
            q_pos = torch.arange(start, end, device=x.device)
            mask = attention_allowed(mode, cfg.block_size, q_pos, torch.arange(kv_len, device=x.device))
        if self.key_mask is not None:
            mask = key_padding_mask(self.key_mask, self.batch_size, kv_len, mask)
        kv = self.kv

        def hook(layer: int, k: torch.Tensor, v: torch.Tensor):
            kv[layer, 0, :, :, start:end] = k
            kv[layer, 1, :, :, start:end] = v
            return kv[layer, 0, :, :, :kv_len], kv[layer, 1, :, :, :kv_len]

        h = model.run(x, model.rope_cos[start:end], model.rope_sin[start:end], mask, False, hook)
        self.filled = max(self.filled, end)
        return h

    def _hidden_static(self, x: torch.Tensor, start: torch.Tensor, kv_len: Optional[Index]) -> torch.Tensor:
        """Tensor positions: same shapes for every start, no host reads (CUDA-graph capturable)."""
        n, cfg, model, dev = x.shape[1], self.model.config, self.model, x.device
        pos = start.to(device=dev, dtype=torch.int64).reshape(()) + torch.arange(n, device=dev)
        if cfg.attention == "bidirectional" and isinstance(kv_len, int) and kv_len >= self.max_len:
            # Every query sees every slot (dual cache): no mask, so SDPA runs the kernel the eager
            # path runs on the same keys, and the two agree bit for bit.
            mask = None
        else:
            # A Python-int kv_len stays a scalar operand: a host-to-device copy would break capture.
            limit = pos[-1] + 1 if kv_len is None else kv_len
            k_pos = torch.arange(self.max_len, device=dev)
            mask = attention_allowed(cfg.attention, cfg.block_size, pos, k_pos) & (k_pos < limit)[None, :]
        if self.key_mask is not None:
            mask = key_padding_mask(self.key_mask, self.batch_size, self.max_len, mask)
        kv = self.kv

        def hook(layer: int, k: torch.Tensor, v: torch.Tensor):
            # index_copy_ on views of the storage: a scatter into the slots, in place.
            kv[layer, 0].index_copy_(2, pos, k)
            kv[layer, 1].index_copy_(2, pos, v)
            return kv[layer, 0], kv[layer, 1]

        return model.run(x, model.rope_cos[pos], model.rope_sin[pos], mask, False, hook)
