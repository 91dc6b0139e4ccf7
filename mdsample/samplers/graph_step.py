"""Fixed-shape, host-sync-free block steps of cached ``generate``, replayable as CUDA graphs.

``generate(..., cache="prefix" | "dual", cuda_graph=True)`` runs each denoising step of a
block as one :class:`BlockStep` call. Every tensor the step touches has a shape fixed by
(batch, block length, cache mode), every input that changes from step to step lives in a
static device buffer, and no value travels to the host. On CUDA the step is therefore
captured once in a ``torch.cuda.CUDAGraph`` and replayed: one launch per step instead of
hundreds, and no stall of the launch queue on a ``.item()``.

Why the shapes can be fixed. With a KV cache, prompts hold no mask token and a block's
steps commit only inside the block, so when a block starts all its ``block_length``
positions are masked in every sequence, the LLaDA transfer counts are the same for every
sequence, and a step's candidates are exactly the block's masked positions. The step hence
computes the block's rows only, in a fixed ``[B, block_length]`` frame:

1. the backbone on the block (``"dual"``: the block alone against the cached canvas, at the
   block start held in a device tensor, so one graph serves every block; ``"prefix"``: block
   + suffix, whose length shrinks block by block, so one graph per block), logits only for
   the block rows through ``head``;
2. :func:`mdsample.sample_categorical` with ``check=False`` and device-tensor seed/offset,
   ``positions`` = ``b * L + p`` and ``active`` = still masked (committed rows are not read);
3. the confidences (:func:`.remasking.confidence`) and each sequence's top ``k`` by
   :func:`.remasking.select` (a stable sort: ties to the lower position), ``k`` read from a
   device buffer;
4. the commit, a scatter into the canvas ``x`` in place, and ``offset += 1`` in place.

Fast-dLLM's ``threshold`` / ``factor`` rules select with the same fixed-shape
:func:`.remasking.select`, but a block then runs until it has no mask, a data-dependent
number of steps. ``generate`` runs a budget of ``steps / num_blocks`` steps per block without
looking, then checks once (one host sync per block) and continues step by step while masks
remain. A step on a finished sequence commits nothing, and the next block starts with a
refresh, so the budget's surplus steps change no token: the output is the eager sampler's.
dInfer's hierarchy rule (``low_threshold``) is fixed-shape too and runs the same way; its credit
fusion (samplers/credit.py) keeps its state in static ``[B, block, block]`` buffers, so a
replay reads and updates it in place.

``"random"`` remasking chooses the committed positions from Philox uniforms first, as the
eager sampler does, and computes only the ``kmax`` rows per sequence that can be committed
(``kmax`` = the largest count of the block's schedule; rows past a sequence's ``k`` are inactive).

Randomness is the eager sampler's, word for word: the same Philox key, offset
(``block << 32 | step``) and position for every draw and uniform, so the output equals the
eager cached ``generate`` token for token (up to floating-point rounding of the head's GEMM,
which computes more rows at once here; the tests see no flip).

Refresh forwards (a block's first step, and every ``refresh_every``-th) feed the whole
canvas; they run eagerly (still without host syncs), as the warm-up of each capture does.
Rows with no valid draw (NaN logits) cannot raise inside a graph: they stay masked, and the
caller checks once, after the last block, that no mask is left.
"""
from __future__ import annotations

import threading
from typing import Optional

import torch

from ..ops.sampling import sample_categorical
from ._random import DOMAIN_REVEAL, uniforms
from .forward import CachedRowForward
from .credit import Credit
from .truncation import truncate
from .remasking import confidence, select, transfer_counts

__all__ = ["BlockStep", "StepGraphs"]


