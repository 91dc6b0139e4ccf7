"""Adapters from Hugging Face style models to the backbone protocol (models/protocol.py).

A Hugging Face model can be passed to a sampler as is: it is called as
``model(x, attention_mask=...)`` and its ``.logits`` are used, so every step computes
the full ``[B, L, V]``. :func:`hf_backbone` wraps it so that samplers compute logits
only for the rows they draw from, when the model has the usual split

    logits = lm_head(model.model(input_ids).last_hidden_state)

(LLaMA, Qwen, Mistral, Dream, ... ``*ForCausalLM`` / ``*ForMaskedLM`` with ``.model``
and ``.lm_head``), including what the known families apply after ``lm_head`` (soft-capping,
logit scales and multipliers, a final bias). Models without that split (LLaDA's
``LLaDAModelLM``, BERT's prediction head with its extra transform) get a logits-only
adapter, which is still correct, just without the row shortcut. A model whose forward does
something else after ``lm_head`` is caught by a probe at wrapping time (below).

``logits_shift=1`` serves Dream-style models, whose output at position ``i - 1``
predicts token ``i`` (position 0 keeps its own output, as Dream's sampler does).
``mask_format="dream"`` hands the model a padded batch the way Dream's own sampler does:
``attention_mask="full"`` when nothing is padded, else a bool ``[B, 1, L, L]`` mask (real
query x real key) with ``position_ids`` counted over the real tokens (pads at 1); the
default ``"2d"`` passes the ``[B, L]`` mask as is.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional

import torch

from .protocol import accepts_keyword, declared_mask_id, hidden_of, logits_of
from .shift import shift_rows

__all__ = ["HFBackbone", "HFRowBackbone", "RowPathMismatch", "hf_backbone", "MASK_FORMATS"]

MASK_FORMATS = ("2d", "dream")


class HFBackbone:
    """Logits-only adapter: ``backbone(x, attention_mask=None) -> [B, L, V]``.

    Args:
        model: a Hugging Face model (its output has ``.logits``).
        logits_shift: 0, or 1 for Dream-style next-token-aligned outputs.
        max_length: context window (default ``config.max_position_embeddings`` when set).
        mask_format: how a ``[B, L]`` attention mask reaches the model (module docstring).
    """

    def __init__(self, model: Any, *, logits_shift: int = 0, max_length: Optional[int] = None,
                 mask_format: str = "2d"):
        if not callable(model):
            raise TypeError(f"model must be a callable Hugging Face model; got {type(model).__name__}")
        if isinstance(logits_shift, bool) or logits_shift not in (0, 1):
            raise ValueError(f"logits_shift must be 0 or 1; got {logits_shift!r}")
        if mask_format not in MASK_FORMATS:
            raise ValueError(f"mask_format must be one of {MASK_FORMATS}; got {mask_format!r}")
        self.mask_format = mask_format
        self.hf_model = model
        self.logits_shift = logits_shift
        config = getattr(model, "config", None)
        if max_length is None:
            max_length = getattr(config, "max_position_embeddings", None)
        self.max_length = max_length if isinstance(max_length, int) else None
        vocab = getattr(config, "vocab_size", None)
        self.vocab_size = vocab if isinstance(vocab, int) else None
        self.mask_id = declared_mask_id(model)  # the samplers' default mask_id, as for the bare model
        # Sampling never reuses the model's own KV cache; building one each call only costs time.
        self._extra = {"use_cache": False} if accepts_keyword(model, "use_cache") else {}

    @property
    def device(self) -> Optional[torch.device]:
        """The Hugging Face model's ``device``, None when it has none."""
        dev = getattr(self.hf_model, "device", None)
        return torch.device(dev) if dev is not None else None

    def _mask_kwargs(self, attention_mask: Optional[torch.Tensor]) -> dict:
        """The attention keywords of a model call for a ``[B, L]`` mask (1 = real token) or None."""
        if self.mask_format == "2d":
            return {"attention_mask": attention_mask}
        if attention_mask is None or bool((attention_mask != 0).all()):
            return {"attention_mask": "full"}
        real = attention_mask != 0
        positions = (real.long().cumsum(-1) - 1).masked_fill(~real, 1)
        return {"attention_mask": real[:, None, None, :] & real[:, None, :, None], "position_ids": positions}

    def __call__(self, x: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits ``[B, L, V]`` of token ids ``x`` ``[B, L]``; ``attention_mask`` ``[B, L]`` or None."""
        out = self.hf_model(input_ids=x, **self._mask_kwargs(attention_mask), **self._extra)
        return shift_rows(logits_of(out), self.logits_shift)


class RowPathMismatch(ValueError):
    """A model whose forward computes its logits otherwise than ``lm_head(model(x))`` (HFRowBackbone's probe)."""


class HFRowBackbone(HFBackbone):
    """Adapter with ``hidden``/``head`` for models with ``.model`` (body) and ``.lm_head``.

    At construction the row path is probed against the model's own forward on 8 tokens (one small forward
    of each, without gradients; skipped for a model in training mode, whose dropout would part them, or on
    the meta device): a relative difference beyond the logits dtype's rounding (4 eps, at least 1e-5) means
    the forward applies something after ``lm_head`` that this adapter does not, and raises a ValueError.
    """

    def __init__(self, model: Any, *, logits_shift: int = 0, max_length: Optional[int] = None,
                 mask_format: str = "2d"):
        super().__init__(model, logits_shift=logits_shift, max_length=max_length, mask_format=mask_format)
        body, lm_head = getattr(model, "model", None), getattr(model, "lm_head", None)
        if not (callable(body) and callable(lm_head)):
            raise TypeError("HFRowBackbone needs a model with a callable .model (body) and .lm_head")
        self.body, self.lm_head = body, lm_head
        self._body_extra = {"use_cache": False} if accepts_keyword(body, "use_cache") else {}
        config = getattr(model, "config", None)
        # What models apply after lm_head in their forward, which the row path must apply too: Gemma-2's and
        # RecurrentGemma's soft-capping, Granite's logits_scaling (a divisor), Cohere's logit_scale and
        # Falcon-H1's lm_head_multiplier (factors), BART's final_logits_bias. The probe catches the others.
        self.softcap = getattr(config, "final_logit_softcapping", None) or getattr(config, "logits_soft_cap", None)
        self.scale = 1.0 / float(getattr(config, "logits_scaling", None) or 1.0) * float(
            getattr(config, "logit_scale", None) or 1.0) * float(getattr(body, "lm_head_multiplier", None) or 1.0)
        bias = getattr(model, "final_logits_bias", None)
        self.bias = bias if isinstance(bias, torch.Tensor) else None
        self._probe()

    def _probe(self) -> None:
        """Raise if the row path's logits part from the model's own forward on a short input (class docstring)."""
        if getattr(self.hf_model, "training", False) or (self.device is not None and self.device.type == "meta"):
            return
        n = min(8, self.max_length or 8)
        x = torch.arange(n, device=self.device).unsqueeze(0) % (self.vocab_size or n)
        with torch.no_grad():
            full = logits_of(self.hf_model(input_ids=x, **self._mask_kwargs(None), **self._extra))
            rows = self.head(hidden_of(self.body(input_ids=x, **self._mask_kwargs(None), **self._body_extra)))
        tol = max(4 * torch.finfo(full.dtype).eps, 1e-5) if full.is_floating_point() else 1e-5
        if rows.shape != full.shape:
            raise RowPathMismatch(f"{type(self.hf_model).__name__}'s lm_head(model(x)) has shape {tuple(rows.shape)}, "
                                  f"its forward's logits {tuple(full.shape)}: wrap it with hf_backbone(model, "
                                  "use_head=False) (full logits)")
        full, rows = full.double(), rows.double()
        size = float(full.norm())
        gap = float((rows - full).norm()) / size if size else float(rows.norm())
        if not gap <= tol:
            raise RowPathMismatch(f"{type(self.hf_model).__name__}'s forward does not compute lm_head(model(x)) as the "
                                  f"row path does (relative difference {gap:.3g} on a probe of {n} tokens, beyond "
                                  f"the rounding {tol:.3g}): it applies something after lm_head that mdsample does "
                                  "not know; wrap it with hf_backbone(model, use_head=False) (full logits)")

    def hidden(self, x: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Last hidden states ``[B, L, D]`` of ``x`` ``[B, L]`` (shifted like the logits); ``attention_mask``
        None or ``[B, L]`` (1 = real token), passed to the model as its ``attention_mask``."""
        out = self.body(input_ids=x, **self._mask_kwargs(attention_mask), **self._body_extra)
        return shift_rows(hidden_of(out), self.logits_shift)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, V]`` of hidden rows ``h`` ``[N, D]``."""
        logits = self.lm_head(h)
        if self.bias is not None:
            logits = logits + self.bias
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def hf_backbone(model: Any, *, logits_shift: int = 0, use_head: bool = True,
                max_length: Optional[int] = None, mask_format: str = "2d") -> HFBackbone:
    """Wrap a Hugging Face model for mdsample's samplers.

    Returns an :class:`HFRowBackbone` (row logits through ``lm_head``) when the model has
    ``.model`` and ``.lm_head`` and ``use_head`` is true, else a logits-only :class:`HFBackbone`; also that,
    with a warning, when the row path's probe finds the model's forward computing something else.

    Args:
        model: the Hugging Face model (``model(input_ids [B, L] int64, attention_mask=...) .logits [B, L, V]``);
            its ``config`` gives the context (``max_position_embeddings``), ``vocab_size`` and mask token
            (``mask_token_id``), which the wrapper declares in turn.
        logits_shift: 0, or 1 for Dream-style outputs (output ``i - 1`` scores token ``i``).
        use_head: compute logits only for the rows a sampler draws from, through ``model.model`` and
            ``model.lm_head`` (when the model has both).
        max_length: the context window, overriding the config's.
        mask_format: ``"2d"`` or ``"dream"``: how a ``[B, L]`` attention mask reaches the model (module
            docstring).
    """
    kw = dict(logits_shift=logits_shift, max_length=max_length, mask_format=mask_format)
    if use_head and callable(getattr(model, "model", None)) and callable(getattr(model, "lm_head", None)):
        try:
            return HFRowBackbone(model, **kw)
        except RowPathMismatch as e:  # correct logits first: the full-logits adapter, said out loud
            warnings.warn(f"{e.args[0].split(': wrap it')[0]}; hf_backbone falls back to the full-logits adapter "
                          "(pass use_head=False to say so and silence this)", stacklevel=2)
    return HFBackbone(model, **kw)
