"""Reference LLaMA-style transformer: the backbone mdsample's samplers and benchmarks run on.

One module, three attention modes (``TransformerConfig.attention``):

- ``"bidirectional"``: every position sees every position (MDLM, SMDM, LLaDA, Dream);
- ``"block_causal"``: positions are cut into blocks of ``block_size`` from each row's first
  real token (position 0 without padding); a query sees every key of its own block and of
  earlier blocks (BD3-LM);
- ``"causal"``: a query sees keys at or before its position (the KV-cache AR twin).

Architecture: token embedding -> ``num_layers`` x [RMSNorm -> GQA attention with RoPE ->
residual, RMSNorm -> SwiGLU MLP -> residual] -> final RMSNorm -> linear head. Attention
goes through ``torch.nn.functional.scaled_dot_product_attention`` so that the fused
kernels (flash / memory-efficient) are used where the mask allows. Weights are randomly
initialised (normal, std ``initializer_range``); nothing is downloaded. The numerics follow
Hugging Face's ``LlamaForCausalLM`` (RMSNorm in fp32, half-split RoPE) so that a Llama
checkpoint maps onto it one to one (:mod:`mdsample.models.checkpoints`).

Backbone protocol (DESIGN.md §6):

- ``model(x)``: ``x`` LongTensor ``[B, L]`` -> logits ``[B, L, V]``;
- ``model.hidden(x)`` -> final-normed hidden states ``[B, L, D]``;
- ``model.head(h)``: ``[..., D]`` -> ``[..., V]``, so a sampler computes logits only for the
  rows it samples;
- ``model.new_cache(batch_size, max_len)`` -> :class:`mdsample.models.kv_cache.KVCache`,
  the static KV cache with ``prefill`` / ``forward_block`` / ``commit``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import _validate as V


def _sdpa_broadcasts_kv_heads() -> bool:
    """Whether SDPA takes ``enable_gqa`` (torch 2.5 on). Asked of SDPA itself, once: a version check would
    send pre-release builds such as 2.5.0a0 down the slower path. Without it the kv heads are repeated."""
    q, kv = torch.zeros(1, 2, 1, 1), torch.zeros(1, 1, 1, 1)
    try:
        F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)
    except TypeError:
        return False
    return True


_SDPA_GQA = _sdpa_broadcasts_kv_heads()

ATTENTION_MODES = ("bidirectional", "block_causal", "causal")


@dataclass(frozen=True)
class TransformerConfig:
    """Shape and attention mode of a :class:`Transformer`.

    ``head_dim = hidden_size // num_heads``; ``num_heads`` must be a multiple of
    ``num_kv_heads`` (grouped-query attention; equal = plain multi-head attention).
    ``max_seq_len`` bounds the RoPE table and the default KV-cache length.
    ``block_size`` is read only in ``"block_causal"`` mode. ``qkv_bias`` adds biases to the q/k/v
    projections (Qwen2's layout, hence Dream's). ``rope_fp32`` rotates half-precision queries and keys
    in fp32 and rounds once (LLaDA's ``rope_full_precision``; Llama and Qwen2 rotate in the model
    dtype). ``mask_id`` is the mask token
    of the model family the preset imitates: the default ``mask_id`` of the samplers that have one.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_seq_len: int = 2048
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    attention: str = "bidirectional"
    block_size: int = 16
    tie_embeddings: bool = False
    initializer_range: float = 0.02
    mask_id: Optional[int] = None
    qkv_bias: bool = False
    rope_fp32: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                     "intermediate_size", "max_seq_len", "block_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"TransformerConfig.{name} must be a positive int; got {value!r}")
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"TransformerConfig.attention must be one of {ATTENTION_MODES}; got {self.attention!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even for RoPE")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.mask_id is not None and not 0 <= self.mask_id < self.vocab_size:
            raise ValueError(f"mask_id must lie in [0, vocab_size={self.vocab_size}); got {self.mask_id}")

    @property
    def head_dim(self) -> int:
        """Per-head width: ``hidden_size // num_heads``."""
        return self.hidden_size // self.num_heads

    def replace(self, **changes) -> "TransformerConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def num_parameters(self) -> int:
        """Parameter count, computed from the shape (no tensors allocated)."""
        d, kv = self.hidden_size, self.num_kv_heads * self.head_dim
        per_layer = d * d * 2 + d * kv * 2 + 3 * d * self.intermediate_size + 2 * d + (d + 2 * kv) * self.qkv_bias
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.num_layers * per_layer + d + head


