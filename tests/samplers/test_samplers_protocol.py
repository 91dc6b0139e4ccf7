"""The backbone protocol and the Hugging Face adapters (small random models built from configs, no downloads)."""
from types import SimpleNamespace

import pytest
import torch

import requires
import mdsample
from mdsample.models import Backbone, HFBackbone, HFRowBackbone, device_of, hf_backbone, logits_of

transformers = requires.transformers()


def test_logits_of_accepts_the_usual_outputs():
    t = torch.zeros(1, 2, 3)
    assert logits_of(t) is t
    assert logits_of(SimpleNamespace(logits=t)) is t
    assert logits_of({"logits": t}) is t
    assert logits_of((t, None)) is t
    with pytest.raises(TypeError, match="model must return logits"):
        logits_of("nope")


def test_backbone_checks_shapes_and_counts():
    model = lambda x: torch.zeros(x.shape[0], x.shape[1], 5)  # noqa: E731
    b = Backbone(model)
    x = torch.zeros(3, 4, dtype=torch.long)
    assert b.logits(x).shape == (3, 4, 5) and not b.has_head
    rows = b.logits_at(x, torch.tensor([0, 2]), torch.tensor([1, 3]))
    assert rows.shape == (2, 5)
    assert (b.calls, b.sequences, b.rows) == (2, 6, 24)
    with pytest.raises(ValueError, match=r"\[B, L, V\]"):
        Backbone(lambda x: torch.zeros(3, 5)).logits(x)

    class BadHidden:
        def __call__(self, x):
            return torch.zeros(x.shape[0], x.shape[1], 5)

        def hidden(self, x):
            return torch.zeros(x.shape[0], 2)

        def head(self, h):
            return h

    with pytest.raises(ValueError, match="hidden"):
        Backbone(BadHidden()).logits_at(x, torch.tensor([0]), torch.tensor([0]))
    assert device_of(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert device_of(lambda x: x) is None


def test_time_conditioning_needs_a_model_taking_sigma():
    """time_conditioned=True is refused by name for a model whose signature has no sigma (not the model's own
    TypeError mid-sampling); **kwargs, or a signature Python cannot read, are let through."""
    with pytest.raises(TypeError, match="time_conditioned=True.*takes no sigma"):
        Backbone(lambda x: x, time_conditioned=True)
    with pytest.raises(TypeError, match="Transformer.hidden takes no sigma"):
        mdsample.sample_mdlm(mdsample.models.Transformer.from_preset("tiny"), batch_size=1, length=8, steps=2,
                             mask_id=127, time_conditioned=True)
    Backbone(lambda x, *, sigma: x, time_conditioned=True)
    with pytest.raises(TypeError, match="requires sigma.*time_conditioned=True"):  # the converse, named up front
        Backbone(lambda x, *, sigma: x)
    Backbone(lambda x, sigma=None: x)  # an optional sigma is the model's business
    Backbone(lambda x, **kw: x, time_conditioned=True)
    Backbone(torch.nn.Identity(), time_conditioned=False)


def test_hf_row_adapter_matches_full_logits(llama):
    adapter = hf_backbone(llama)
    assert isinstance(adapter, HFRowBackbone) and adapter.max_length == 64 and adapter.vocab_size == 40
    b = Backbone(adapter)
    assert b.has_head
    x = torch.randint(0, 40, (3, 9), generator=torch.Generator().manual_seed(1))
    full = llama(input_ids=x).logits
    seq, pos = torch.tensor([0, 1, 2, 2]), torch.tensor([8, 0, 3, 4])
    assert torch.allclose(b.logits_at(x, seq, pos), full[seq, pos], atol=1e-10)
    assert b.rows == 4
    assert torch.allclose(adapter(x), full)


def test_generate_with_hf_adapter_equals_raw_model(llama):
    g = torch.Generator().manual_seed(2)
    p = torch.randint(1, 39, (2, 5), generator=g)
    am = torch.ones(2, 5, dtype=torch.long)
    p[1, :2], am[1, :2] = 0, 0  # left padding
    kw = dict(steps=8, gen_length=8, block_length=4, mask_id=39, attention_mask=am)
    raw = mdsample.generate(llama, p, **kw)
    fast = mdsample.generate(hf_backbone(llama), p, **kw)
    assert torch.equal(raw, fast)
    assert bool((fast[:, 5:] != 39).all())


def test_sample_mdlm_with_hf_adapter(llama):
    adapter = hf_backbone(llama)
    out = mdsample.sample_mdlm(adapter, batch_size=3, length=12, mask_id=39, steps=6, seed=1)
    ref = mdsample.sample_mdlm(HFBackbone(llama), batch_size=3, length=12, mask_id=39, steps=6, seed=1)
    assert out.shape == (3, 12) and torch.equal(out, ref)
    strided = mdsample.sample_mdlm(adapter, batch_size=2, length=80, mask_id=39, steps=2, stride=16)
    assert strided.shape == (2, 80)  # window = max_position_embeddings = 64


def test_logits_shift_for_dream_style_models(llama):
    x = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(3))
    full = llama(input_ids=x).logits
    shifted = hf_backbone(llama, logits_shift=1)
    want = torch.cat([full[:, :1], full[:, :-1]], 1)
    assert torch.allclose(shifted(x), want)
    b = Backbone(shifted)
    assert torch.allclose(b.logits_at(x, torch.tensor([0, 1]), torch.tensor([0, 5])), want[[0, 1], [0, 5]])
    with pytest.raises(ValueError, match="logits_shift"):
        hf_backbone(llama, logits_shift=2)
    with pytest.raises(ValueError, match="mask_format"):
        hf_backbone(llama, mask_format="4d")


