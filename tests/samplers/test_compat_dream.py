"""mdsample.compat.dream.diffusion_generate takes what Dream's method takes and returns what it returns."""
from dataclasses import dataclass
from typing import Optional

import pytest
import torch

import requires
from mdsample.compat import dream
from test_samplers_compat import _padded_prompts

SMALL = dict(max_new_tokens=4, steps=2, mask_token_id=39)  # a tiny canvas: the llama fixture has V = 40


def test_config_only_names_are_accepted_and_ignored(llama):
    """Eval harnesses pass pad / eos ids; upstream's ``GenerationConfig.update`` takes them and its loop ignores them."""
    p, am = _padded_prompts()
    want = dream.diffusion_generate(llama, p, attention_mask=am, alg="entropy", temperature=0.5, seed=2, **SMALL)
    got = dream.diffusion_generate(llama, p, attention_mask=am, alg="entropy", temperature=0.5, seed=2,
                                   pad_token_id=0, eos_token_id=[1, 2], bos_token_id=3, generation_kwargs={}, **SMALL)
    assert torch.equal(got, want)
    with pytest.raises(TypeError, match="eos_token'"):  # a typo still fails loudly
        dream.diffusion_generate(llama, p, eos_token=2, **SMALL)


def test_inputs_and_lengths_are_named(llama):
    """Float inputs were refused as the sampler's "prompt", a NumPy mask failed with num_return_sequences=2
    (an AttributeError), and a prompt filling the context blamed max_new_tokens, which was never passed."""
    p, am = _padded_prompts()
    with pytest.raises(ValueError, match=r"inputs must be an integer tensor \[B, P\] of token ids; got torch.float32"):
        dream.diffusion_generate(llama, p.float(), **SMALL)
    want = dream.diffusion_generate(llama, p, attention_mask=am, num_return_sequences=2, seed=1, **SMALL)
    got = dream.diffusion_generate(llama, p.numpy(), attention_mask=am.numpy(), num_return_sequences=2, seed=1, **SMALL)
    assert torch.equal(got, want)
    full = torch.ones(1, 64, dtype=torch.long)  # max_position_embeddings = 64
    with pytest.raises(ValueError, match=r"input length \(64\) reaches the model's max_position_embeddings \(64\)"):
        dream.diffusion_generate(llama, full, steps=2, mask_token_id=39)


def test_output_reads_as_dreams_model_output(llama):
    """``DreamModelOutput`` is a transformers ``ModelOutput``: a mapping (and tuple view) of its fields not None."""
    ModelOutput = requires.transformers().utils.ModelOutput

    @dataclass
    class Upstream(ModelOutput):  # DreamModelOutput's fields
        sequences: torch.LongTensor = None
        history: Optional[list] = None

    p, _ = _padded_prompts()
    out = dream.diffusion_generate(llama, p, return_dict_in_generate=True, output_history=True, seed=1, **SMALL)
    assert isinstance(out.history, list) and len(out.history) == 2 and torch.equal(out.history[-1], out.sequences)
    up = Upstream(sequences=out.sequences, history=out.history)
    assert list(out) == list(up) == list(out.keys()) == ["sequences", "history"] and len(out) == len(up) == 2
    assert out[0] is up[0] is out["sequences"] is out.sequences and out[1] is out["history"] is out.history
    assert out.to_tuple() == up.to_tuple() and out[:1] == up[:1] and "history" in out and "history" in up
    assert list(out.values())[1] is out.history and dict(out.items()).keys() == dict(up.items()).keys()

    bare = dream.diffusion_generate(llama, p, return_dict_in_generate=True, seed=1, **SMALL)
    up = Upstream(sequences=bare.sequences)
    assert bare.history is None and torch.equal(bare.sequences, out.sequences)
    assert "history" not in bare and "history" not in up and list(bare) == list(up) == ["sequences"]
    assert len(bare.to_tuple()) == len(up.to_tuple()) == 1
    with pytest.raises(KeyError):
        bare["history"]
    with pytest.raises(IndexError):
        bare[1]
    # Without return_dict_in_generate upstream returns the sequences alone, output_history or not.
    plain = dream.diffusion_generate(llama, p, output_history=True, seed=1, **SMALL)
    assert type(plain) is torch.Tensor and torch.equal(plain, out.sequences)


def test_origin_ignores_alg_temp(llama):
    """Upstream's ``alg="origin"`` branch never reads ``alg_temp``: given one, the call is the call without it."""
    p, am = _padded_prompts()
    want = dream.diffusion_generate(llama, p, attention_mask=am, alg="origin", temperature=0.7, seed=4, **SMALL)
    got = dream.diffusion_generate(llama, p, attention_mask=am, alg="origin", temperature=0.7, seed=4, alg_temp=0.5,
                                   **SMALL)
    assert torch.equal(got, want)

    class Config:  # from a generation config too, and drawing the key from the global RNG
        alg, alg_temp, temperature = "origin", 0.5, 0.7

    torch.manual_seed(6)
    got = dream.diffusion_generate(llama, p, Config(), attention_mask=am, **SMALL)
    torch.manual_seed(6)
    assert torch.equal(got, dream.diffusion_generate(llama, p, attention_mask=am, alg="origin", temperature=0.7,
                                                     **SMALL))