# Published shapes, random weights. MDLM-small is a DiT (GELU MLP of 4 x 768); here it is the
# same depth/width/heads with a SwiGLU MLP of the same 3072 width, which is what matters for
# the cost of sampling. SMDM-1.1B is TinyLlama's shape; LLaDA-8B is LLaDA-8B-Base's config.
# Dream-7B is Qwen2.5-7B's (Dream samples it shifted: mdsample.models.shifted).
PRESETS: dict[str, dict] = {
    "tiny": dict(vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                 intermediate_size=176, max_seq_len=256, mask_id=127, block_size=4),
    "mdlm_small": dict(vocab_size=50258, hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=12,
                       intermediate_size=3072, max_seq_len=1024, rope_theta=10000.0, mask_id=50257),
    "smdm_1b": dict(vocab_size=32001, hidden_size=2048, num_layers=22, num_heads=32, num_kv_heads=4,
                    intermediate_size=5632, max_seq_len=2048, rope_theta=10000.0, mask_id=32000),
    "llada_8b": dict(vocab_size=126464, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=32,
                     intermediate_size=12288, max_seq_len=4096, rope_theta=500000.0, rope_fp32=True,
                     mask_id=126336),
    # Dream-v0-7B continues Qwen2.5-7B: its shape, q/k/v biases, mask 151666 (4096: a working
    # context for the RoPE table and default cache, not a weight).
    "dream_7b": dict(vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28, num_kv_heads=4,
                     intermediate_size=18944, max_seq_len=4096, rope_theta=1000000.0, norm_eps=1e-6,
                     qkv_bias=True, mask_id=151666),
}


def preset(name: str, **overrides) -> TransformerConfig:
    """The config of a preset (``tiny``, ``mdlm_small``, ``smdm_1b``, ``llada_8b``, ``dream_7b``) with overrides,
    e.g. ``preset("mdlm_small", attention="block_causal", block_size=4)``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return TransformerConfig(**{**PRESETS[name], **overrides})


def attention_allowed(mode: str, block_size: int, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """Which keys each query may see, by position.

    Args:
        mode: one of :data:`ATTENTION_MODES`.
        block_size: int >= 1, the block length of ``"block_causal"`` (unused by the other modes).
        q_pos: int64 ``[..., n]`` positions of the queries.
        k_pos: int64 ``[..., S]`` positions of the keys (leading dims broadcast with ``q_pos``'s).

    Returns:
        bool ``[..., n, S]``, True where query i may attend to key j (SDPA's boolean-mask convention).
    """
    q, k = q_pos[..., :, None], k_pos[..., None, :]
    if mode == "causal":
        return k <= q
    if mode == "block_causal":
        return torch.div(k, block_size, rounding_mode="floor") <= torch.div(q, block_size, rounding_mode="floor")
    return torch.ones(torch.broadcast_shapes(q.shape, k.shape), dtype=torch.bool, device=q_pos.device)


def first_real(attention_mask: torch.Tensor) -> torch.Tensor:
    """int64 ``[B]``: each row's first real position of ``attention_mask`` ``[B, L]`` (1 = real token; 0 for a row
    with none), on the device (an argmax: no host read)."""
    return (attention_mask != 0).int().argmax(1)


def key_padding_mask(attention_mask: torch.Tensor, batch: int, keys: int,
                     mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Bool ``[B, 1, n, S]``: ``mask`` (bool ``[n, S]`` or ``[B, 1, n, S]``, or None = all allowed) with the
    padding keys of ``attention_mask`` (``[B, >= S]``, 1 = real token; its first ``S`` columns are the keys)
    hidden; a query row left with no key (a padding query) sees every key instead, so that no row is NaN."""
    if attention_mask.dim() != 2 or attention_mask.shape[0] != batch or attention_mask.shape[1] < keys:
        raise ValueError(f"attention_mask must be [B={batch}, {keys}] (1 = real token); "
                         f"got {tuple(attention_mask.shape)}")
    real = (attention_mask[:, :keys] != 0)[:, None, None, :]
    out = real if mask is None else real & mask
    # A padding query of a causal mode may see no key at all (left padding: keys before it are padding
    # too). SDPA gives such a row NaN on torch 2.4 (0 from 2.5 on), and in the next layer 0 weight x NaN
    # value is NaN for every real query: let those rows see every key. Their outputs are padding's, never
    # read; a real query always sees itself, so no real row changes.
    return out | ~out.any(-1, keepdim=True)


def rope_tables(head_dim: int, max_len: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin ``[max_len, head_dim]`` (fp32) of the half-split rotary embedding.

    Angles are computed in float64 and rounded once: in fp32, ``position * inv_freq``
    already loses ~5e-4 rad at position 4096, which the long LLaDA canvases reach.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim))
    angles = torch.arange(max_len, dtype=torch.float64, device=device)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, fp32: bool = False) -> torch.Tensor:
    """Rotate ``x`` ``[B, H, n, Dh]`` by the angles of its positions (``cos``/``sin`` ``[n, Dh]`` fp32), in
    ``x``'s dtype, or with ``fp32`` in float32 at least and rounded back to ``x``'s dtype once."""
    y = x.float() if fp32 and x.element_size() < 4 else x
    half = y.shape[-1] // 2
    rotated = torch.cat([-y[..., half:], y[..., :half]], dim=-1)
    return (y * cos.to(y.dtype) + rotated * sin.to(y.dtype)).to(x.dtype)


