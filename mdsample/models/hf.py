"""Adapters from Hugging Face style models to the backbone protocol (models/protocol.py).

A Hugging Face model can be passed to a sampler as is: it is called as
``model(x, attention_mask=...)`` and its ``.logits`` are used, so every step computes
the full ``[B, L, V]``. :func:`hf_backbone` wraps it so that samplers compute logits
only for the rows they draw from, when the model has the usual split

    logits = lm_head(model.model(input_ids).last_hidden_state)

(LLaMA, Qwen, Mistral, Dream, ... ``*ForCausalLM`` / ``*ForMaskedLM`` with ``.model``
and ``.lm_head``), including Gemma-2's final logit soft-capping. Models without that
split (LLaDA's ``LLaDAModelLM``, BERT's prediction head with its extra transform) get
a logits-only adapter, which is still correct, just without the row shortcut.

``logits_shift=1`` serves Dream-style models, whose output at position ``i - 1``
predicts token ``i`` (position 0 keeps its own output, as Dream's sampler does).
``mask_format="dream"`` hands the model a padded batch the way Dream's own sampler does:
``attention_mask="full"`` when nothing is padded, else a bool ``[B, 1, L, L]`` mask (real
query x real key) with ``position_ids`` counted over the real tokens (pads at 1); the
default ``"2d"`` passes the ``[B, L]`` mask as is.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from .protocol import accepts_keyword, declared_mask_id, hidden_of, logits_of
from .shift import shift_rows

__all__ = ["HFBackbone", "HFRowBackbone", "hf_backbone", "MASK_FORMATS"]

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


class HFRowBackbone(HFBackbone):
    """Adapter with ``hidden``/``head`` for models with ``.model`` (body) and ``.lm_head``."""

    def __init__(self, model: Any, *, logits_shift: int = 0, max_length: Optional[int] = None,
                 mask_format: str = "2d"):
        super().__init__(model, logits_shift=logits_shift, max_length=max_length, mask_format=mask_format)
        body, lm_head = getattr(model, "model", None), getattr(model, "lm_head", None)
        if not (callable(body) and callable(lm_head)):
            raise TypeError("HFRowBackbone needs a model with a callable .model (body) and .lm_head")
        self.body, self.lm_head = body, lm_head
        self._body_extra = {"use_cache": False} if accepts_keyword(body, "use_cache") else {}
        config = getattr(model, "config", None)
        # What models apply after lm_head in their forward, which the row path must apply too: Gemma-2's
        # soft-capping, Granite's logits_scaling (a divisor), Cohere's logit_scale (a factor).
        self.softcap = getattr(config, "final_logit_softcapping", None)
        self.scale = 1.0 / float(getattr(config, "logits_scaling", None) or 1.0) * float(
            getattr(config, "logit_scale", None) or 1.0)

    def hidden(self, x: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Last hidden states ``[B, L, D]`` of ``x`` ``[B, L]`` (shifted like the logits)."""
        out = self.body(input_ids=x, **self._mask_kwargs(attention_mask), **self._body_extra)
        return shift_rows(hidden_of(out), self.logits_shift)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, V]`` of hidden rows ``h`` ``[N, D]``."""
        logits = self.lm_head(h)
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def hf_backbone(model: Any, *, logits_shift: int = 0, use_head: bool = True,
                max_length: Optional[int] = None, mask_format: str = "2d") -> HFBackbone:
    """Wrap a Hugging Face model for mdsample's samplers.

    Returns an :class:`HFRowBackbone` (row logits through ``lm_head``) when the model has
    ``.model`` and ``.lm_head`` and ``use_head`` is true, else a logits-only :class:`HFBackbone`.

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
    has_split = callable(getattr(model, "model", None)) and callable(getattr(model, "lm_head", None))
    cls = HFRowBackbone if (use_head and has_split) else HFBackbone
    return cls(model, logits_shift=logits_shift, max_length=max_length, mask_format=mask_format)
