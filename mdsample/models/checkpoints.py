"""Published checkpoints on :class:`~mdsample.models.transformer.Transformer`: LLaDA and Llama layouts.

mdsample's samplers run any backbone, but the KV-cache modes (Fast-dLLM's prefix / dual cache,
BD3-LM's block cache) and the CUDA-graph steps need a model offering ``new_cache``. These
converters put a published checkpoint's tensors, unchanged and uncopied, into the reference
Transformer, which offers it:

- :func:`from_llada`: LLaDA-8B (``LLaDAModelLM``, the OLMo-derived "llama" block: names
  ``model.transformer.{wte, blocks.i.{attn_norm, q_proj, k_proj, v_proj, attn_out, ff_norm,
  ff_proj, up_proj, ff_out}, ln_f, ff_out}``, SiLU(ff_proj) * up_proj, RMSNorm, half-split RoPE);
- :func:`from_llama`: Hugging Face ``LlamaForCausalLM``-layout models;
- :func:`from_qwen2`: ``Qwen2ForCausalLM``-layout models (biases on q/k/v), e.g. Dream-v0.

These architectures are Transformer's math (RMSNorm statistics in fp32 then the weight,
half-split RoPE, SwiGLU, no biases but Qwen2's on q/k/v); a checkpoint using an option outside it (biases, logit
scaling, RoPE scaling, other norms or activations, q/k norms) is refused with the option's name,
never silently approximated. The model is returned in eval mode on the checkpoint's device and dtype.

Example (Fast-dLLM's dual cache and CUDA graphs on LLaDA-8B-Instruct)::

    hf = AutoModel.from_pretrained("GSAI-ML/LLaDA-8B-Instruct", trust_remote_code=True, torch_dtype=torch.bfloat16)
    model = mdsample.models.from_llada(hf.cuda())
    out = mdsample.generate(model, prompt, steps=256, gen_length=256, block_length=32, threshold=0.9,
                            cache="dual", cuda_graph=mdsample.StepGraphs())
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from .transformer import Transformer, TransformerConfig

__all__ = ["from_llada", "llada_config", "llada_state_dict", "from_llama", "from_qwen2", "llama_state_dict",
           "transformer_config_from_llama", "llama_config"]

LLADA_MASK_ID = 126336

_LLADA_BLOCK = {
    "attn_norm": "attn_norm", "q_proj": "attn.wq", "k_proj": "attn.wk", "v_proj": "attn.wv",
    "attn_out": "attn.wo", "ff_norm": "mlp_norm", "ff_proj": "mlp.w_gate", "up_proj": "mlp.w_up",
    "ff_out": "mlp.w_down",
}
_LLAMA_BLOCK = {
    "self_attn.q_proj": "attn.wq", "self_attn.k_proj": "attn.wk", "self_attn.v_proj": "attn.wv",
    "self_attn.o_proj": "attn.wo", "mlp.gate_proj": "mlp.w_gate", "mlp.up_proj": "mlp.w_up",
    "mlp.down_proj": "mlp.w_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "mlp_norm",
}


def _rename(state_dict: dict, *, top: dict, layers: str, block: dict, skip=(), family: str) -> dict:
    """Transformer's names for a checkpoint's: ``top`` whole names, ``layers`` + ``i.module.leaf`` by ``block``."""
    out = {}
    for name, tensor in state_dict.items():
        if any(s in name for s in skip):
            continue
        if name in top:
            for target in (top[name] if isinstance(top[name], tuple) else (top[name],)):
                out[target] = tensor
            continue
        if name.startswith(layers):
            idx, sub = name[len(layers):].split(".", 1)
            module, leaf = sub.rsplit(".", 1)
            if module in block and leaf in ("weight", "bias"):
                out[f"layers.{idx}.{block[module]}.{leaf}"] = tensor
                continue
        raise KeyError(f"no counterpart for {family} parameter {name!r}")
    return out


_MISSING = object()


def _require(config: Any, family: str, **expected) -> None:
    """Refuse options outside Transformer's math, naming them (a field the config lacks is its default)."""
    for field, want in expected.items():
        got = getattr(config, field, _MISSING)
        if got is _MISSING:
            continue
        if not (want(got) if callable(want) else got == want):
            raise ValueError(f"{family} config has {field}={got!r}, which mdsample's Transformer does not implement")


