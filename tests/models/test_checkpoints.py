"""Checkpoint converters: LLaDA's and Llama's layouts on mdsample's Transformer give their models' logits.

The LLaDA reference below is written from the published architecture (module names and math of
LLaDA-8B's "llama" block, listed in mdsample/models/checkpoints.py), not from its code: an
independent spelling of the same network that the converter must reproduce.
"""
import math
import types

import pytest
import torch
from torch import nn

import requires
import mdsample
from mdsample.models import Transformer, from_llada, from_llama, llada_state_dict


class _Norm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight, self.eps = nn.Parameter(1.0 + 0.1 * torch.randn(d)), eps

    def forward(self, x):
        y = x.float()
        return self.weight * (y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class _LLaDABlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, hd = c.d_model, c.d_model // c.n_heads
        lin = lambda i, o: nn.Linear(i, o, bias=False)  # noqa: E731
        self.attn_norm, self.ff_norm = _Norm(d, c.rms_norm_eps), _Norm(d, c.rms_norm_eps)
        self.q_proj, self.k_proj, self.v_proj = lin(d, d), lin(d, c.n_kv_heads * hd), lin(d, c.n_kv_heads * hd)
        self.attn_out = lin(d, d)
        self.ff_proj, self.up_proj, self.ff_out = lin(d, c.mlp_hidden_size), lin(d, c.mlp_hidden_size), lin(
            c.mlp_hidden_size, d)


class TinyLLaDA(nn.Module):
    """LLaDA's layout (``model.transformer.{wte, blocks, ln_f, ff_out}``) with its forward spelled out."""

    def __init__(self, **over):
        super().__init__()
        torch.manual_seed(0)
        c = dict(d_model=32, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=48, vocab_size=50,
                 embedding_size=50, max_sequence_length=64, rope_theta=500000.0, rms_norm_eps=1e-5,
                 weight_tying=False, block_type="llama", layer_norm_type="rms", activation_type="silu", rope=True,
                 include_bias=False, include_qkv_bias=False, scale_logits=False)
        c.update(over)
        self.config = types.SimpleNamespace(**c)
        t = nn.ModuleDict(dict(wte=nn.Embedding(c["embedding_size"], c["d_model"]),
                               blocks=nn.ModuleList(_LLaDABlock(self.config) for _ in range(c["n_layers"])),
                               ln_f=_Norm(c["d_model"], c["rms_norm_eps"])))
        if not c["weight_tying"]:
            t["ff_out"] = nn.Linear(c["d_model"], c["embedding_size"], bias=False)
        self.model = nn.Module()
        self.model.transformer = t
        self.vocab_size = c["embedding_size"]

    def forward(self, x, attention_mask=None):
        c, t = self.config, self.model.transformer
        B, T = x.shape
        H, Hkv, hd = c.n_heads, c.n_kv_heads, c.d_model // c.n_heads
        inv = 1.0 / (c.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        ang = torch.outer(torch.arange(T, dtype=torch.float32), inv)
        ang = torch.cat([ang, ang], -1)

        def rope(z):
            z1, z2 = z[..., : hd // 2], z[..., hd // 2:]
            return z * ang.cos().to(z.dtype) + torch.cat([-z2, z1], -1) * ang.sin().to(z.dtype)

        h = t.wte(x)
        for blk in t.blocks:
            a = blk.attn_norm(h)
            q = rope(blk.q_proj(a).view(B, T, H, hd).transpose(1, 2))
            k = rope(blk.k_proj(a).view(B, T, Hkv, hd).transpose(1, 2)).repeat_interleave(H // Hkv, 1)
            v = blk.v_proj(a).view(B, T, Hkv, hd).transpose(1, 2).repeat_interleave(H // Hkv, 1)
            scores = q @ k.transpose(-1, -2) / math.sqrt(hd)  # bidirectional
            if attention_mask is not None:  # LLaDA: padding keys hidden, positions stay absolute
                scores = scores.masked_fill(~attention_mask.bool()[:, None, None, :], -math.inf)
            att = torch.softmax(scores, -1) @ v
            h = h + blk.attn_out(att.transpose(1, 2).reshape(B, T, c.d_model))
            m = blk.ff_norm(h)
            h = h + blk.ff_out(nn.functional.silu(blk.ff_proj(m)) * blk.up_proj(m))
        h = t.ln_f(h)
        return h @ t.wte.weight.T if c.weight_tying else t.ff_out(h)


def _tokens(B=3, T=11, V=50, seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("over", [dict(), dict(n_kv_heads=2), dict(weight_tying=True)],
                         ids=["mha", "gqa", "tied"])
@torch.no_grad()
def test_llada_layout_gives_llada_logits(over):
    ref = TinyLLaDA(**over).double().eval()
    model = from_llada(ref)
    assert model.config.attention == "bidirectional" and model.config.rope_theta == 500000.0
    x = _tokens()
    torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)
    # the tensors are the checkpoint's own (an 8B model is not copied)
    assert model.embed.weight.data_ptr() == ref.model.transformer.wte.weight.data_ptr()
    assert model.layers[1].mlp.w_up.weight.data_ptr() == ref.model.transformer.blocks[1].up_proj.weight.data_ptr()


@torch.no_grad()
def test_llada_checkpoint_runs_the_cached_samplers():
    """The converted model with the dual cache refreshed every step is LLaDA's own uncached generate."""
    ref = TinyLLaDA().double().eval()
    model = from_llada(ref)
    prompt = _tokens(B=2, T=5, V=49, seed=3)
    kw = dict(steps=8, gen_length=8, block_length=4, mask_id=49)
    want = mdsample.generate(ref, prompt, **kw)
    assert torch.equal(mdsample.generate(model, prompt, cache="dual", refresh_every=1, **kw), want)
    assert mdsample.generate(model, prompt, cache="prefix", **kw).shape == want.shape
    # a left-padded batch (LLaDA's attention_mask), cached and not
    am = torch.ones_like(prompt)
    am[1, :3] = 0
    padded = prompt.masked_fill(am == 0, 0)
    want = mdsample.generate(ref, padded, attention_mask=am, **kw)
    assert torch.equal(mdsample.generate(model, padded, attention_mask=am, **kw), want)
    assert torch.equal(mdsample.generate(model, padded, attention_mask=am, cache="dual", refresh_every=1, **kw), want)


@pytest.mark.parametrize("field,value", [("include_qkv_bias", True), ("scale_logits", True),
                                         ("block_type", "sequential"), ("activation_type", "gelu"),
                                         ("layer_norm_type", "default")])
def test_llada_options_outside_the_math_are_refused(field, value):
    ref = TinyLLaDA(**{field: value})
    with pytest.raises(ValueError, match=field):
        from_llada(ref)


def test_unknown_parameters_are_named():
    sd = TinyLLaDA().state_dict()
    sd["model.transformer.blocks.0.q_norm.weight"] = torch.ones(32)
    with pytest.raises(KeyError, match="q_norm"):
        llada_state_dict(sd)


@pytest.fixture(scope="module")
def transformers():
    return requires.transformers()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("tie", [False, True])
@torch.no_grad()
def test_hf_decoder_layouts_give_hf_logits(transformers, family, tie):
    """Llama, and Qwen2 (Dream-v0's layout, biases on q/k/v): the causal twin gives HF's logits."""
    config, model_cls, convert = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, from_llama),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, mdsample.models.from_qwen2)}[family]
    cfg = config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64, rope_theta=1000.0, tie_word_embeddings=tie)
    torch.manual_seed(0)
    hf = model_cls(cfg).double().eval()
    if family == "qwen2":
        for layer in hf.model.layers:  # HF initialises biases at 0: make them count
            layer.self_attn.q_proj.bias.normal_()
            layer.self_attn.k_proj.bias.normal_()
    model = convert(hf, attention="causal")
    assert isinstance(model, Transformer) and model.config.rope_theta == 1000.0
    assert model.config.qkv_bias == (family == "qwen2")
    assert model.config.num_parameters() == sum(p.numel() for p in model.parameters())
    x = _tokens(V=40)
    torch.testing.assert_close(model(x), hf(x).logits, rtol=1e-6, atol=1e-6)
    assert convert(hf).config.attention == "bidirectional"


def test_llama_options_outside_the_math_are_refused(transformers):
    cfg = transformers.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, attention_bias=True)
    with pytest.raises(ValueError, match="attention_bias"):
        from_llama(transformers.LlamaForCausalLM(cfg))


