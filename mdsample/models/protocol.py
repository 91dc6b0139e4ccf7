"""The backbone protocol: everything a sampler may know about a model (DESIGN.md §6).

A backbone is any callable

    model(x: LongTensor[B, L], **kw) -> FloatTensor[B, L, V]

or one returning an object with ``.logits`` (as Hugging Face models do), a dict with
``"logits"``, or a tuple whose first item is the logits. ``V`` is the full output
vocabulary (for masked models it includes the mask token). Keywords a sampler may pass:

- ``sigma``: float32 ``[B]``, only to time-conditioned models (MDLM convention
  ``sigma = -log alpha_t``);
- ``attention_mask``: ``[B, L]`` (1 = attend), only when the caller gave one.

Optional extras that samplers use when present:

- ``hidden(x, **kw) -> [B, L, D]`` (or an object with ``.last_hidden_state``) and
  ``head(h: [N, D]) -> [N, V]``: logits are then computed only for the rows a sampler
  draws from, never the full ``[B, L, V]``;
- ``max_length`` (int): the context window, used by MDLM's semi-AR strides;
- ``vocab_size`` (int, or ``config.vocab_size``): lets samplers check ``mask_id`` before the
  first call (a token id past the embedding table is a device-side assert on CUDA).

Samplers must treat a backbone as *row independent*: the output for sequence ``b``
depends only on sequence ``b`` (true of transformers in eval mode). That is what
lets them forward only the sequences that need logits at a step.

:class:`Backbone` is the single object samplers talk to: it normalises outputs,
validates shapes, computes rows through hidden/head when offered, and counts
model calls, sequence-forwards and logits rows (for progress bars and benchmarks).
KV-cache capability (optional, issue 5): a model offering ``new_cache(batch_size, max_len)``
returning a cache object with ``prefill(x)``, ``forward_block(x, start, kv_len=None)``
(logits ``[B, n, V]`` of a chunk at positions ``start..start+n-1`` attending to cached slots
``[0, kv_len)``, writing the chunk's K/V in place) and ``commit(start, length)`` (optionally
``hidden_block`` with the same arguments returning ``[B, n, D]``, used with ``head`` so only
selected rows get logits). :class:`CacheBackbone` is that protocol; ``Backbone.has_cache``
detects it, and samplers reach the cache only through ``Backbone.new_cache`` /
``Backbone.cache_rows`` / ``Backbone.cache_commit``. Models without it are unaffected.
"""
from __future__ import annotations

import inspect
import warnings
from typing import Any, Optional, Protocol, runtime_checkable

import torch

__all__ = [
    "DiffusionBackbone",
    "RowBackbone",
    "CacheBackbone",
    "KVCacheLike",
    "Backbone",
    "logits_of",
    "hidden_of",
    "device_of",
    "declared_mask_id",
    "declared_vocab_size",
    "declared_vocab_bound",
]


@runtime_checkable
class DiffusionBackbone(Protocol):
    """``model(x: LongTensor[B, L], **kw) -> FloatTensor[B, L, V]`` (or an object with ``.logits``)."""

    def __call__(self, x: torch.Tensor, **kw: Any) -> Any: ...


@runtime_checkable
class RowBackbone(DiffusionBackbone, Protocol):
    """A backbone that also splits into a body ``hidden`` and a per-row ``head``."""

    def hidden(self, x: torch.Tensor, **kw: Any) -> Any:
        """Hidden states ``[B, L, D]`` of tokens ``x`` int64 ``[B, L]`` (a tensor, or an output object, dict or tuple
        holding it as :func:`hidden_of` reads it)."""
        ...

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, V]`` of hidden rows ``h`` ``[N, D]``: applied to the rows being sampled only."""
        ...


@runtime_checkable
class KVCacheLike(Protocol):
    """A model's KV cache: ``prefill`` / ``forward_block`` (block call with a start position) / ``commit``."""

    def prefill(self, x: torch.Tensor) -> Any:
        """Run the prefix ``x`` int64 ``[B, P]`` and keep its K/V as committed slots ``[0, P)``."""
        ...

    def forward_block(self, x: torch.Tensor, start: Any = None, *, kv_len: Any = None) -> Any:
        """Logits ``[B, n, V]`` of chunk ``x`` int64 ``[B, n]`` at positions ``start..start+n-1``, attending to
        slots ``[0, kv_len)`` (default ``start + n``); the chunk's K/V are written, not committed."""
        ...

    def commit(self, start: Any, length: int) -> None:
        """Declare slots ``[start, start+length)`` final: part of the prefix later calls attend to."""
        ...


