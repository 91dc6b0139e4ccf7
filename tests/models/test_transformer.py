"""Reference transformer: presets, backbone protocol, and the three attention modes (uncached)."""
import pytest
import torch

import mdsample.models.transformer
from mdsample.models import PRESETS, Transformer, TransformerConfig, preset
from mdsample.models.transformer import apply_rope


def tiny(**kw):
    return Transformer(preset("tiny", **kw), seed=1)


def tokens(b, n, seed=0, vocab=128):
    return torch.randint(0, vocab, (b, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name, billions", [("mdlm_small", 0.19), ("smdm_1b", 1.10), ("llada_8b", 8.02),
                                           ("dream_7b", 7.62)])
def test_preset_shapes(name, billions):
    # Built on the meta device: the shape without the memory (LLaDA-8B is 32 GB in fp32).
    model = Transformer(preset(name), device="meta")
    count = sum(p.numel() for p in model.parameters())
    assert count == model.config.num_parameters()
    assert abs(count / 1e9 - billions) < 0.01


def test_published_shapes():
    s = preset("smdm_1b")  # TinyLlama
    assert (s.num_layers, s.hidden_size, s.num_heads, s.num_kv_heads, s.intermediate_size, s.vocab_size) == \
        (22, 2048, 32, 4, 5632, 32001)
    l8 = preset("llada_8b")
    assert (l8.num_layers, l8.hidden_size, l8.num_heads, l8.intermediate_size, l8.vocab_size, l8.mask_id,
            l8.rope_fp32) == (32, 4096, 32, 12288, 126464, 126336, True)  # LLaDA's rope_full_precision
    m = preset("mdlm_small")
    assert (m.num_layers, m.hidden_size, m.num_heads, m.vocab_size) == (12, 768, 12, 50258)
    d = preset("dream_7b")  # Qwen2.5-7B
    assert (d.num_layers, d.hidden_size, d.num_heads, d.num_kv_heads, d.intermediate_size, d.vocab_size,
            d.qkv_bias, d.mask_id) == (28, 3584, 28, 4, 18944, 152064, True, 151666)
    assert set(PRESETS) == {"tiny", "mdlm_small", "smdm_1b", "llada_8b", "dream_7b"}


@pytest.mark.parametrize("bad", [dict(attention="sliding"), dict(num_kv_heads=3), dict(hidden_size=66),
                                 dict(block_size=0), dict(mask_id=128)])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        preset("tiny", **bad)


def test_protocol_shapes_and_head():
    model = tiny()
    x = tokens(3, 10)
    with torch.no_grad():
        logits, h = model(x), model.hidden(x)
        assert logits.shape == (3, 10, 128) and h.shape == (3, 10, 64)
        torch.testing.assert_close(model.head(h.reshape(-1, 64)).view(3, 10, 128), logits, rtol=0, atol=0)
    assert model.max_length == 256
    with pytest.raises(TypeError):
        model(x.float())


def test_seeded_init_is_deterministic():
    a, b, c = tiny(), tiny(), Transformer(preset("tiny"), seed=2)
    x = tokens(1, 8)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
        assert not torch.equal(a(x), c(x))


def changed_positions(model, x, pos):
    """Which positions' logits move when token ``pos`` is changed."""
    y = x.clone()
    y[:, pos] = (y[:, pos] + 1) % model.config.vocab_size
    with torch.no_grad():
        diff = (model(x) - model(y)).abs().amax(dim=(0, 2))
    return diff > 1e-6


def test_attention_modes_dependency_structure():
    x = tokens(1, 12)
    causal = changed_positions(tiny(attention="causal"), x, 5)
    assert not causal[:5].any() and causal[5:].all()
    block = changed_positions(tiny(attention="block_causal", block_size=4), x, 5)  # block 1 = positions 4..7
    assert not block[:4].any() and block[4:].all()
    bidir = changed_positions(tiny(attention="bidirectional"), x, 11)
    assert bidir.all()


