"""mdsample.sample_dream against an independent step-by-step Dream loop, and its distributions.

The reference below is written from ALGORITHMS.md (Dream ``diffusion_generate``) in plain
float64 torch, one row at a time, with mdsample's documented choices: the mask token is
excluded from the draw and the confidences, ties go to the lower position, a row commits
at most its masked positions, and ``alg_temp`` draws are Gumbel-top-K keyed by mdsample's
Philox uniforms. Chi-square tests use ALPHA = 1e-3 (the false-alarm rate of each) and
fixed seeds.
"""
import math
import types

import pytest
import torch

import mdsample
from mdsample.samplers._random import DOMAIN_REVEAL, uniforms
from mdsample.samplers.dream import _sample_dream
from sampler_oracles import (HeadOracle, ancestral_distribution, chi_square_pvalue, count_rows, random_joint,
                             reference_truncate)
from test_samplers_generate import MASK, PAD, V, LogitsOnly, TinyLM, prompts

ALPHA = 1e-3


def reference_dream(model, prompt, *, max_new_tokens, steps, alg, alg_temp=None, top_p=None, top_k=None, eps=1e-3,
                    seed=0, attention_mask=None):
    """Dream's loop at temperature 0: a full forward every step, per-row commits."""
    B, P = prompt.shape
    L = P + max_new_tokens
    x = torch.cat([prompt, torch.full((B, max_new_tokens), MASK, dtype=torch.long)], 1)
    am = None if attention_mask is None else torch.cat([attention_mask, torch.ones(B, max_new_tokens,
                                                                                   dtype=attention_mask.dtype)], 1)
    ts = torch.linspace(1, eps, steps + 1)
    pos = torch.arange(B).unsqueeze(1) * L + torch.arange(L)
    for i in range(steps):
        t, s, last = ts[i], ts[i + 1], i == steps - 1
        logits = model(x, am).double()
        u, _ = uniforms(seed, i, pos, DOMAIN_REVEAL)
        mask_index = x == MASK
        if alg == "origin":
            p_transfer = 1.0 if last else float(1 - s / t)
            for b, c in mask_index.nonzero().tolist():
                if float(u[b, c]) < p_transfer:
                    x[b, c] = int(reference_truncate(logits[b, c], 0.0, top_p, top_k, MASK).argmax())
            continue
        k = L if last else int(mask_index.sum() / B * (1 - s / t))  # the last step fills every row
        new = x.clone()
        for b in range(B):
            scored = []
            for c in mask_index[b].nonzero().flatten().tolist():
                probs = torch.softmax(reference_truncate(logits[b, c], 0.0, top_p, top_k, MASK), 0)
                x0 = int(probs.argmax())
                if alg == "maskgit_plus":
                    conf = float(probs[x0])
                elif alg == "topk_margin":
                    top = probs.topk(2).values
                    conf = float(top[0] - top[1])
                else:
                    conf = float(torch.where(probs > 0, probs * probs.log(), 0.0).sum())
                if alg_temp:
                    conf = conf / alg_temp - math.log(-math.log(float(u[b, c])))
                scored.append((-conf, c, x0))
            for _, c, x0 in sorted(scored)[:k]:
                new[b, c] = x0
        x = new
    return x


CASES = [
    dict(steps=5, max_new_tokens=8, alg="origin"),
    dict(steps=4, max_new_tokens=8, alg="maskgit_plus"),
    dict(steps=8, max_new_tokens=6, alg="topk_margin"),  # steps with K = 0
    dict(steps=3, max_new_tokens=9, alg="entropy"),
    dict(steps=4, max_new_tokens=8, alg="entropy", top_p=0.7),
    dict(steps=4, max_new_tokens=8, alg="maskgit_plus", top_k=2),
    dict(steps=5, max_new_tokens=10, alg="topk_margin", top_p=0.9, top_k=4),
    dict(steps=4, max_new_tokens=8, alg="maskgit_plus", alg_temp=0.3),
    dict(steps=3, max_new_tokens=8, alg="entropy", alg_temp=1.0, top_k=5),
]


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
@pytest.mark.parametrize("head", [True, False])
def test_matches_reference_token_for_token(case, head):
    model, p = TinyLM(), prompts()
    ref = reference_dream(model, p, seed=3, **case)
    out = mdsample.sample_dream(model if head else LogitsOnly(model), p, mask_id=MASK, seed=3, **case)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("alg", ["maskgit_plus", "entropy"])