@runtime_checkable
class CacheBackbone(DiffusionBackbone, Protocol):
    """A backbone that builds a KV cache: ``new_cache(batch_size, max_len) -> KVCacheLike``."""

    def new_cache(self, batch_size: int, max_len: Optional[int] = None) -> KVCacheLike:
        """An empty cache for ``batch_size`` sequences of up to ``max_len`` positions (default: the model's)."""
        ...


_CACHE_METHODS = ("prefill", "forward_block", "commit")


def _first_tensor(out: Any, attr: str, what: str) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    value = getattr(out, attr, None)
    if value is None and isinstance(out, dict):
        value = out.get(attr)
    if value is None and isinstance(out, (tuple, list)) and out:
        value = out[0]
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"model must return {what} as a tensor, an object with .{attr}, a dict with {attr!r} "
            f"or a tuple starting with it; got {type(out).__name__}"
        )
    return value


def _parameters(fn: Any):
    """The parameters of ``fn`` (a module's forward), or None where Python cannot read its signature
    (builtins, C types)."""
    try:
        return inspect.signature(getattr(fn, "forward", fn)).parameters
    except (TypeError, ValueError):
        return None


def accepts_keyword(fn: Any, name: str, *, unknown: bool = False) -> bool:
    """Whether ``fn`` (a module's forward) takes keyword ``name`` (by name or through ``**kwargs``);
    ``unknown`` where Python cannot read its signature (builtins, C types)."""
    params = _parameters(fn)
    if params is None:
        return unknown
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _requires_sigma(fn: Any) -> bool:
    """Whether ``fn`` (a module's forward) has a ``sigma`` parameter without a default."""
    p = (_parameters(fn) or {}).get("sigma")
    return p is not None and p.default is inspect.Parameter.empty and p.kind is not inspect.Parameter.VAR_KEYWORD