def test_block_causal_with_one_block_is_bidirectional():
    x = tokens(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(tiny(attention="block_causal", block_size=16)(x), tiny()(x), rtol=0, atol=0)


def test_block_causal_with_block_one_is_causal():
    x = tokens(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(tiny(attention="block_causal", block_size=1)(x), tiny(attention="causal")(x),
                                   rtol=1e-5, atol=1e-5)


def test_too_long_input_is_refused():
    with pytest.raises(ValueError, match="max_seq_len"):
        tiny()(tokens(1, 257))


def test_tied_embeddings():
    model = Transformer(preset("tiny", tie_embeddings=True))
    assert model.lm_head.weight is model.embed.weight
    assert sum(p.numel() for p in model.parameters()) == model.config.num_parameters()


def test_config_is_frozen_and_replace_validates():
    cfg = preset("tiny")
    assert isinstance(cfg, TransformerConfig)
    with pytest.raises(Exception):
        cfg.hidden_size = 8
    with pytest.raises(ValueError):
        cfg.replace(attention="nope")


@pytest.mark.parametrize("attention", ["bidirectional", "block_causal", "causal"])
def test_grouped_query_attention_without_sdpa_enable_gqa(monkeypatch, attention):
    """torch 2.4's SDPA has no ``enable_gqa``: the kv heads are then repeated, which must give the same
    logits as SDPA's own broadcast (the tiny preset has 4 query heads on 2 kv heads)."""
    import mdsample.models.transformer as tr

    m = Transformer.from_preset("tiny", attention=attention, seed=0).double().eval()
    assert m.config.num_heads != m.config.num_kv_heads
    x = torch.randint(0, 127, (2, 12), generator=torch.Generator().manual_seed(0))
    broadcast = m(x)
    monkeypatch.setattr(tr, "_SDPA_GQA", False)
    torch.testing.assert_close(m(x), broadcast, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("attention", ["causal", "block_causal"])
def test_no_query_row_of_a_padded_mask_is_empty(attention):
    """A left-padded causal batch has padding queries whose keys are all padding. Such an all-False SDPA row
    is NaN on torch 2.4, and the next layer spreads it to every real row (0 weight x NaN value): every row
    must keep a key, and the real rows must keep exactly the keys they had."""
    from mdsample.models.transformer import attention_allowed, key_padding_mask

    pos = torch.arange(8)
    allowed = attention_allowed(attention, 4, pos, pos)
    am = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1], [1] * 8])
    mask = key_padding_mask(am, 2, 8, allowed)
    assert mask.any(-1).all()
    real = am.bool()
    torch.testing.assert_close(mask[:, 0][real], (allowed & real[:, None, :])[real])


def test_rope_fp32_rotates_in_float32_and_rounds_once():
    cos, sin = mdsample.models.transformer.rope_tables(8, 5, 10000.0)
    x = torch.randn(2, 3, 5, 8, generator=torch.Generator().manual_seed(0)).bfloat16()
    rot = torch.cat([-x[..., 4:], x[..., :4]], -1)
    want = (x.float() * cos + rot.float() * sin).bfloat16()
    got = apply_rope(x, cos, sin, fp32=True)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)
    assert not torch.equal(apply_rope(x, cos, sin), want)  # bf16 products round three times
    assert torch.equal(apply_rope(x.float(), cos, sin, fp32=True), apply_rope(x.float(), cos, sin))


def test_rope_fp32_reaches_the_attention(monkeypatch):
    seen = []

    def spy(x, cos, sin, *, fp32=False):
        seen.append(fp32)
        return rope(x, cos, sin, fp32=fp32)

    rope = mdsample.models.transformer.apply_rope
    monkeypatch.setattr(mdsample.models.transformer, "apply_rope", spy)
    for flag in (True, False):
        seen.clear()
        model = tiny(rope_fp32=flag)
        model(torch.zeros(1, 4, dtype=torch.long))
        assert seen == [flag] * (2 * model.config.num_layers)


def test_dtype_round_trip_keeps_the_rope_tables_exact():
    model = tiny()
    cos = model.rope_cos.clone()
    model.to(torch.bfloat16).to(torch.float32)
    assert model.rope_cos.dtype == torch.float32 and torch.equal(model.rope_cos, cos)
