"""The AR twin: KV-cache incremental decoding equals the uncached loop and HF generate."""
import pytest
import torch

import requires
from mdsample.models import Transformer, generate_ar, generate_ar_uncached, llama_config, llama_state_dict, preset


def causal_tiny(seed=4):
    return Transformer(preset("tiny", attention="causal"), seed=seed)


def prompt(b, p, seed=0):
    return torch.randint(0, 127, (b, p), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cached_equals_uncached_generation(temperature):
    model = causal_tiny()
    x = prompt(3, 5)
    got = generate_ar(model, x, 24, temperature=temperature, seed=123)
    want = generate_ar_uncached(model, x, 24, temperature=temperature, seed=123)
    assert got.shape == (3, 29) and torch.equal(got[:, :5], x)
    assert torch.equal(got, want)


def test_rows_do_not_depend_on_batch_companions_at_temperature_zero():
    model = causal_tiny()
    x = prompt(3, 5)
    together = generate_ar(model, x, 10)
    assert torch.equal(generate_ar(model, x[1:2], 10), together[1:2])


def test_seed_changes_samples():
    model = causal_tiny()
    x = prompt(2, 4)
    a, b = generate_ar(model, x, 20, temperature=1.0, seed=1), generate_ar(model, x, 20, temperature=1.0, seed=2)
    assert not torch.equal(a, b)


def test_refuses_non_causal_model():
    with pytest.raises(ValueError, match="causal"):
        generate_ar(Transformer(preset("tiny")), prompt(1, 3), 4)


def test_max_new_tokens_is_an_int():
    """True generated one token, and NumPy's int64 was refused as "not an int"."""
    import numpy as np

    model = causal_tiny()
    with pytest.raises(TypeError, match="max_new_tokens must be an int"):
        generate_ar(model, prompt(1, 3), True)
    with pytest.raises(ValueError, match=r"max_new_tokens must be an int in \[0, inf\]"):
        generate_ar(model, prompt(1, 3), -1)
    assert torch.equal(generate_ar(model, prompt(1, 3), np.int64(2)), generate_ar(model, prompt(1, 3), 2))


def test_refuses_token_ids_outside_the_vocabulary():
    model = causal_tiny()
    vocab = model.config.vocab_size
    for bad in (vocab, -1):
        x = prompt(2, 3)
        x[1, 2] = bad
        with pytest.raises(ValueError, match=f"token id {bad}"):
            generate_ar(model, x, 2)


@torch.no_grad()
def test_greedy_equals_hf_llama_generate_with_kv_cache():
    transformers = requires.transformers()
    cfg = preset("tiny", attention="causal", vocab_size=256, mask_id=None)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(llama_config(cfg)).eval()
    # HF's default init draws its own random weights; copy them over by name.
    model = Transformer(cfg)
    model.load_state_dict(llama_state_dict(hf.state_dict()), strict=True)
    x = prompt(2, 7, seed=5)
    torch.testing.assert_close(model(x), hf(x).logits, rtol=1e-5, atol=1e-5)
    want = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=30, do_sample=False, use_cache=True,
                       eos_token_id=None, pad_token_id=0, min_new_tokens=30)
    got = generate_ar(model, x, 30)
    assert torch.equal(got, want)


def test_decode_loop_makes_no_host_sync(monkeypatch, no_host_sync):
    """Per-token work stays on the device: the only host reads are the prompt's token check before the loop
    and the final bad-row check."""
    import mdsample.models.ar as ar

    model = causal_tiny()
    x = prompt(2, 5)
    want = generate_ar(model, x, 8, temperature=1.0, seed=3)
    monkeypatch.setattr(ar, "_finish", lambda out: out)
    monkeypatch.setattr(ar.V, "tokens_in_vocab", lambda name, tokens, vocab: None)
    with no_host_sync():
        got = generate_ar(model, x, 8, temperature=1.0, seed=3)
    assert torch.equal(got, want)