class RMSNorm(nn.Module):
    """``weight * x / rms(x)``, the statistics in fp32 whatever the input dtype (as Llama does,
    because bf16 sums of squares over 4096 features lose the low bits)."""

    def __init__(self, dim: int, eps: float, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


# A per-layer K/V hook: (layer index, post-RoPE k [B, Hkv, n, Dh], v) -> the keys and values
# the queries attend to ([B, Hkv, S, Dh] each). The KV cache supplies it; None = no cache.
KVHook = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE; the K/V hook lets a cache store and extend keys."""

    def __init__(self, cfg: TransformerConfig, layer_idx: int, device=None, dtype=None):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.rope_fp32 = cfg.rope_fp32
        d, kv = cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim
        kw = dict(device=device, dtype=dtype)
        self.wq = nn.Linear(d, d, bias=cfg.qkv_bias, **kw)
        self.wk = nn.Linear(d, kv, bias=cfg.qkv_bias, **kw)
        self.wv = nn.Linear(d, kv, bias=cfg.qkv_bias, **kw)
        self.wo = nn.Linear(d, d, bias=False, **kw)

    def forward(self, x, cos, sin, mask, is_causal, kv_hook: Optional[KVHook]):
        """``x`` ``[B, n, D]`` -> ``[B, n, D]``; ``mask`` bool ``[n, S]`` or None."""
        b, n, _ = x.shape
        q = self.wq(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin, fp32=self.rope_fp32), apply_rope(k, cos, sin, fp32=self.rope_fp32)
        if kv_hook is not None:
            # Keys are cached after RoPE: a cached key never needs rotating again.
            k, v = kv_hook(self.layer_idx, k, v)
        gqa = {}
        if self.num_heads != self.num_kv_heads:
            if _SDPA_GQA:  # SDPA broadcasts the kv heads instead of materialising repeat_interleave copies
                gqa = dict(enable_gqa=True)
            else:
                k = k.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)
                v = v.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, **gqa)
        return self.wo(o.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``: ``[B, n, D]`` -> ``[B, n, D]``."""

    def __init__(self, cfg: TransformerConfig, device=None, dtype=None):
        super().__init__()
        kw = dict(bias=False, device=device, dtype=dtype)
        self.w_gate = nn.Linear(cfg.hidden_size, cfg.intermediate_size, **kw)
        self.w_up = nn.Linear(cfg.hidden_size, cfg.intermediate_size, **kw)
        self.w_down = nn.Linear(cfg.intermediate_size, cfg.hidden_size, **kw)

    def forward(self, x):
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    """Pre-norm transformer layer: ``h + attn(norm(h))`` then ``h + mlp(norm(h))``."""

    def __init__(self, cfg: TransformerConfig, layer_idx: int, device=None, dtype=None):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, device, dtype)
        self.attn = Attention(cfg, layer_idx, device, dtype)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, device, dtype)
        self.mlp = SwiGLU(cfg, device, dtype)

    def forward(self, h, cos, sin, mask, is_causal, kv_hook):
        h = h + self.attn(self.attn_norm(h), cos, sin, mask, is_causal, kv_hook)
        return h + self.mlp(self.mlp_norm(h))