def test_rows_with_different_mask_counts_share_the_mean_k(alg):
    """Dream's K is the batch mean's, for every row (SMDM's sampler counts per row instead): rows whose
    prompts hold mask tokens commit the mean's K, not their own."""
    model, p = TinyLM(), prompts()
    p[1, 1:] = MASK
    kw = dict(max_new_tokens=6, steps=4, alg=alg, seed=3)
    assert torch.equal(mdsample.sample_dream(model, p, mask_id=MASK, **kw), reference_dream(model, p, **kw))


def test_algorithms_and_truncation_actually_differ():
    """The cases above exercise different commit orders and truncations (else matching them proves little)."""
    model, p = TinyLM(), prompts()
    outs = {tuple(mdsample.sample_dream(model, p, mask_id=MASK, seed=3, **c).flatten().tolist()) for c in CASES}
    assert len(outs) >= 6


def _dream_reveal_probs(steps, eps=1e-3):
    ts = torch.linspace(1, eps, steps + 1)
    return [float(1 - ts[i + 1] / ts[i]) for i in range(steps - 1)] + [1.0]


def test_origin_at_temperature_one_has_the_exact_distribution():
    """Reveal with prob 1 - s/t, draw from the exact conditional: the DP over partial states gives the law."""
    oracle = HeadOracle(random_joint(3, 4, seed=11))
    empty = torch.zeros((3000, 0), dtype=torch.long)
    x = torch.cat([mdsample.sample_dream(oracle, empty, max_new_tokens=4, steps=3, mask_id=3, temperature=1.0,
                                         seed=s) for s in range(2)])
    law = ancestral_distribution(oracle, steps=3, eps=1e-3, noise_removal="none", reveal_probs=_dream_reveal_probs(3))
    assert chi_square_pvalue(count_rows(x), law) > ALPHA


def test_origin_with_top_k_draws_from_the_truncated_conditionals():
    oracle = HeadOracle(random_joint(3, 3, seed=12))
    top2 = {}
    for state, rows in oracle.cond_lists.items():
        kept = [[q if q >= sorted(row)[-2] else 0.0 for q in row] for row in rows]
        top2[state] = [[q / sum(row) for q in row] for row in kept]
    truncated = types.SimpleNamespace(cond_lists=top2, cond=oracle.cond, mask_id=3, L=3, Vr=3)
    law = ancestral_distribution(truncated, steps=2, eps=1e-3, noise_removal="none", reveal_probs=_dream_reveal_probs(2))
    empty = torch.zeros((6000, 0), dtype=torch.long)
    x = mdsample.sample_dream(oracle, empty, max_new_tokens=3, steps=2, mask_id=3, temperature=1.0, top_k=2, seed=4)
    assert chi_square_pvalue(count_rows(x), law) > ALPHA
    assert len(count_rows(x)) <= len([p for p in law.values() if p > 0])


def test_alg_temp_draws_positions_without_replacement():
    """Gumbel-top-K over confidence / alg_temp: P({i, j}) is the sequential draw without replacement."""
    model, n, alg_temp = TinyLM(seed=5), 6, 0.15
    empty = torch.zeros((4000, 0), dtype=torch.long)
    after_first = []
    _sample_dream(model, empty, max_new_tokens=n, steps=2, alg="maskgit_plus", alg_temp=alg_temp, temperature=0.0,
                  top_p=None, top_k=None, eps=1e-3, mask_id=MASK, attention_mask=None, seed=9, backend="auto",
                  progress=False, on_step=lambda i, x: after_first.append(x) if not after_first else None)
    committed = after_first[0] != MASK
    assert bool((committed.sum(1) == 2).all())  # K = int(6 * (1 - 0.5005)) = 2
    logits = model(torch.full((1, n), MASK)).double()[0]
    logits[:, MASK] = -math.inf
    w = torch.exp(torch.softmax(logits, 1).max(1).values / alg_temp).tolist()
    W = sum(w)
    law = {}
    for i in range(n):
        for j in range(i + 1, n):
            law[(i, j)] = w[i] / W * w[j] / (W - w[i]) + w[j] / W * w[i] / (W - w[j])
    counts = count_rows(torch.stack([c.nonzero().flatten() for c in committed]))
    assert chi_square_pvalue(counts, law) > ALPHA
    # the draw is not the deterministic top-K (else the test above would be vacuous)
    assert len(counts) >= 10


def test_origin_computes_each_position_once():
    model = TinyLM()
    seen = []
    head = model.head
    model.head = lambda h: (seen.append(h.shape[0]), head(h))[1]
    mdsample.sample_dream(model, prompts(), max_new_tokens=8, steps=5, mask_id=MASK, temperature=1.0, seed=1)
    assert sum(seen) == 3 * 8  # a position's logits are computed at its reveal step only