def _declared_int(model: Any, *names: str) -> Optional[int]:
    """The first int among ``model.<name>`` / ``model.config.<name>`` (``names`` may say ``config.``)."""
    config = getattr(model, "config", None)
    for name in names:
        owner, attr = (config, name[len("config."):]) if name.startswith("config.") else (model, name)
        value = getattr(owner, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def declared_vocab_size(model: Any) -> Optional[int]:
    """The output vocabulary a model declares (``vocab_size`` or ``config.vocab_size``), or None."""
    return _declared_int(model, "vocab_size", "config.vocab_size")


def declared_vocab_bound(model: Any) -> Optional[int]:
    """The largest vocabulary a model declares, counting a ``padded_vocab_size`` beside ``vocab_size`` (lit-gpt's
    SMDM puts its mask id 32000 at ``vocab_size``, inside the padded table), or None: ids at or past it are
    surely not the model's."""
    sizes = [n for n in (declared_vocab_size(model), _declared_int(model, "padded_vocab_size",
                                                                   "config.padded_vocab_size")) if n is not None]
    return max(sizes) if sizes else None


def declared_mask_id(model: Any) -> Optional[int]:
    """The mask token a model declares (``mask_id``, ``config.mask_id`` or ``config.mask_token_id``), or None."""
    return _declared_int(model, "mask_id", "config.mask_id", "config.mask_token_id")


def _warn_if_dropout_active(model: Any) -> None:
    """Sampling or scoring a module left in training mode with dropout in it draws from a perturbed model."""
    if isinstance(model, torch.nn.Module) and model.training and any(
            isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 and m.training for m in model.modules()):
        warnings.warn(f"{type(model).__name__} is in training mode with active dropout: its outputs are random; "
                      "call model.eval() before sampling or scoring", RuntimeWarning, stacklevel=4)


def logits_of(out: Any) -> torch.Tensor:
    """The logits tensor of a model output (tensor, ``.logits``, ``{"logits": ...}`` or tuple), e.g. float
    ``[B, L, V]``, returned with a unit-stride last dim (the ops read rows; a transposed model output is
    copied once here)."""
    t = _first_tensor(out, "logits", "logits")
    return t if t.dim() == 0 or t.stride(-1) == 1 else t.contiguous()


def hidden_of(out: Any) -> torch.Tensor:
    """The hidden states of a ``hidden()`` output (tensor, ``.last_hidden_state`` or tuple), e.g. float
    ``[B, L, D]``, as given."""
    return _first_tensor(out, "last_hidden_state", "hidden states")


def device_of(model: Any) -> Optional[torch.device]:
    """Where the model's weights live: ``model.device``, else its first parameter/buffer, else None."""
    dev = getattr(model, "device", None)
    if isinstance(dev, (torch.device, str)):
        return torch.device(dev)
    for attr in ("parameters", "buffers"):
        fn = getattr(model, attr, None)
        if callable(fn):
            try:
                t = next(iter(fn()), None)
            except TypeError:
                t = None
            if isinstance(t, torch.Tensor):
                return t.device
    return None


class Backbone:
    """What a sampler sees of a model: full logits, or logits of selected rows.

    Args:
        model: a :class:`DiffusionBackbone` (optionally a :class:`RowBackbone`).
        time_conditioned: pass ``sigma=`` to the model (and to ``hidden``).
        use_head: compute row logits through ``hidden``/``head`` when the model has
            both (default True); False always runs the full forward.

    Counters (plain ints, for progress bars and benchmarks): ``calls`` (model or
    hidden invocations), ``sequences`` (sequence-forwards, i.e. the sum of batch
    sizes over calls) and ``rows`` (logits rows of width V computed).
    """

    def __init__(self, model: Any, *, time_conditioned: bool = False, use_head: bool = True):
        if not callable(model):
            raise TypeError(f"model must be callable (model(x) -> logits [B, L, V]); got {type(model).__name__}")
        self.model = model
        self.time_conditioned = bool(time_conditioned)
        self.has_head = bool(use_head) and callable(getattr(model, "hidden", None)) and callable(
            getattr(model, "head", None)
        )
        self.calls = 0
        self.sequences = 0
        self.rows = 0
        _warn_if_dropout_active(model)
        fn = model.hidden if self.has_head else model  # what receives sigma
        if not self.time_conditioned and _requires_sigma(fn):
            raise TypeError(f"{type(model).__name__} requires sigma (a time-conditioned model): pass "
                            "time_conditioned=True so that the sampler gives it sigma = -log alpha_t")
        if self.time_conditioned:
            if not accepts_keyword(fn, "sigma", unknown=True):
                raise TypeError(f"time_conditioned=True passes sigma= to the model, but "
                                f"{type(model).__name__}.{'hidden' if self.has_head else 'forward'} takes no sigma")

    @property
    def has_cache(self) -> bool:
        """Whether the model offers the KV-cache capability (a callable ``new_cache``)."""
        return callable(getattr(self.model, "new_cache", None))

    @property
    def logits_shift(self) -> int:
        """1 for a next-token-aligned model (Dream: output i - 1 scores token i, ``models/shift.py``), else 0."""
        shift = getattr(self.model, "logits_shift", 0)
        return shift if shift in (0, 1) else 0

    @property
    def attention(self) -> Optional[str]:
        """The model's attention mode if it declares one (``config.attention``), else None."""
        value = getattr(getattr(self.model, "config", None), "attention", None)
        return value if isinstance(value, str) else None

    def new_cache(self, batch_size: int, max_len: Optional[int] = None, *,
                  attention_mask: Optional[torch.Tensor] = None) -> KVCacheLike:
        """A fresh KV cache of the model for ``batch_size`` rows of ``max_len`` positions;
        ``attention_mask`` ``[B, L]`` (1 = real token) is passed on only when given."""
        if not self.has_cache:
            raise TypeError(f"{type(self.model).__name__} offers no KV cache (no new_cache method)")
        if attention_mask is None:
            cache = self.model.new_cache(batch_size, max_len)
        elif accepts_keyword(self.model.new_cache, "attention_mask"):
            cache = self.model.new_cache(batch_size, max_len, attention_mask=attention_mask)
        else:
            raise TypeError(f"{type(self.model).__name__}.new_cache does not take attention_mask: a padded "
                            "batch cannot use its KV cache")
        missing = [m for m in _CACHE_METHODS if not callable(getattr(cache, m, None))]
        if missing:
            raise TypeError(f"model.new_cache() returned {type(cache).__name__}, which lacks {', '.join(missing)}")
        return cache

    def cache_rows(self, cache: KVCacheLike, x: torch.Tensor, start, seq: torch.Tensor, pos: torch.Tensor, *,
                   kv_len=None) -> torch.Tensor:
        """Feed chunk ``x`` ``[b, n]`` at positions ``start..start+n-1`` against ``cache`` and return
        the logits ``[N, V]`` of rows ``(seq[j], pos[j])``: ``seq``, ``pos`` int64 ``[N]``, ``pos`` relative to
        the chunk. ``start`` and ``kv_len`` are passed to the cache's ``hidden_block`` / ``forward_block``
        (a Python int, or a 0-dim int64 device tensor on the graph-safe path; ``kv_len`` None: ``start + n``).

        With ``cache.hidden_block`` and the model's ``head`` only those N rows go through the head.
        """
        hb = getattr(cache, "hidden_block", None)
        if self.has_head and callable(hb):
            h = hidden_of(hb(x, start, kv_len=kv_len))
            if h.dim() != 3 or h.shape[:2] != x.shape:
                raise ValueError(f"cache.hidden_block must return [b, n, D] = [{x.shape[0]}, {x.shape[1]}, D]; "
                                 f"got {tuple(h.shape)}")
            out = self.model.head(h[seq, pos])
        else:
            full = logits_of(cache.forward_block(x, start, kv_len=kv_len))
            if full.dim() != 3 or full.shape[:2] != x.shape:
                raise ValueError(f"cache.forward_block must return logits [b, n, V] = [{x.shape[0]}, {x.shape[1]}, V]; "
                                 f"got {tuple(full.shape)}")
            out = full[seq, pos]
        self._count(x, seq.numel())
        return out

    def cache_commit(self, cache: KVCacheLike, start, length: int) -> None:
        """Declare slots ``[start, start+length)`` of ``cache`` final (part of the prefix)."""
        cache.commit(start, length)

    @property
    def max_length(self) -> Optional[int]:
        """The model's context window if it declares one (``model.max_length``, or a Hugging Face config's
        ``max_position_embeddings``), else None."""
        return _declared_int(self.model, "max_length", "config.max_position_embeddings")

    @property
    def vocab_size(self) -> Optional[int]:
        """The model's output vocabulary if it declares one (``vocab_size`` or ``config.vocab_size``)."""
        return declared_vocab_size(self.model)

    @property
    def device(self) -> Optional[torch.device]:
        """The wrapped model's device (:func:`device_of`), None when it has no weights to tell."""
        return device_of(self.model)

    def _kwargs(self, sigma, attention_mask) -> dict:
        kw = {}
        if self.time_conditioned:
            if sigma is None:
                raise RuntimeError("a time-conditioned backbone needs sigma")  # sampler bug, not user input
            kw["sigma"] = sigma
        if attention_mask is not None:
            kw["attention_mask"] = attention_mask
        return kw

    def _count(self, x: torch.Tensor, rows: int) -> None:
        self.calls += 1
        self.sequences += x.shape[0]
        self.rows += rows

    def logits(self, x: torch.Tensor, *, sigma=None, attention_mask=None) -> torch.Tensor:
        """Full logits ``[n, L, V]`` (float) of token ids ``x`` ``[n, L]`` int64.

        ``sigma``: float32 ``[n]`` (time-conditioned models only); ``attention_mask``: ``[n, L]``.
        """
        out = logits_of(self.model(x, **self._kwargs(sigma, attention_mask)))
        if out.dim() != 3 or out.shape[:2] != x.shape or not out.dtype.is_floating_point:
            raise ValueError(
                f"model must return float logits of shape [B, L, V] = [{x.shape[0]}, {x.shape[1]}, V]; "
                f"got {out.dtype} {tuple(out.shape)}"
            )
        self._count(x, x.numel())
        return out

    def logits_at(
        self,
        x: torch.Tensor,
        seq: torch.Tensor,
        pos: torch.Tensor,
        *,
        sigma=None,
        attention_mask=None,
    ) -> torch.Tensor:
        """Logits ``[N, V]`` of rows ``(seq[j], pos[j])`` of the canvas ``x`` ``[n, L]``.

        ``seq``, ``pos``: int64 ``[N]`` indices into ``x``'s batch and length. With
        hidden/head only those N rows go through the head; otherwise the full
        forward runs and the rows are gathered.
        """
        kw = self._kwargs(sigma, attention_mask)
        if not self.has_head:
            return self.logits(x, sigma=sigma, attention_mask=attention_mask)[seq, pos]
        h = hidden_of(self.model.hidden(x, **kw))
        if h.dim() != 3 or h.shape[:2] != x.shape:
            raise ValueError(
                f"model.hidden must return [B, L, D] = [{x.shape[0]}, {x.shape[1]}, D]; got {tuple(h.shape)}"
            )
        out = self.model.head(h[seq, pos])
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != seq.numel():
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"model.head must map [N, D] to logits [N, V] with N = {seq.numel()}; got {shape}")
        self._count(x, seq.numel())
        return out
