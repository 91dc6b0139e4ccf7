"""mdsample.chain_rule_likelihood: exact on oracles whose likelihood is known, equal to SMDM's loop.

The oracles (tests/likelihood_oracles.py) return a known joint's exact conditionals, so the
left-to-right chain rule equals ``log p`` exactly (up to the float32 logits). The plain loop
below is SMDM's ``chain_rule`` evaluation written from its description: ``n`` copies of the
sequence with a triangle of masks, full logits, float64 log_softmax. No statistics here: every
check is deterministic.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from likelihood_oracles import HeadJoint, JointOracle, MarkovOracle

import mdsample

JOINT = JointOracle()
MARKOV = MarkovOracle()
V, MASK = 12, 11


class Mixer(torch.nn.Module):
    """A tiny bidirectional model with a finite mask logit (so SUBS matters) and a hidden/head split."""

    def __init__(self, seed=0, d=8, max_len=32):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("emb", torch.randn(V, d, generator=g, dtype=torch.float64))
        self.register_buffer("pos", torch.randn(max_len, d, generator=g, dtype=torch.float64))
        self.register_buffer("out", torch.randn(d, V, generator=g, dtype=torch.float64) * 2)
        self.vocab_size, self.mask_id, self.calls, self.head_rows = V, MASK, 0, 0

    def hidden(self, x, attention_mask=None):
        self.calls += 1
        e = self.emb[x]
        keep = torch.ones(x.shape, dtype=torch.float64) if attention_mask is None else attention_mask.double()
        ctx = (e * keep.unsqueeze(-1)).sum(1, keepdim=True) / keep.sum(1, keepdim=True).unsqueeze(-1)
        return torch.tanh(e + self.pos[: x.shape[1]] + ctx)

    def head(self, h):
        self.head_rows += h.shape[0]
        return h @ self.out

    def forward(self, x, attention_mask=None):
        return self.head(self.hidden(x, attention_mask))


def naive_chain(model, x, *, prompt_len=0, cfg_scale=0.0, subs=True):
    """SMDM's chain rule: input i masks answer positions >= i, position i is scored; full logits."""
    B, L = x.shape
    out = torch.zeros(B, dtype=torch.float64)
    for b in range(B):
        n = L - prompt_len
        inp = x[b].repeat(n, 1)
        tri = torch.triu(torch.ones(n, n, dtype=torch.bool))
        inp[:, prompt_len:][tri] = MASK
        logits = model(inp).double()
        if cfg_scale:
            un = inp.clone()
            un[:, :prompt_len] = MASK
            uncond = model(un).double()
            logits = uncond + (cfg_scale + 1) * (logits - uncond)
        if subs:
            logits[..., MASK] = -math.inf
        rows = logits[torch.arange(n), prompt_len + torch.arange(n)]
        out[b] = -F.cross_entropy(rows, x[b, prompt_len:], reduction="sum")
    return out


@pytest.mark.parametrize("prompt_len", [0, 3])
def test_exact_on_an_enumerable_joint(prompt_len):
    seqs = JOINT.states[torch.randperm(len(JOINT.states), generator=torch.Generator().manual_seed(0))[:6]]
    got = mdsample.chain_rule_likelihood(JOINT, seqs, prompt_len=prompt_len, mask_id=JOINT.mask_id, batch_size=7)
    want = torch.tensor([JOINT.log_prob(s.tolist(), prompt=prompt_len) for s in seqs], dtype=torch.float64)
    torch.testing.assert_close(got.log_likelihood, want, rtol=0, atol=1e-4)
    assert got.num_tokens.tolist() == [8 - prompt_len] * 6 and bool((got.stderr == 0).all())


def test_exact_on_a_padded_batch_of_markov_chains():
    """Chains of lengths 20 and 32 right-padded in one batch, with prompts: each is its own exact log p. The
    padding holds the mask id (SMDM pads with it): padding is not data, so that is allowed."""
    short, long_ = MARKOV.sample(1, 20, seed=1), MARKOV.sample(1, 32, seed=2)
    x = torch.full((2, 32), MARKOV.mask_id, dtype=torch.long)
    x[0, :20], x[1] = short[0], long_[0]
    am = torch.ones(2, 32, dtype=torch.long)
    am[0, 20:] = 0
    got = mdsample.chain_rule_likelihood(MARKOV, x, attention_mask=am, prompt_len=torch.tensor([4, 7]),
                                         mask_id=MARKOV.mask_id, batch_size=9)
    want = torch.cat([MARKOV.log_prob(short, prompt=4), MARKOV.log_prob(long_, prompt=7)]).double()
    torch.testing.assert_close(got.log_likelihood, want, rtol=0, atol=1e-3)
    assert got.num_tokens.tolist() == [16, 25]


@pytest.mark.parametrize("kw", [dict(), dict(prompt_len=3), dict(prompt_len=2, cfg_scale=1.5),
                                dict(prompt_len=2, subs=False)])
@pytest.mark.parametrize("batch_size", [1, 5, 1000])
def test_matches_smdms_loop(kw, batch_size):
    model = Mixer()
    x = torch.randint(0, MASK, (3, 9), generator=torch.Generator().manual_seed(1))
    before = x.clone()
    want = naive_chain(model, x, **kw)
    for m in (model, lambda t, **a: model(t, **a)):  # with hidden/head, and full logits only
        if not isinstance(m, torch.nn.Module):
            m.vocab_size = V
        got = mdsample.chain_rule_likelihood(m, x, mask_id=MASK, batch_size=batch_size, **kw)
        torch.testing.assert_close(got.log_likelihood, want, rtol=1e-5, atol=1e-4)
    assert torch.equal(x, before)