def test_steps_that_commit_nothing_run_no_forward():
    model, p = LogitsOnly(TinyLM()), prompts()
    case = dict(steps=8, max_new_tokens=6, alg="topk_margin")
    out = mdsample.sample_dream(model, p, mask_id=MASK, **case)
    ts = torch.linspace(1, 1e-3, 9)
    masks, busy = 6, 0
    for i in range(8):
        k = masks if i == 7 else int(torch.tensor(masks) * (1 - ts[i + 1] / ts[i]))
        busy += k > 0
        masks -= k
    assert busy < 8 and model.rows == busy * p.shape[0] * (p.shape[1] + 6)
    assert torch.equal(out, reference_dream(model.model, p, **case))


def test_left_padding_with_attention_mask():
    model = TinyLM()
    g = torch.Generator().manual_seed(4)
    raw = [torch.randint(1, MASK, (n,), generator=g) for n in (5, 3, 1)]
    P = 5
    p = torch.full((3, P), PAD)
    am = torch.zeros(3, P, dtype=torch.long)
    for j, r in enumerate(raw):
        p[j, P - len(r):] = r
        am[j, P - len(r):] = 1
    case = dict(steps=4, max_new_tokens=8, alg="entropy")
    out = mdsample.sample_dream(model, p, attention_mask=am, mask_id=MASK, **case)
    assert torch.equal(out, reference_dream(model, p, attention_mask=am, **case))
    for j, r in enumerate(raw):
        alone = mdsample.sample_dream(model, r.unsqueeze(0), mask_id=MASK, **case)
        assert torch.equal(out[j, P:], alone[0, len(r):])


def test_mask_tokens_in_the_prompt_are_filled():
    p = prompts()
    p[0, 1] = MASK
    out = mdsample.sample_dream(TinyLM(), p, max_new_tokens=4, steps=4, alg="maskgit_plus", mask_id=MASK)
    assert bool((out != MASK).all())
    assert torch.equal(out[1:, :5], p[1:]) and out[0, 0] == p[0, 0]


@pytest.mark.parametrize("kw", [dict(alg="origin", top_p=0.9), dict(alg="entropy", alg_temp=0.5), dict()])
def test_reproducible_and_batch_invariant(kw):
    model = TinyLM()
    p = torch.randint(0, MASK, (20, 2), generator=torch.Generator().manual_seed(0))
    args = dict(max_new_tokens=5, steps=4, mask_id=MASK, temperature=1.0, seed=7, **kw)
    big = mdsample.sample_dream(model, p, **args)
    assert torch.equal(big[:7], mdsample.sample_dream(model, p[:7], **args))
    assert torch.equal(big, mdsample.sample_dream(model, p, **args))
    assert not torch.equal(big, mdsample.sample_dream(model, p, **{**args, "seed": 8}))


def test_every_backend_gives_the_same_tokens(fast_backend, device):
    model, p = TinyLM().to(device), prompts(B=2, P=3).to(device)
    kw = dict(max_new_tokens=4, steps=3, mask_id=MASK, temperature=0.8, seed=5, alg="entropy", top_p=0.9)
    ref = mdsample.sample_dream(model, p, backend="reference", **kw)
    assert torch.equal(mdsample.sample_dream(model, p, backend=fast_backend, **kw), ref)


def test_progress_bar(capsys):
    mdsample.sample_dream(TinyLM(), prompts(), max_new_tokens=4, steps=4, mask_id=MASK, progress=True)
    err = capsys.readouterr().err
    assert "sample_dream" in err and "saved" in err and "tok/s" in err


@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(max_new_tokens=0), ValueError, "max_new_tokens"),
    (dict(steps=0), ValueError, "steps"),
    (dict(alg="maskgit"), ValueError, "alg"),
    (dict(alg_temp=-1.0), ValueError, "alg_temp"),
    (dict(alg="origin", alg_temp=0.5), ValueError, "alg_temp"),
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(top_p=1.5), ValueError, "top_p"),
    (dict(top_k=0), ValueError, "top_k"),
    (dict(top_k=2.5), TypeError, "top_k"),
    (dict(eps=-0.1), ValueError, "eps"),
    (dict(eps=1.0), ValueError, "eps"),
    (dict(temperature=-0.1), ValueError, "temperature"),
    (dict(attention_mask=torch.ones(2, 3)), ValueError, "attention_mask"),
    (dict(mask_id=V), ValueError, "mask_id"),
    (dict(seed="0"), TypeError, "seed"),
])
def test_bad_arguments_name_the_argument(kwargs, exc, name):
    args = dict(max_new_tokens=4, steps=4, mask_id=MASK)
    args.update(kwargs)
    p = prompts()
    before = p.clone()
    with pytest.raises(exc, match=name):
        mdsample.sample_dream(TinyLM(), p, **args)
    assert torch.equal(p, before)