def test_models_without_the_split_get_a_logits_adapter():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    bert = BertForMaskedLM(BertConfig(vocab_size=30, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=32)).eval()
    adapter = hf_backbone(bert)
    assert type(adapter) is HFBackbone and not Backbone(adapter).has_head
    out = mdsample.generate(adapter, torch.tensor([[1, 2, 3]]), steps=4, gen_length=4, block_length=4, mask_id=29)
    assert out.shape == (1, 7)
    with pytest.raises(TypeError, match="lm_head"):
        HFRowBackbone(bert)


def _left_padded(pad):
    """Two prompts, the second left-padded by 3 with ``pad``, and their attention mask."""
    from test_samplers_generate import MASK
    g = torch.Generator().manual_seed(8)
    p = torch.randint(1, MASK, (2, 5), generator=g)
    am = torch.ones(2, 5, dtype=torch.long)
    p[1, :3], am[1, :3] = pad, 0
    return p, am


@pytest.mark.parametrize("call", ["generate", "generate_cached", "sample_dream", "sample_smdm"])
def test_padding_that_holds_the_mask_id_is_left_alone(call):
    """SMDM pads with its mask id: padding (attention_mask 0) is not filled, comes back as given, and the
    tokens equal a run padded with another id."""
    from test_samplers_generate import MASK, TinyLM
    model = TinyLM(seed=2)
    runs = {
        "generate": lambda p, am: mdsample.generate(model, p, attention_mask=am, steps=4, gen_length=4, block_length=4,
                                                    mask_id=MASK, temperature=1.0),
        "generate_cached": lambda p, am: mdsample.generate(
            mdsample.models.Transformer.from_preset("tiny", vocab_size=12, mask_id=MASK, seed=1), p, attention_mask=am,
            steps=4, gen_length=4, block_length=4, temperature=1.0, cache="dual"),
        "sample_dream": lambda p, am: mdsample.sample_dream(model, p, attention_mask=am, max_new_tokens=4, steps=4,
                                                            mask_id=MASK, temperature=1.0, alg="entropy"),
        "sample_smdm": lambda p, am: mdsample.sample_smdm(model, p, length=9, steps=4, mask_id=MASK, alg="greedy"),
    }
    p_mask, am = _left_padded(MASK)
    p_zero, _ = _left_padded(0)
    if call == "sample_smdm":  # SMDM has no attention mask: its padding is part of the canvas, and filled
        out = runs[call](p_mask, None)
        assert bool((out != MASK).all())
        return
    out, ref = runs[call](p_mask, am), runs[call](p_zero, am)
    assert torch.equal(out[1, :3], p_mask[1, :3]) and bool((out[:, 5:] != MASK).all())
    assert torch.equal(out[:, 3:], ref[:, 3:]) and torch.equal(out[0], ref[0])


def test_the_models_own_mask_id_is_the_default():
    """generate / sample_dream / sample_smdm without mask_id use the one the model declares."""
    model = mdsample.models.Transformer.from_preset("tiny", vocab_size=40, mask_id=33, seed=1)
    p = torch.randint(0, 33, (1, 3), generator=torch.Generator().manual_seed(0))
    outs = [mdsample.generate(model, p, steps=2, gen_length=4, block_length=4),
            mdsample.sample_dream(model, p, max_new_tokens=4, steps=2, alg="entropy"),
            mdsample.sample_smdm(model, p, length=7, steps=2, alg="greedy")]
    for out, named in zip(outs, [mdsample.generate(model, p, steps=2, gen_length=4, block_length=4, mask_id=33),
                                 mdsample.sample_dream(model, p, max_new_tokens=4, steps=2, alg="entropy", mask_id=33),
                                 mdsample.sample_smdm(model, p, length=7, steps=2, alg="greedy", mask_id=33)]):
        assert torch.equal(out, named)
    with pytest.raises(ValueError, match="mask_id"):  # no declared id: the upstream constant, outside V = 12
        mdsample.generate(lambda x: torch.zeros(*x.shape, 12), p, steps=2, gen_length=4, block_length=4)


def test_a_transposed_logits_output_is_read_as_logits():
    """A model whose logits are not unit-stride in V (a transposed view) samples like its contiguous copy."""
    from test_samplers_generate import MASK, TinyLM
    model = TinyLM()
    view = lambda x, **kw: model(x, **kw).transpose(1, 2).contiguous().transpose(1, 2)  # noqa: E731
    view.vocab_size = model.vocab_size
    for fn in (lambda m: mdsample.sample_mdlm(m, batch_size=2, length=6, steps=3, mask_id=MASK),
               lambda m: mdsample.likelihood(m, torch.ones(2, 6, dtype=torch.long), mc_samples=2,
                                             mask_id=MASK).log_likelihood):
        assert torch.equal(fn(view), fn(lambda x, **kw: model(x, **kw)))


def test_dropout_left_active_warns():
    drop = torch.nn.Sequential(torch.nn.Embedding(12, 12), torch.nn.Dropout(0.5))
    with pytest.warns(RuntimeWarning, match="eval"):
        mdsample.sample_mdlm(drop, batch_size=1, length=4, steps=2, mask_id=11)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mdsample.sample_mdlm(drop.eval(), batch_size=1, length=4, steps=2, mask_id=11)