def test_options_change_the_value():
    """The cases above would not tell SUBS or CFG from their absence if they changed nothing."""
    model = Mixer()
    x = torch.randint(0, MASK, (3, 9), generator=torch.Generator().manual_seed(1))
    base = naive_chain(model, x, prompt_len=2)
    for kw in (dict(subs=False), dict(cfg_scale=1.5)):
        assert float((naive_chain(model, x, prompt_len=2, **kw) - base).abs().min()) > 1e-3


def test_head_computes_only_the_scored_rows():
    model = HeadJoint()
    x = JOINT.states[:5]
    got = mdsample.chain_rule_likelihood(model, x, prompt_len=2, mask_id=JOINT.mask_id, batch_size=4)
    assert model.head_rows == 5 * 6  # one row per answer token (SMDM's loop: 5 * 6 inputs of 8 rows)
    want = mdsample.chain_rule_likelihood(JOINT, x, prompt_len=2, mask_id=JOINT.mask_id, batch_size=4)
    torch.testing.assert_close(got.log_likelihood, want.log_likelihood, rtol=1e-6, atol=1e-6)
    mixer = Mixer()
    mdsample.chain_rule_likelihood(mixer, torch.zeros(3, 9, dtype=torch.long), prompt_len=1, mask_id=MASK,
                                   batch_size=5)
    assert mixer.calls == math.ceil(3 * 8 / 5)


def test_backends_agree(fast_backend, device):
    x = MARKOV.sample(2, 10, seed=3).to(device)
    got = mdsample.chain_rule_likelihood(MARKOV, x, mask_id=MARKOV.mask_id, backend=fast_backend, prompt_len=2)
    ref = mdsample.chain_rule_likelihood(MARKOV, x, mask_id=MARKOV.mask_id, backend="reference", prompt_len=2)
    torch.testing.assert_close(got.log_likelihood, ref.log_likelihood, rtol=1e-5, atol=1e-4)


def test_progress_bar(capsys):
    mdsample.chain_rule_likelihood(Mixer(), torch.zeros(2, 6, dtype=torch.long), mask_id=MASK, batch_size=4,
                                   progress=True)
    assert "chain_rule_likelihood" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs,exc,word", [
    (dict(x=torch.zeros(4, dtype=torch.long)), ValueError, "x"),
    (dict(x=torch.zeros(2, 4)), TypeError, "x"),
    (dict(x=torch.full((2, 4), MASK)), ValueError, "mask_id"),
    (dict(x=torch.full((2, 4), V)), ValueError, "x"),
    (dict(prompt_len=4), ValueError, "prompt_len"),
    (dict(cfg_scale=1.0), ValueError, "prompt_len"),
    (dict(cfg_scale=-1.0, prompt_len=1), ValueError, "cfg_scale"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(attention_mask=torch.ones(1, 4)), ValueError, "attention_mask"),
    (dict(attention_mask=torch.zeros(2, 4, dtype=torch.long)), ValueError, "real answer token"),
    (dict(attention_mask=torch.zeros(2, 4)), TypeError, "attention_mask must be bool or integer"),
    (dict(subs=1), TypeError, "subs"),
])
def test_bad_input_names_the_argument(kwargs, exc, word):
    args = dict(x=torch.zeros(2, 4, dtype=torch.long), mask_id=MASK)
    args.update(kwargs)
    with pytest.raises(exc, match=word):
        mdsample.chain_rule_likelihood(Mixer(), args.pop("x"), **args)


def test_smdm_eval_target_nll_ar_is_the_chain_rule():
    from mdsample.compat import smdm

    model = Mixer()
    x = torch.randint(0, MASK, (1, 9), generator=torch.Generator().manual_seed(2))
    for cfg in (0.0, 1.5):
        got = smdm.eval_target_nll_ar(model, x[0, :3], x[0, 3:], batch_size=4, cfg=cfg, mask_id=MASK)
        want = -float(naive_chain(model, x, prompt_len=3, cfg_scale=cfg, subs=False)[0])
        assert isinstance(got, float) and abs(got - want) < 1e-4
    with pytest.raises(ValueError, match="target"):
        smdm.eval_target_nll_ar(model, x[0, :3], x[0, :0], mask_id=MASK)
    with pytest.raises(ValueError, match="prefix"):
        smdm.eval_target_nll_ar(model, x[:, :3], x[0, 3:], mask_id=MASK)
    with pytest.raises(ValueError, match="prefix / target must not contain mask_id"):
        smdm.eval_target_nll_ar(model, torch.tensor([1, MASK]), x[0, 3:], mask_id=MASK)
    with pytest.raises(ValueError, match="cfg must"):
        smdm.eval_target_nll_ar(model, x[0, :3], x[0, 3:], cfg=-1.0, mask_id=MASK)
    alone = smdm.eval_target_nll_ar(model, x[0, :0], x[0], mask_id=MASK)  # no prefix: CFG is a no-op
    assert smdm.eval_target_nll_ar(model, x[0, :0], x[0], cfg=1.0, mask_id=MASK) == alone
