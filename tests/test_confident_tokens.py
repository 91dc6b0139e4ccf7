"""Near-certain tokens on every backend: the drawn top token's log p and entropy (return_stats) and
its masked NLL, per row against a float64 log_softmax (tests/confident_rows.py)."""
import pytest
import torch
from confident_rows import assert_close_per_row, confident_rows, truth
from test_masked_nll import interpreted_triton

import mdsample

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")


def _vocabs(backend):
    """One chunk, three chunks, and (not under the Triton interpreter) a GPT-2 vocabulary."""
    small = [300, 5000]
    return small if interpreted_triton(backend) else small + [50257]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_top_token_stats(backend, device, dtype):
    for vocab in _vocabs(backend):
        logits = confident_rows(vocab, dtype).to(device)
        logp, entropy = truth(logits)
        for temperature in (0.0, 1.0):  # argmax, and a draw (token 0 but at p = tail; seed fixed)
            r = mdsample.sample_categorical(logits, temperature=temperature, seed=1, return_stats=True,
                                            backend=backend)
            picked = r.tokens.cpu() == 0
            assert int(picked.sum()) >= 2, r.tokens
            assert_close_per_row(r.logprob.cpu()[picked], logp[picked], f"logprob V={vocab} T={temperature}")
            assert_close_per_row(r.entropy, entropy, f"entropy V={vocab} T={temperature}")


def test_top_token_masked_nll(backend, device):
    for vocab in _vocabs(backend):
        logits = confident_rows(vocab, torch.float32).to(device)
        rows = logits.shape[0]
        x0 = torch.zeros(rows, 1, dtype=torch.long, device=device)
        xt = torch.ones(rows, 1, dtype=torch.long, device=device)  # token 1 is the mask: every row scored
        logp, _ = truth(logits)
        got = mdsample.masked_nll(logits.unsqueeze(1), x0, xt, mask_id=1, backend=backend)
        assert_close_per_row(got, -logp, f"masked_nll V={vocab}")


def test_top_token_logprob_with_the_excluded_token_back(backend, device):
    """logprob_with (dInfer's and the credit decoder's confidences) recovers the softmax over all V from the op's
    excluded-token logprob: at logits near 24 an ulp of the recovered normaliser (2e-6) once swamped a near-certain
    token's log p, and two of them tied."""
    from mdsample.samplers.remasking import logprob_with

    vocab = _vocabs(backend)[-1]
    logits = (confident_rows(vocab, torch.float32).double() + 24.0).float().to(device)
    res = mdsample.sample_categorical(logits, temperature=0.0, exclude=1, return_stats=True, backend=backend)
    assert torch.equal(res.tokens.cpu(), torch.zeros(len(logits), dtype=torch.long))
    logp, _ = truth(logits)
    assert_close_per_row(logprob_with(logits, res.tokens, res.logprob, 1), logp, f"logprob_with V={vocab}")