def llada_config(config: Any, *, attention: str = "bidirectional", max_seq_len: Optional[int] = None,
                 mask_id: Optional[int] = LLADA_MASK_ID) -> TransformerConfig:
    """A :class:`TransformerConfig` from an ``LLaDAConfig`` (attributes ``d_model``, ``n_heads``, ...)."""
    _require(config, "LLaDA", block_type="llama", layer_norm_type="rms", activation_type="silu", rope=True,
             include_bias=False, include_qkv_bias=False, scale_logits=False, attention_layer_norm=False,
             input_emb_norm=False, rope_scaling=lambda v: v is None)
    heads = config.n_heads
    hidden = config.d_model
    vocab = getattr(config, "embedding_size", None) or config.vocab_size
    inter = getattr(config, "mlp_hidden_size", None) or getattr(config, "mlp_ratio", 4) * hidden
    return TransformerConfig(
        vocab_size=vocab, hidden_size=hidden, num_layers=config.n_layers, num_heads=heads,
        num_kv_heads=getattr(config, "n_kv_heads", None) or heads, intermediate_size=inter,
        max_seq_len=max_seq_len or config.max_sequence_length, rope_theta=float(config.rope_theta),
        norm_eps=float(getattr(config, "rms_norm_eps", 1e-5)), attention=attention,
        tie_embeddings=bool(getattr(config, "weight_tying", False)),
        rope_fp32=bool(getattr(config, "rope_full_precision", True)),  # LLaDAConfig's default
        mask_id=mask_id if mask_id is not None and mask_id < vocab else None)


def llada_state_dict(state_dict: dict[str, torch.Tensor], *, tied: bool = False) -> dict[str, torch.Tensor]:
    """Transformer's names for an LLaDA state dict (with or without the leading ``model.``)."""
    sd = {k[len("model."):] if k.startswith("model.") else k: v for k, v in state_dict.items()}
    top = {"transformer.wte.weight": ("embed.weight", "lm_head.weight") if tied else "embed.weight",
           "transformer.ln_f.weight": "norm.weight", "transformer.ff_out.weight": "lm_head.weight"}
    return _rename(sd, top=top, layers="transformer.blocks.", block=_LLADA_BLOCK, family="LLaDA")


def from_llada(model: Any, *, attention: str = "bidirectional", max_seq_len: Optional[int] = None) -> Transformer:
    """An LLaDA checkpoint (``LLaDAModelLM`` with ``.config`` and ``.state_dict()``) as a :class:`Transformer`.

    Args:
        model: the loaded Hugging Face LLaDA model (its tensors are shared, not copied).
        attention: ``"bidirectional"`` (LLaDA), or another mode for experiments.
        max_seq_len: RoPE table / default cache length (default: the config's ``max_sequence_length``).
    """
    config = llada_config(model.config, attention=attention, max_seq_len=max_seq_len)
    return Transformer.from_state_dict(config, llada_state_dict(model.state_dict(), tied=config.tie_embeddings))


def llama_state_dict(hf_state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Transformer's names for a Hugging Face ``LlamaForCausalLM`` state dict (rotary buffers dropped)."""
    top = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "norm.weight",
           "lm_head.weight": "lm_head.weight"}
    return _rename(hf_state_dict, top=top, layers="model.layers.", block=_LLAMA_BLOCK, skip=("rotary_emb",),
                   family="Llama")