class Transformer(nn.Module):
    """LLaMA-style backbone implementing mdsample's backbone protocol.

    Args:
        config: a :class:`TransformerConfig` (see :func:`preset`).
        device, dtype: where and in what dtype to build the weights; ``device="meta"``
            builds the shape only (e.g. to count the LLaDA-8B parameters without 32 GB).
        seed: seed of the random initialisation (same seed, same weights on a device).
    """

    def __init__(self, config: TransformerConfig, *, device=None, dtype=None, seed: int = 0):
        super().__init__()
        self.config = cfg = config
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size, device=device, dtype=dtype)
        self.layers = nn.ModuleList(Block(cfg, i, device, dtype) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, device, dtype)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False, device=device, dtype=dtype)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self._rope_on(device)
        self.reset_parameters(seed)

    def _rope_on(self, device) -> None:
        """(Re)build the RoPE tables on ``device``: not persistent, they are a function of the config."""
        cfg = self.config
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta,
                               device=None if str(device) == "meta" else device)
        self.register_buffer("rope_cos", cos.to(device), persistent=False)
        self.register_buffer("rope_sin", sin.to(device), persistent=False)

    def _apply(self, fn, recurse=True):
        # .to(dtype) / .half() cast buffers too: tables rounded to bf16 would stay rounded after a
        # cast back to fp32, so a cast table is rebuilt in fp32 on its device. Others are left as they
        # are (a no-op .to() keeps their storage, and with it a StepGraphs entry's captures).
        super()._apply(fn, recurse)
        if self.rope_cos.dtype != torch.float32:
            self._rope_on(self.rope_cos.device)
        return self

    @classmethod
    def from_state_dict(cls, config: TransformerConfig, state_dict: dict[str, torch.Tensor]) -> "Transformer":
        """A Transformer holding ``state_dict``'s tensors themselves (no copy, no random init first: an
        8B checkpoint is not allocated twice); every weight must be present (strict)."""
        model = cls(config, device="meta")
        model.load_state_dict(state_dict, strict=True, assign=True)
        if config.tie_embeddings:
            model.lm_head.weight = model.embed.weight
        model._rope_on(model.embed.weight.device)
        return model.eval()

    @classmethod
    def from_preset(cls, name: str, *, device=None, dtype=None, seed: int = 0, **overrides) -> "Transformer":
        """``Transformer(preset(name, **overrides), device=..., dtype=..., seed=...)``."""
        return cls(preset(name, **overrides), device=device, dtype=dtype, seed=seed)

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """Normal(0, initializer_range) for matrices and biases, ones for norm weights; seeded per device."""
        generators: dict[torch.device, torch.Generator] = {}
        for name, p in self.named_parameters():
            if p.device.type == "meta":
                continue
            if name.endswith("norm.weight"):
                p.fill_(1.0)
                continue
            gen = generators.get(p.device)
            if gen is None:
                gen = generators[p.device] = torch.Generator(device=p.device).manual_seed(seed)
            p.normal_(0.0, self.config.initializer_range, generator=gen)

    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The weights' (and so the hidden states' and logits') dtype."""
        return self.embed.weight.dtype

    @property
    def max_length(self) -> int:
        """The context window (protocol attribute read by MDLM's semi-AR strides)."""
        return self.config.max_seq_len

    def run(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: Optional[torch.Tensor],
            is_causal: bool = False, kv_hook: Optional[KVHook] = None) -> torch.Tensor:
        """The layer stack on tokens at given positions: the building block of the cached forward.

        Args:
            x: LongTensor ``[B, n]`` of ids in ``[0, vocab_size)``; outside it a ValueError names ``x`` on
                the CPU, while on CUDA the embedding's device-side assert fires (checking there would cost every
                step a host read; the samplers check their prompts once instead).
            cos, sin: ``[n, Dh]`` RoPE tables at the tokens' absolute positions.
            mask: bool ``[n, S]`` or ``[B, 1, n, S]`` (True = may attend) over the ``S`` keys the hook returns,
                or None.
            is_causal: SDPA's top-left causal mask instead of ``mask`` (only when ``S == n``).
            kv_hook: see :data:`KVHook`; None attends to the ``n`` tokens themselves.

        Returns:
            final-normed hidden states ``[B, n, D]``.
        """
        try:
            h = self.embed(x)
        except IndexError:  # CPU only (on CUDA a device-side assert): reading the ids costs the step path nothing
            V.tokens_in_vocab("x", x, self.config.vocab_size)
            raise
        for layer in self.layers:
            h = layer(h, cos, sin, mask, is_causal, kv_hook)
        return self.norm(h)

    def _check_tokens(self, x: torch.Tensor, name: str = "x") -> None:
        if not isinstance(x, torch.Tensor) or x.dtype not in (torch.int64, torch.int32) or x.dim() != 2:
            raise TypeError(f"{name} must be an int64 LongTensor [B, L]; got "
                            f"{getattr(x, 'dtype', type(x))} of shape {tuple(getattr(x, 'shape', ()))}")

    def hidden(self, x: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Uncached forward: tokens ``[B, L]`` (positions 0..L-1) -> final-normed hidden ``[B, L, D]``.

        ``attention_mask``: ``[B, L]`` (bool or int, 1 = real token) or None. Padding keys are
        hidden from every real query; RoPE positions stay absolute (LLaDA's convention for left-padded
        prompts). RoPE attention sees only relative positions, and the causal order and block grid
        are counted from each row's first real token, so the real tokens compute what they compute
        alone in every attention mode, which is also what Hugging Face's and Dream's real-token
        position count gives (tested); the outputs at padding positions are computed but meaningless.
        """
        self._check_tokens(x)
        n = x.shape[1]
        if n > self.config.max_seq_len:
            raise ValueError(f"x has {n} positions; the model's max_seq_len is {self.config.max_seq_len}")
        mode, mask, is_causal = self.config.attention, None, False
        if mode == "causal":
            is_causal = True
        elif mode == "block_causal" and n > self.config.block_size:
            pos = torch.arange(n, device=x.device)
            mask = attention_allowed(mode, self.config.block_size, pos, pos)
        if attention_mask is not None:
            if getattr(attention_mask, "shape", None) != x.shape:  # key_padding_mask takes wider ones (caches)
                raise ValueError(f"attention_mask must be [B, L] = {list(x.shape)}, like x; got "
                                 f"{list(getattr(attention_mask, 'shape', ()))}")
            if mode != "bidirectional":
                # Positions from each row's first real token (argmax: no host read): at absolute positions,
                # padding that is not whole blocks would regroup a row's real tokens into other blocks.
                pos = (torch.arange(n, device=x.device) - first_real(attention_mask)[:, None])[:, None]
                mask, is_causal = attention_allowed(mode, self.config.block_size, pos, pos), False
            mask = key_padding_mask(attention_mask, x.shape[0], n, mask)
        return self.run(x, self.rope_cos[:n], self.rope_sin[:n], mask, is_causal)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Output projection: hidden ``[..., D]`` (e.g. ``[N, D]`` selected rows) -> logits ``[..., V]``."""
        return self.lm_head(h)

    def forward(self, x: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Tokens ``[B, L]`` -> logits ``[B, L, V]`` (uncached); ``attention_mask`` as in :meth:`hidden`."""
        return self.head(self.hidden(x, attention_mask))

    def new_cache(self, batch_size: int, max_len: Optional[int] = None, *, attention_mask=None, device=None,
                  dtype=None):
        """A static :class:`~mdsample.models.kv_cache.KVCache` for ``batch_size`` rows of up to
        ``max_len`` positions (default ``config.max_seq_len``); ``attention_mask`` ``[B, <= max_len]``
        hides padding keys (:meth:`KVCache.set_key_mask`)."""
        from .kv_cache import KVCache  # kv_cache imports this module; import at call time

        cache = KVCache(self, batch_size, max_len, device=device, dtype=dtype)
        cache.set_key_mask(attention_mask)
        return cache