def test_llama_rope_scaling_is_refused(transformers):
    cfg = transformers.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, rope_scaling={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(ValueError, match="rope_scaling"):
        from_llama(transformers.LlamaForCausalLM(cfg))


def _small(config_cls, **over):
    return config_cls(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, max_position_embeddings=64, **over)


@pytest.mark.parametrize("family,over", [("GraniteForCausalLM", dict(logits_scaling=8.0, embedding_multiplier=2.0)),
                                         ("HeliumForCausalLM", dict(head_dim=8)),
                                         ("MistralForCausalLM", dict(sliding_window=4, num_key_value_heads=2))])
def test_other_families_in_llamas_layout_are_refused(transformers, family, over):
    """Same parameter names, other math (multipliers, interleaved RoPE, a sliding window): refused by name."""
    cls = getattr(transformers, family, None)
    if cls is None:
        pytest.skip(f"transformers has no {family}")
    hf = cls(_small(getattr(transformers, family.replace("ForCausalLM", "Config")), **over))
    with pytest.raises(ValueError, match="model_type|sliding_window"):
        from_llama(hf)


@torch.no_grad()
def test_mistral_without_sliding_window_is_llama(transformers):
    torch.manual_seed(0)
    hf = transformers.MistralForCausalLM(_small(transformers.MistralConfig, sliding_window=None,
                                                num_key_value_heads=2)).double().eval()
    x = _tokens(V=40)
    torch.testing.assert_close(from_llama(hf, attention="causal")(x), hf(x).logits, rtol=1e-6, atol=1e-6)


_SMALLEST = dict(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1, max_position_embeddings=64)
_RECURRENT = dict(_SMALLEST, num_hidden_layers=2, lru_width=16, attention_window_size=8,
                  block_types=["recurrent", "attention"], logits_soft_cap=2.0)
_FALCON_H1 = dict(_SMALLEST, mamba_d_ssm=16, mamba_n_heads=2, mamba_d_head=8, mamba_d_state=8, mamba_n_groups=1,
                  mamba_chunk_size=8, lm_head_multiplier=3.0)
_BART = dict(vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
             decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64)


def _hf_model(transformers, family, over, *, config=None):
    """A tiny random float64 ``family`` (a transformers class name) in eval mode, or a skip: ``_small`` with
    ``over``, or the whole ``config`` keywords."""
    cls = getattr(transformers, family, None)
    if cls is None:
        pytest.skip(f"transformers has no {family}")
    config_cls = getattr(transformers, family.replace("ForCausalLM", "Config").replace("ForConditionalGeneration",
                                                                                        "Config"))
    torch.manual_seed(0)
    hf = cls(config_cls(**config) if config else _small(config_cls, **over)).double().eval()
    bias = getattr(hf, "final_logits_bias", None)
    if bias is not None:
        bias.normal_()  # zeros at init: make it matter
    if family.startswith("RecurrentGemma"):
        hf.lm_head.weight.data.mul_(50)  # logits beyond the soft cap
    return hf


@pytest.mark.parametrize("family,over", [("GraniteForCausalLM", dict(logits_scaling=8.0)),
                                         ("CohereForCausalLM", dict(logit_scale=0.0625)),
                                         ("RecurrentGemmaForCausalLM", _RECURRENT),
                                         ("FalconH1ForCausalLM", _FALCON_H1),
                                         ("BartForConditionalGeneration", _BART)])
@torch.no_grad()
def test_row_logits_keep_the_models_logit_scaling(transformers, family, over):
    """hf_backbone's row path applies what the model's forward applies after lm_head. Before, the last three
    lost RecurrentGemma's soft cap (58 against the cap 2), Falcon-H1's multiplier and BART's final bias."""
    hf = _hf_model(transformers, family, over, config=over if "vocab_size" in over else None)
    adapter = mdsample.models.hf_backbone(hf)
    assert isinstance(adapter, mdsample.models.HFRowBackbone)
    b = mdsample.models.Backbone(adapter)
    x = _tokens(V=40)
    full = hf(input_ids=x).logits
    seq, pos = torch.tensor([0, 1, 2]), torch.tensor([3, 0, 10])
    torch.testing.assert_close(b.logits_at(x, seq, pos), full[seq, pos], rtol=1e-6, atol=1e-6)


@torch.no_grad()
def test_a_forward_the_row_path_does_not_know_is_caught(transformers):
    """HyperCLOVA X multiplies by logits_scaling where Granite divides: the row path gave logits 16x off at
    logits_scaling 4, unseen. The probe at wrapping time catches it: HFRowBackbone raises, hf_backbone warns
    and returns the full-logits adapter, whose logits are the model's."""
    hf = _hf_model(transformers, "HyperCLOVAXForCausalLM", {}, config=dict(_SMALLEST, logits_scaling=4.0))
    with pytest.raises(mdsample.models.RowPathMismatch, match=r"HyperCLOVAXForCausalLM's forward .* use_head=False"):
        mdsample.models.HFRowBackbone(hf)
    with pytest.warns(UserWarning, match="falls back to the full-logits adapter"):
        adapter = mdsample.models.hf_backbone(hf)
    assert type(adapter) is mdsample.models.HFBackbone
    x = _tokens(V=40)
    torch.testing.assert_close(adapter(x), hf(input_ids=x).logits, rtol=0, atol=0)
    hf.train()  # dropout would part the two paths: no probe, the caller's risk (samplers run eval models)
    assert isinstance(mdsample.models.HFRowBackbone(hf), mdsample.models.HFRowBackbone)


def test_qwen2_sliding_window_is_refused(transformers):
    cfg = transformers.Qwen2Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, use_sliding_window=True)
    with pytest.raises(ValueError, match="use_sliding_window"):
        mdsample.models.from_qwen2(transformers.Qwen2ForCausalLM(cfg))


def test_declared_mask_token_becomes_the_samplers_default(transformers):
    """Dream's config declares mask_token_id: from_qwen2 and hf_backbone carry it, so generate does not fall
    back to LLaDA's 126336 (inside Dream's vocabulary: a plain token taken for the mask)."""
    cfg = transformers.Qwen2Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2)
    cfg.mask_token_id = 39
    hf = transformers.Qwen2ForCausalLM(cfg).eval()
    model = mdsample.models.from_qwen2(hf)
    assert model.config.mask_id == 39 and mdsample.models.from_qwen2(hf, mask_id=38).config.mask_id == 38
    prompt = _tokens(B=1, T=3, V=39)
    kw = dict(steps=2, gen_length=4, block_length=4)
    for m in (model, mdsample.models.shifted(model), mdsample.models.hf_backbone(hf, logits_shift=1)):
        out = mdsample.generate(m, prompt, **kw)
        assert not (out == 39).any()
        assert torch.equal(out, mdsample.generate(m, prompt, mask_id=39, **kw))
    cfg.mask_token_id = 40  # not a token of the vocabulary: not taken
    assert mdsample.models.from_qwen2(transformers.Qwen2ForCausalLM(cfg)).config.mask_id is None
