"""Backbones: the reference LLaMA-style transformer (bidirectional / block-causal / causal),
its static KV cache, and the KV-cache autoregressive twin (DESIGN.md §6)."""
from .transformer import (
    ATTENTION_MODES,
    PRESETS,
    Transformer,
    TransformerConfig,
    attention_allowed,
    llama_config,
    llama_state_dict,
    preset,
)
from .kv_cache import KVCache
from .ar import generate_ar, generate_ar_uncached
from .protocol import Backbone, CacheBackbone, DiffusionBackbone, KVCacheLike, RowBackbone, device_of, hidden_of, logits_of
from .hf import HFBackbone, HFRowBackbone, hf_backbone
