"""Arguments the model cannot take are refused by name: token ids outside its vocabulary (its embedding would raise
a bare IndexError), special tokens equal to the mask, canvases beyond its context, options the mode ignores."""
import pytest
import torch

import mdsample
from mdsample.models import Transformer

M = Transformer.from_preset("tiny", seed=0).eval()                                        # V = 128, mask 127
BD = Transformer.from_preset("tiny", attention="block_causal", block_size=4, seed=0).eval()

CALLS = [
    ("prompt.*id 200", lambda: mdsample.generate(M, torch.tensor([[1, 200, 3]]), steps=4, gen_length=4,
                                                 block_length=4, mask_id=127)),
    ("prompt.*id 200", lambda: mdsample.generate(M, torch.tensor([[1, 200, 3]]), steps=4, gen_length=4,
                                                 block_length=4, mask_id=127, cache="dual")),
    ("prompt.*id 200", lambda: mdsample.sample_dream(M, torch.tensor([[1, 200, 3]]), max_new_tokens=4, steps=4,
                                                     mask_id=127)),
    ("prompt.*id 300", lambda: mdsample.sample_mdlm(M, batch_size=1, length=8, steps=4, mask_id=127,
                                                    prompt=torch.tensor([1, 300]))),
    ("x holds token id 130", lambda: mdsample.likelihood(M, torch.tensor([[1, 2, 130]]), mc_samples=2)),
    # a model that does not declare its vocabulary: checked against its logits, not named by Monte Carlo row
    ("x holds token id 99, outside the model's vocabulary of size 16", lambda: mdsample.likelihood(
        _undeclared, torch.tensor([[1, 99, 3, 4]]), mc_samples=4, mask_id=15)),
    ("x holds token id 99, outside the model's vocabulary of size 16", lambda: mdsample.chain_rule_likelihood(
        _undeclared, torch.tensor([[1, 99, 3]]), mask_id=15)),
    ("bos_id 200", lambda: mdsample.sample_bd3lm(BD, batch_size=1, length=8, block_size=4, mask_id=127, bos_id=200)),
    ("eos_id 128", lambda: mdsample.sample_bd3lm(BD, batch_size=1, length=8, block_size=4, mask_id=127, eos_id=128)),
    ("perplexity needs a scored token", lambda: mdsample.perplexity(M, torch.zeros(0, 8, dtype=torch.long),
                                                                    mc_samples=2)),
    # a BOS that is the mask token would be sampled over (and a mask left in block 0); an EOS that is could never
    # be drawn
    ("bos_id must differ from mask_id", lambda: mdsample.sample_bd3lm(BD, batch_size=1, length=8, block_size=4,
                                                                      mask_id=127, bos_id=127)),
    ("eos_id must differ from mask_id", lambda: mdsample.sample_bd3lm(BD, batch_size=1, length=8, block_size=4,
                                                                      mask_id=127, eos_id=127)),
    ("exceed the model's context", lambda: mdsample.generate(M, torch.zeros(1, 250, dtype=torch.long), steps=8,
                                                             gen_length=8, block_length=8, mask_id=127,
                                                             cache="dual")),
    ("length \\(300\\) exceeds the model's context \\(256\\)", lambda: mdsample.sample_duo(
        M, batch_size=1, length=300, vocab_size=127, steps=2, schedule="cosine")),
    ("schedule and eps apply to masking='bernoulli'", lambda: mdsample.likelihood(
        M, torch.ones(1, 8, dtype=torch.long), mc_samples=2, masking="count", schedule="cosine")),
    ("logits_eos_inf removes LLaDA's token 126081", lambda: _compat_llada().generate(
        M, torch.ones(1, 3, dtype=torch.long), steps=4, gen_length=4, block_length=4, mask_id=127,
        logits_eos_inf=True)),
    # no mask_id given or declared: the upstream default (LLaDA's, Dream's) is past the model's 64 tokens, where
    # the model's embedding raised a bare IndexError
    ("mask_id is required.*default 126336.*vocabulary of 64 tokens", lambda: mdsample.generate(
        _small_vocab, torch.tensor([[1, 2]]), steps=2, gen_length=4, block_length=4)),
    ("mask_id is required.*default 151666.*vocabulary of 64 tokens", lambda: mdsample.sample_dream(
        _small_vocab, torch.tensor([[1, 2]]), max_new_tokens=4, steps=2)),
]


class _SmallVocab(torch.nn.Module):
    """Declares its vocabulary (64) and no mask id."""
    vocab_size = 64

    def forward(self, x):
        return torch.zeros(*x.shape, 64)


_small_vocab = _SmallVocab()


def _undeclared(x):
    return torch.zeros(*x.shape, 16)


def _compat_llada():
    import mdsample.compat.llada as llada

    return llada


@pytest.mark.parametrize("match,call", CALLS, ids=[f"{i}" for i in range(len(CALLS))])
def test_out_of_vocabulary_ids_are_named(match, call):
    with pytest.raises(ValueError, match=match):
        call()


def test_masks_in_the_prompt_compete_as_upstream_and_a_leftover_warns():
    """LLaDA counts only the block's masks but lets the prompt's compete: a generated mask can be left, with a
    warning naming how many; a prompt without masks never warns."""
    prompt = torch.tensor([[1, 127, 3]])
    with pytest.warns(RuntimeWarning, match=r"prompt holds mask tokens.*1 generated position"):
        out = mdsample.generate(M, prompt, steps=8, gen_length=8, block_length=4, mask_id=127)
    assert int((out[:, 3:] == 127).sum()) == 1 and (out[:, 1] != 127).all()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mdsample.generate(M, torch.tensor([[1, 2, 3]]), steps=8, gen_length=8, block_length=4, mask_id=127)