class StepGraphs:
    """Captured block steps kept across ``generate`` calls: pass one as ``cuda_graph=``.

    ``generate(..., cache=..., cuda_graph=True)`` captures its steps anew in every call (one graph
    for ``"dual"``, one per block for ``"prefix"``). With ``graphs = StepGraphs()`` and
    ``generate(..., cuda_graph=graphs)``, a call whose model, prompt shape and settings match an
    earlier one's reuses that call's canvas, KV cache and graphs: the new prompt and seed are
    copied into the static buffers and the graphs replayed, so only the first call pays for the
    captures. The entries hold GPU memory (KV cache, graph pool) until :meth:`clear` or until
    the object is dropped; the tokens are those of a fresh call.

    A graph reads the model's parameters and buffers where they were at capture: updates in place
    (a ``load_state_dict``, an optimizer step) are seen; after ``model.to(...)`` or a swapped
    parameter the kept step is dropped and the next call captures anew. The tensors looked at are the
    model's ``parameters()`` and ``buffers()``, or, for a model that is no ``nn.Module``, those of the
    modules and tensors it holds as attributes or its ``hidden`` / ``head`` are bound to; a model showing
    none cannot be kept (TypeError). A call holds its entry while it runs, so a second call with the
    same key at the same time (from ``on_step``, or another thread) builds its own step instead of
    overwriting the running one's buffers.
    """

    def __init__(self):
        self._entries: dict = {}
        self._lock = threading.Lock()

    def take(self, model, settings: tuple) -> tuple[Optional["BlockStep"], tuple]:
        """The step kept for ``model`` with ``settings`` (a tuple generate builds), checked out until
        :meth:`keep` returns it (None if there is none, it is out, or the model's tensors moved), and where
        the model's tensors are now: what a step built or replayed in this call will read."""
        ptrs = model_tensor_ptrs(model)
        with self._lock:
            entry = self._entries.pop((id(model), settings), None)
        if entry is None or entry[0] is not model or entry[1] != ptrs:
            return None, ptrs
        return entry[2], ptrs

    def keep(self, model, settings: tuple, step: "BlockStep", ptrs: tuple) -> None:
        """Keep (or return) ``step``, whose graphs read the model's tensors at ``ptrs`` (from :meth:`take`),
        for the next call with ``model`` and ``settings``. Not kept if the tensors moved during the call
        (``on_step`` moved the model: a later capture read elsewhere); a step kept meanwhile under the same
        key (a concurrent call's) stays."""
        if model_tensor_ptrs(model) != ptrs:
            return
        with self._lock:
            self._entries.setdefault((id(model), settings), (model, ptrs, step))

    def clear(self) -> None:
        """Drops every kept step (its canvas, cache and graphs)."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def _own_tensors(obj) -> list:
    if isinstance(obj, torch.Tensor):
        return [obj]
    fns = [getattr(obj, name, None) for name in ("parameters", "buffers")]
    return [t for fn in fns if callable(fn) for t in fn()]


def model_tensor_ptrs(model) -> tuple:
    """Where the model's tensors live (a captured graph reads those addresses): its ``parameters()`` and
    ``buffers()``, or, lacking both, those of its attributes and of the objects its ``hidden`` / ``head``
    methods are bound to (a wrapper's module)."""
    tensors = _own_tensors(model)
    if not tensors:
        holders = list(vars(model).values()) if hasattr(model, "__dict__") else []
        holders += [getattr(getattr(model, name, None), "__self__", None) for name in ("hidden", "head")]
        seen = {id(model)}
        for h in holders:
            if h is not None and id(h) not in seen:
                seen.add(id(h))
                tensors += _own_tensors(h)
    if not tensors:
        raise TypeError(f"StepGraphs cannot see the tensors of {type(model).__name__} (no parameters() / buffers(), "
                        "no nn.Module or tensor attribute), so it could not tell when its captures go stale: pass "
                        "cuda_graph=True, which captures anew in every call")
    return tuple(t.data_ptr() for t in tensors)


class BlockStep:
    """One fixed-shape denoising step of a semi-AR block with a KV cache, eager or replayed.

    Args:
        fwd: the :class:`CachedRowForward` (``"prefix"`` or ``"dual"``) of the canvas.
        x: int64 ``[B, L]`` canvas, updated in place (a static buffer for the graphs).
        block_length: positions per block.
        per_block: steps per block.
        remasking: "low_confidence", "random", "entropy" or "margin".
        temperature: float >= 0 of the draw.
        stats_temperature: temperature of the confidences (None: the op's default).
        seed: int64 Philox key.
        mask_id: the mask token.
        threshold, factor: Fast-dLLM's rules instead of LLaDA's counts (at most one; both
            :func:`.remasking.select`, fixed-shape); the caller then runs a step budget per block.
        guidance_scale: CFG weight passed to the sampling op (0 without CFG).
        backend: sampling-op backend.
        capture: replay captured CUDA graphs (needs CUDA tensors); False runs every step eagerly.
        keep_graphs: keep every block's graph (a :class:`StepGraphs` reuses them in later calls);
            False drops a ``"prefix"`` block's graph when the next block starts.
        truncation: ``(top_p, top_k)`` of the draw (samplers/truncation.py, its sync-free form), or Nones.
        low_threshold: dInfer's hierarchy rule (:func:`.remasking.select`), or None.
        credit: dInfer's credit fusion settings ``(alpha, gamma, beta)`` (samplers/credit.py), or None.

    Static buffers (what a replay reads): ``k`` int64 ``[B]`` (this step's transfer counts),
    ``offset`` int64 ``[]`` (Philox offset, bumped by each step), ``seed`` int64 ``[]``,
    ``fwd.block_start`` int64 ``[]``, ``x``, the cache, and with ``credit`` its ``credit.tokens`` /
    ``credit.credit`` slots.
    """

    def __init__(self, fwd: CachedRowForward, x: torch.Tensor, *, block_length: int, per_block: int,
                 remasking: str, temperature: float, stats_temperature: Optional[float], seed: int, mask_id: int,
                 threshold: Optional[float] = None, factor: Optional[float] = None, guidance_scale: float = 0.0,
                 backend: str = "auto", capture: bool = False, keep_graphs: bool = False,
                 truncation: tuple = (None, None), low_threshold: Optional[float] = None,
                 credit: Optional[tuple] = None):
        if capture and x.device.type != "cuda":
            raise ValueError(f"CUDA-graph capture needs CUDA tensors; the canvas is on {x.device}")
        dev = x.device
        b, total = x.shape
        self.fwd, self.x, self.mask_id = fwd, x, mask_id
        self.block_length, self.per_block = block_length, per_block
        self.remasking, self.temperature, self.stats_temperature = remasking, temperature, stats_temperature
        self.guidance_scale, self.backend, self.capture, self.keep_graphs = guidance_scale, backend, capture, keep_graphs
        self.threshold, self.factor, self.low_threshold = threshold, factor, low_threshold
        self.top_p, self.top_k = truncation
        self.dynamic = threshold is not None or factor is not None or low_threshold is not None
        self.credit = None if credit is None else Credit(b, block_length, credit, dev)
        self.k = torch.zeros(b, dtype=torch.int64, device=dev)
        self.offset = torch.zeros((), dtype=torch.int64, device=dev)
        self.seed = torch.tensor(seed, dtype=torch.int64, device=dev)
        self.counts = torch.zeros((b, per_block), dtype=torch.int64, device=dev)
        self._j = torch.arange(block_length, device=dev)
        self._everyone = torch.arange(b, device=dev)
        self._row_base = self._everyone.unsqueeze(1) * total  # Philox position of (b, p) = b * L + p
        # The largest count of the schedule bounds what a step commits (random remasking computes only
        # that); a threshold or factor may commit the whole block.
        self.kmax = block_length if self.dynamic else -(-block_length // per_block)
        rows = block_length if remasking != "random" else self.kmax
        self._row_seq = self._everyone.repeat_interleave(rows)
        self.graphs: dict = {}
        self._pool = None

    def restart(self, x: torch.Tensor, uncond_mask: torch.Tensor, seed: int,
                attention_mask: Optional[torch.Tensor] = None) -> None:
        """Start a new generation in the same buffers: canvas ``x`` int64 ``[B, L]``, the CFG
        input's masked positions bool ``[B, L]``, the Philox key and a padded batch's
        ``attention_mask`` ``[B, L]`` (into the cache's key mask), copied in place (the graphs
        read these addresses). The KV cache needs no reset: each block starts with a refresh."""
        self.x.copy_(x)
        self.fwd.uncond_mask.copy_(uncond_mask)
        self.seed.fill_(seed)
        if attention_mask is not None:
            self.fwd.set_padding(attention_mask)

    def schedule(self) -> list[int]:
        """Host copy of each step's transfer count (the same for every sequence, module docstring).

        Steps past the list commit nothing and are skipped without a forward, as the eager sampler does.
        With a threshold or factor: ``per_block`` zeros (the budget; counts are not known ahead).
        """
        if self.dynamic:
            return [0] * self.per_block
        # A CPU tensor: LLaDA's counts for an all-masked block without touching the device.
        counts = transfer_counts(torch.tensor([self.block_length]), self.per_block)[0].tolist()
        return [k for k in counts if k > 0]  # zeros only trail (per_block > block_length)

    def begin_block(self, start: int, end: int, offset: int) -> None:
        """Start the block ``[start, end)`` with Philox offset ``offset`` for its first step."""
        self.fwd.begin_block(self.x, start, end, static=True)
        self.offset.fill_(offset)
        self.counts.copy_(transfer_counts(self.x[:, start:end] == self.mask_id, self.per_block))
        if self.credit is not None:
            self.credit.reset()

    def __call__(self, i: int) -> None:
        """Step ``i`` of the current block: a refresh runs eagerly, any other step replays its graph."""
        if not self.dynamic:
            self.k.copy_(self.counts[:, i])
        refresh = self.fwd.advance()
        if refresh or not self.capture:
            self.run(refresh)
            return
        key = self.fwd.start if self.fwd.mode == "prefix" else None  # prefix chunks shrink block by block
        graph = self.graphs.get(key)
        if graph is None:
            if not self.keep_graphs:
                self.graphs.clear()  # a finished block's prefix graph is never replayed again in this call
            self.graphs[key] = self._capture()
        else:
            graph.replay()

    def _capture(self) -> torch.cuda.CUDAGraph:
        # The warm-up is this step itself, run for real on a side stream: lazy initialisations
        # (cuBLAS handles, kernel caches) must not happen during capture, and capture does not execute.
        side = torch.cuda.Stream(self.x.device)
        side.wait_stream(torch.cuda.current_stream(self.x.device))
        with torch.cuda.stream(side):
            self.run(False)
        torch.cuda.current_stream(self.x.device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self.run(False)
        return graph

    def run(self, refresh: bool) -> None:
        """The step's computation, eagerly (what a graph records); updates ``x`` and ``offset`` in place."""
        x, fwd = self.x, self.fwd
        b = x.shape[0]
        cols = fwd.block_start + self._j                      # [bl] absolute positions of the block
        frame = cols.expand(b, -1)                            # [B, bl]
        block = x.gather(1, frame)
        cand = block == self.mask_id
        positions = self._row_base + cols                     # [B, bl]
        if self.remasking == "random":
            u, _ = uniforms(self.seed, self.offset, positions, DOMAIN_REVEAL)
            chosen = self._select(u, cand)
            # The chosen positions first, in position order: kmax fixed-shape rows per sequence.
            order = torch.sort(chosen.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :self.kmax]
            frame, block, positions = frame.gather(1, order), block.gather(1, order), positions.gather(1, order)
            active = chosen.gather(1, order)
            new = self._draw(fwd, frame, refresh, positions, active, block, stats=False)  # inactive: unchanged
        else:
            res = self._draw(fwd, frame, refresh, positions, cand, block, stats=True)
            chosen = self._select(confidence(res, self.remasking).view(b, -1), cand)
            new = torch.where(chosen, res.tokens.view(b, -1), block)
        # check=False marks a row with no valid draw by -1: it stays masked (generate checks at the end).
        x.scatter_(1, frame, torch.where(new >= 0, new, self.mask_id))
        self.offset += 1

    def _select(self, conf, cand):
        return select(conf, cand, k=None if self.dynamic else self.k, threshold=self.threshold, factor=self.factor,
                      low_threshold=self.low_threshold)

    def _draw(self, fwd, frame, refresh, positions, active, fallback, *, stats):
        logits, guidance = fwd.rows(self.x, self._everyone, self._row_seq, frame.reshape(-1), refresh=refresh)
        if self.top_p is not None or self.top_k is not None:
            logits = truncate(logits, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              exclude=self.mask_id, sync_free=True)
        if self.credit is not None:  # the draw from the fused rows
            logits = self.credit.step(logits, exclude=self.mask_id, active=active.reshape(-1), check=False,
                                      backend=self.backend)  # every block row: credit refuses "random"
        out = sample_categorical(
            logits, temperature=self.temperature, seed=self.seed, offset=self.offset,
            positions=positions.reshape(-1), exclude=self.mask_id, active=active.reshape(-1),
            fallback=fallback.reshape(-1), guidance=guidance, guidance_scale=self.guidance_scale,
            return_stats=stats, stats_temperature=self.stats_temperature if stats else None, check=False,
            backend=self.backend)
        return out if stats else out.view(frame.shape)