def _rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def transformer_config_from_llama(config: Any, *, attention: str = "bidirectional", mask_id: Optional[int] = None,
                                  family: str = "Llama") -> TransformerConfig:
    """A :class:`TransformerConfig` from a ``transformers.LlamaConfig`` (or, ``family="Qwen2"``, a
    ``Qwen2Config``: the same fields, biases on q/k/v, no sliding window)."""
    params = getattr(config, "rope_parameters", None) or {}
    qwen2 = family == "Qwen2"
    # Other families reuse these parameter names with other math (Granite's multipliers, Helium's interleaved
    # RoPE, ...): only these model types, and Mistral only without its sliding window, are Transformer's.
    kind = str(getattr(config, "model_type", family)).lower()
    allowed = ("qwen2", "dream") if qwen2 else ("llama", "mistral")
    if kind not in allowed:
        raise ValueError(f"{family} layout: config has model_type={kind!r}, whose math may differ from "
                         f"{family}'s; from_{family.lower()} takes model_type in {allowed}")
    _require(config, family, sliding_window=lambda v: v is None or kind != "mistral", hidden_act="silu",
             rope_scaling=lambda v: v is None or v.get("rope_type", v.get("type")) == "default",
             head_dim=lambda v: v is None or v == config.hidden_size // config.num_attention_heads,
             **(dict(use_sliding_window=False) if qwen2 else dict(attention_bias=False, mlp_bias=False)))
    if params.get("rope_type", "default") != "default":
        raise ValueError(f"{family} config has rope_type={params['rope_type']!r}, which mdsample's Transformer "
                         "does not implement")
    return TransformerConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_layers=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        intermediate_size=config.intermediate_size, max_seq_len=config.max_position_embeddings,
        rope_theta=_rope_theta(config), norm_eps=float(config.rms_norm_eps), attention=attention,
        tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)), mask_id=_config_mask_id(config, mask_id),
        qkv_bias=qwen2)


def _config_mask_id(config: Any, mask_id: Optional[int]) -> Optional[int]:
    """``mask_id``, else the config's ``mask_token_id`` (Dream's 151666) when it is a token of the vocabulary."""
    if mask_id is not None:
        return mask_id
    declared = getattr(config, "mask_token_id", None)
    ok = isinstance(declared, int) and not isinstance(declared, bool) and 0 <= declared < config.vocab_size
    return declared if ok else None


def _from_hf_decoder(model: Any, config: TransformerConfig) -> Transformer:
    sd = llama_state_dict(model.state_dict())
    if config.tie_embeddings:
        sd.setdefault("lm_head.weight", sd["embed.weight"])
    return Transformer.from_state_dict(config, sd)


def from_llama(model: Any, *, attention: str = "bidirectional", mask_id: Optional[int] = None) -> Transformer:
    """A Hugging Face ``LlamaForCausalLM``-layout model as a :class:`Transformer` (tensors shared).

    Args:
        model: the loaded model (``.config``, ``.state_dict()``; tensors shared, not copied).
        attention: ``"bidirectional"`` (a masked diffusion model in this layout), ``"causal"`` or ``"block_causal"``.
        mask_id: the mask token the samplers default to; None: the config's ``mask_token_id`` if it has one.

    ``attention="causal"`` gives the Hugging Face model's logits (tested to float32 tolerance over the
    first thousands of positions; further out they part by ~1e-3 relative, since the RoPE angles here are
    computed in float64 and Hugging Face's in float32, ~2e-2 rad off at position 8192); a masked diffusion
    model trained in that layout uses ``"bidirectional"``.
    """
    return _from_hf_decoder(model, transformer_config_from_llama(model.config, attention=attention, mask_id=mask_id))


def from_qwen2(model: Any, *, attention: str = "bidirectional", mask_id: Optional[int] = None) -> Transformer:
    """A ``Qwen2ForCausalLM``-layout model (Qwen2 / Qwen2.5; Dream-v0 is this layout, bidirectional) as a
    :class:`Transformer` (tensors shared). Dream predicts token i at output i - 1: sample it through
    ``mdsample.models.shifted(from_qwen2(dream), 1)``, which also serves the KV-cache modes.

    Args: as :func:`from_llama`; Dream's config declares ``mask_token_id`` 151666, which becomes the
    samplers' default ``mask_id``."""
    return _from_hf_decoder(model, transformer_config_from_llama(model.config, attention=attention, mask_id=mask_id,
                                                                 family="Qwen2"))


def llama_config(config: TransformerConfig):
    """An equally shaped ``transformers.LlamaConfig`` (causal LM), for comparisons with HF."""
    from transformers import LlamaConfig

    if config.qkv_bias:
        raise ValueError("a config with qkv_bias is Qwen2's layout, not Llama's (no q/k/v biases there)")

    return LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads, max_position_embeddings=config.max_seq_len,
        rope_theta=config.rope_theta, rms_norm_eps=config.norm_eps, tie_word_embeddings=config.tie_embeddings,
        attention_bias=False, mlp_bias=False, hidden_act="silu", initializer_range=config.initializer_range,
    )
