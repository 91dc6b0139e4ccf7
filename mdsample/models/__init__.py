"""Backbones: the reference LLaMA-style transformer (bidirectional / block-causal / causal),
its static KV cache, the KV-cache autoregressive twin (DESIGN.md §6), and converters that load
LLaDA / Llama checkpoints into it (checkpoints.py)."""
from .transformer import (
    ATTENTION_MODES,
    PRESETS,
    Transformer,
    TransformerConfig,
    attention_allowed,
    preset,
)
from .checkpoints import (from_llada, from_llama, from_qwen2, llada_config, llada_state_dict, llama_config,
                          llama_state_dict)
from .shift import Shifted, shifted
from .kv_cache import KVCache
from .ar import generate_ar, generate_ar_uncached
from .protocol import Backbone, CacheBackbone, DiffusionBackbone, KVCacheLike, RowBackbone, device_of, hidden_of, logits_of
from .hf import HFBackbone, HFRowBackbone, RowPathMismatch, hf_backbone
