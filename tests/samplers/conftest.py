"""Fixtures of the sampler tests.

The samplers make many small op calls; on a 2-core machine shared with other jobs,
OpenMP's 2-thread parallel regions cost ~20 ms each under contention (versus ~50 us on
one thread), so these tests run torch single-threaded and restore the setting after.
"""
import pytest
import torch

import requires


@pytest.fixture(scope="session")
def llama():
    """A small random Hugging Face Llama (float64, V = 40): the stand-in for HF checkpoints."""
    transformers = requires.transformers()
    LlamaConfig, LlamaForCausalLM = transformers.LlamaConfig, transformers.LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    with torch.no_grad():
        m = LlamaForCausalLM(cfg).double().eval()
        m.lm_head.weight.mul_(40.0)  # peaked logits, so confidences are well separated
    return m


@pytest.fixture(autouse=True)
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
