"""mdsample.sample_smdm (and compat.smdm.diff_sample) against an independent SMDM loop, and its laws.

The reference below is written from ALGORITHMS.md (SMDM's sampler) in float64 torch, one
position at a time, with mdsample's documented choices: the mask token is excluded from the
draw and the confidences, ties go to the lower position, counts are per sequence. Its token
draws come from :func:`mdsample.sample_categorical` with the sampler's keys (the op's own
exactness is tests/stats' business), so it is token for token comparable at any temperature.
Chi-square tests use ALPHA = 1e-3 (the false-alarm rate of each) and fixed seeds.
"""
import itertools
import math
from collections import defaultdict

import pytest
import torch

import mdsample
from mdsample.compat import smdm as compat_smdm
from mdsample.samplers._random import DOMAIN_REVEAL, uniforms
from sampler_oracles import HeadOracle, ancestral_distribution, chi_square_pvalue, count_rows, random_joint
from test_samplers_generate import MASK, V, LogitsOnly, TinyLM, prompts

ALPHA = 1e-3


def reference_smdm(model, prompt, *, length, steps, alg, temperature=1.0, cfg_scale=0.0, eps=1e-5, seed=0):
    """SMDM's loop: a full forward (two with CFG) every step; float32 times and counts as upstream."""
    B, P = prompt.shape
    x = torch.cat([prompt, torch.full((B, length - P), MASK, dtype=torch.long)], 1)
    ts = torch.linspace(1, eps, steps + 1)
    pos = torch.arange(B).unsqueeze(1) * length + torch.arange(length)
    for i in range(steps):
        t, s, last = ts[i], ts[i + 1], i == steps - 1
        masked = x == MASK
        cond = model(x).double()
        uncond = None
        if cfg_scale > 0:
            un_x = x.clone()
            un_x[:, :P] = MASK
            uncond = model(un_x).double()
        scores = cond if uncond is None else uncond + (cfg_scale + 1) * (cond - uncond)
        r_b, r_c = masked.nonzero(as_tuple=True)
        x0 = mdsample.sample_categorical(cond[r_b, r_c], temperature=temperature, seed=seed, offset=i,
                                         positions=pos[r_b, r_c], exclude=MASK,
                                         guidance=None if uncond is None else uncond[r_b, r_c],
                                         guidance_scale=cfg_scale, backend="reference")
        drawn = dict(zip(zip(r_b.tolist(), r_c.tolist()), x0.tolist()))
        if alg == "origin":
            u, _ = uniforms(seed, i, pos, DOMAIN_REVEAL)
            p_transfer = 1.0 if last else float(1 - s / t)
            for (b, c), tok in drawn.items():
                if float(u[b, c]) < p_transfer:
                    x[b, c] = tok
            continue
        new = x.clone()
        for b in range(B):
            n = int(masked[b].sum())
            k = n if last else int(torch.tensor(n) * (1 - s / t))  # int64 x float32 tensors, as upstream
            ranked = []
            for c in masked[b].nonzero().flatten().tolist():
                row = scores[b, c].clone()
                row[MASK] = -math.inf
                ranked.append((-float(torch.softmax(row, 0)[drawn[b, c]]), c))  # untempered p(x0)
            for _, c in sorted(ranked)[:k]:
                new[b, c] = drawn[b, c]
        x = new
    return x


CASES = [
    dict(steps=5, length=12, alg="origin"),
    dict(steps=4, length=12, alg="greedy"),
    dict(steps=9, length=10, alg="greedy"),  # steps with K = 0
    dict(steps=4, length=12, alg="greedy", temperature=0.0),
    dict(steps=4, length=12, alg="greedy", temperature=0.4),
    dict(steps=4, length=12, alg="greedy", temperature=2.5),
    dict(steps=3, length=11, alg="origin", cfg_scale=1.5),
    dict(steps=4, length=12, alg="greedy", cfg_scale=2.0),
    dict(steps=4, length=12, alg="greedy", cfg_scale=0.7, temperature=0.5),
    dict(steps=3, length=10, alg="origin", eps=0.5),  # the last step reveals every mask
    dict(steps=3, length=10, alg="greedy", eps=0.5),
    dict(steps=3, length=10, alg="greedy", eps=0.0),
]


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
@pytest.mark.parametrize("head", [True, False])
def test_matches_reference_token_for_token(case, head):
    model, p = TinyLM(seed=1), prompts(B=1)  # a model whose tempered and untempered orders differ (below)
    ref = reference_smdm(model, p, seed=3, **case)
    out = mdsample.sample_smdm(model if head else LogitsOnly(model), p, mask_id=MASK, seed=3, **case)
    assert torch.equal(out, ref)


def _padded_prompts(B):
    """Prompts holding mask tokens (SMDM's padding id is its mask id): filled, and masked for CFG."""
    p = prompts(B=B)
    p[0, 1] = MASK
    if B > 1:
        p[1, 3:] = MASK
    return p


@pytest.mark.parametrize("alg", ["origin", "greedy"])
def test_mask_tokens_in_the_prompt(alg):
    """The unconditional input masks every prompt position (revealed padding included, as SMDM), and with a
    batch each sequence commits from its own mask count: the reference row by row, and batch-invariant."""
    model, p = TinyLM(seed=1), _padded_prompts(3)
    kw = dict(length=11, steps=4, alg=alg, temperature=0.8, cfg_scale=2.0)
    for seed in range(4):
        out = mdsample.sample_smdm(model, p, mask_id=MASK, seed=seed, **kw)
        assert torch.equal(out, reference_smdm(model, p, seed=seed, **kw))
        assert torch.equal(out[:2], mdsample.sample_smdm(model, p[:2], mask_id=MASK, seed=seed, **kw))
        assert bool((out != MASK).all())


def test_a_prompt_as_long_as_the_canvas_fills_its_masks():
    model, p = TinyLM(seed=1), _padded_prompts(2)
    out = mdsample.sample_smdm(model, p, length=p.shape[1], steps=2, alg="greedy", mask_id=MASK, seed=0)
    keep = p != MASK
    assert torch.equal(out[keep], p[keep]) and bool((out != MASK).all())


def test_ties_go_to_the_lower_position():
    """A model whose every row is the same: all confidences tie, so greedy commits left to right."""

    class Same(torch.nn.Module):
        vocab_size = V

        def forward(self, x):
            row = torch.linspace(0.0, 2.0, V, dtype=torch.float64)
            return row.expand(*x.shape, V).clone()

    seen = []
    mdsample.samplers.dream._sample_dream(Same(), torch.zeros((1, 0), dtype=torch.long), max_new_tokens=6, steps=3,
                                          alg="maskgit_plus", alg_temp=None, temperature=0.0, top_p=None, top_k=None,
                                          eps=1e-5, mask_id=MASK, attention_mask=None, seed=0, backend="auto",
                                          progress=False, smdm=True, on_step=lambda i, x: seen.append(x))
    for canvas in seen:
        filled = (canvas[0] != MASK).long()
        assert torch.equal(filled, filled.sort(descending=True).values), canvas  # a prefix is filled


def test_cases_exercise_different_orders():
    """The cases above differ in their outputs (else matching them proves little), and the greedy
    order uses untempered confidences: the tempered ones (Dream's maskgit_plus) commit otherwise."""
    model, p = TinyLM(seed=1), prompts(B=1)
    outs = {tuple(mdsample.sample_smdm(model, p, mask_id=MASK, seed=3, **c).flatten().tolist()) for c in CASES}
    assert len(outs) >= 6
    for T in (0.4, 2.5):
        differ = 0
        for seed in range(10):  # the same draws (same keys), ranked by p(x0) at T = 1 or at T
            smdm = mdsample.sample_smdm(model, p, length=12, steps=4, alg="greedy", temperature=T, mask_id=MASK,
                                        seed=seed)
            dream = mdsample.sample_dream(model, p, max_new_tokens=7, steps=4, alg="maskgit_plus", temperature=T,
                                          eps=1e-5, mask_id=MASK, seed=seed)
            differ += not torch.equal(smdm, dream)
        assert differ >= 2


def test_greedy_batches_commit_per_sequence():
    """Each sequence commits int(n (1 - s/t)) of its own (upstream pools the batch; documented)."""
    model, p = TinyLM(seed=1), prompts(B=3)
    kw = dict(length=11, steps=4, alg="greedy", temperature=0.8, seed=2, cfg_scale=1.0)
    assert torch.equal(mdsample.sample_smdm(model, p, mask_id=MASK, **kw), reference_smdm(model, p, **kw))


def _smdm_reveal_probs(steps, eps=1e-5):
    ts = torch.linspace(1, eps, steps + 1)
    return [float(1 - ts[i + 1] / ts[i]) for i in range(steps - 1)] + [1.0]


def test_origin_at_temperature_one_has_the_exact_distribution():
    """Reveal with prob 1 - s/t (1 at the last step), draw from the exact conditional: the DP's law."""
    oracle = HeadOracle(random_joint(3, 4, seed=21))
    x = torch.cat([mdsample.sample_smdm(oracle, None, batch_size=3000, length=4, steps=3, mask_id=3, seed=s)
                   for s in range(2)])
    law = ancestral_distribution(oracle, steps=3, eps=1e-5, noise_removal="none", reveal_probs=_smdm_reveal_probs(3))
    assert chi_square_pvalue(count_rows(x), law) > ALPHA


def _greedy_law(oracle, *, steps, temperature, eps=1e-5):
    """Exact output law of the greedy sampler: every step, x0 at each masked position from the tempered
    conditional (enumerated jointly), the int(n (1 - s/t)) with the highest untempered p(x0) committed."""
    ts = torch.linspace(1, eps, steps + 1)
    dist = {(oracle.mask_id,) * oracle.L: 1.0}
    for i in range(steps):
        new = defaultdict(float)
        for state, p in dist.items():
            masked = [c for c, a in enumerate(state) if a == oracle.mask_id]
            n = len(masked)
            k = n if i == steps - 1 else int(torch.tensor(n) * (1 - ts[i + 1] / ts[i]))
            cond = oracle.cond_lists[state]
            tempered = {c: [q ** (1 / temperature) for q in cond[c]] for c in masked}
            for toks in itertools.product(range(oracle.Vr), repeat=n):
                q = p * math.prod(tempered[c][v] / sum(tempered[c]) for c, v in zip(masked, toks))
                ranked = sorted((-cond[c][v], c, v) for c, v in zip(masked, toks))
                s = list(state)
                for _, c, v in ranked[:k]:
                    s[c] = v
                new[tuple(s)] += q
        dist = dict(new)
    return dist


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_greedy_has_the_exact_distribution(temperature):
    oracle = HeadOracle(random_joint(3, 3, seed=22))
    x = mdsample.sample_smdm(oracle, None, batch_size=6000, length=3, steps=2, alg="greedy", temperature=temperature,
                             mask_id=3, seed=5)
    law = _greedy_law(oracle, steps=2, temperature=temperature)
    assert chi_square_pvalue(count_rows(x), law) > ALPHA


def test_guidance_is_neutral_for_a_prompt_blind_model():
    """l_u + (w + 1)(l_c - l_u) = l_c when the model ignores the prompt; and a prompt-aware model moves."""

    class Blind(torch.nn.Module):  # logits depend on the position only
        def __init__(self):
            super().__init__()
            self.register_buffer("table", torch.randn(16, V, generator=torch.Generator().manual_seed(4),
                                                      dtype=torch.float64) * 3)
            self.vocab_size = V

        def forward(self, x):
            return self.table[: x.shape[1]].expand(x.shape[0], -1, -1).clone()

    p = prompts(B=2)
    for alg in ("origin", "greedy"):
        kw = dict(length=11, steps=4, alg=alg, temperature=0.9, mask_id=MASK, seed=6)
        plain = mdsample.sample_smdm(Blind(), p, **kw)
        assert torch.equal(mdsample.sample_smdm(Blind(), p, cfg_scale=3.0, **kw), plain)
        model = TinyLM()
        guided = mdsample.sample_smdm(model, p, cfg_scale=3.0, **kw)
        assert not torch.equal(guided, mdsample.sample_smdm(model, p, **kw))


@pytest.mark.parametrize("alg", ["origin", "greedy"])
def test_reproducible_and_batch_invariant(alg):
    model = TinyLM()
    p = torch.randint(0, MASK, (12, 2), generator=torch.Generator().manual_seed(0))
    args = dict(length=7, steps=4, alg=alg, mask_id=MASK, temperature=1.0, seed=7, cfg_scale=0.5)
    big = mdsample.sample_smdm(model, p, **args)
    assert torch.equal(big[:5], mdsample.sample_smdm(model, p[:5], **args))
    assert torch.equal(big, mdsample.sample_smdm(model, p, **args))
    assert not torch.equal(big, mdsample.sample_smdm(model, p, **{**args, "seed": 8}))
    assert bool((big != MASK).all()) and torch.equal(big[:, :2], p)


def test_every_backend_gives_the_same_tokens(fast_backend, device):
    model, p = TinyLM().to(device), prompts(B=2, P=3).to(device)
    kw = dict(length=8, steps=3, mask_id=MASK, temperature=0.8, seed=5, alg="greedy", cfg_scale=1.0)
    ref = mdsample.sample_smdm(model, p, backend="reference", **kw)
    assert torch.equal(mdsample.sample_smdm(model, p, backend=fast_backend, **kw), ref)


def test_progress_bar(capsys):
    mdsample.sample_smdm(TinyLM(), prompts(), length=9, steps=4, mask_id=MASK, progress=True)
    err = capsys.readouterr().err
    assert "sample_smdm" in err and "tok/s" in err


@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(length=4), ValueError, "length"),
    (dict(length=0), ValueError, "length"),
    (dict(steps=0), ValueError, "steps"),
    (dict(alg="maskgit_plus"), ValueError, "alg"),
    (dict(eps=-0.1), ValueError, "eps"),
    (dict(eps=1.0), ValueError, "eps"),
    (dict(temperature=-0.1), ValueError, "temperature"),
    (dict(cfg_scale=-1.0), ValueError, "cfg_scale"),
    (dict(mask_id=V), ValueError, "mask_id"),
    (dict(prompt=None, cfg_scale=1.0), ValueError, "cfg_scale"),
    (dict(prompt=torch.full((2, 3), MASK), cfg_scale=1.0), ValueError, "cfg_scale > 0 needs a non-empty prompt"),
    (dict(prompt=None, batch_size=0), ValueError, "batch_size"),
    (dict(prompt=torch.ones(2, 2, 2, dtype=torch.long)), ValueError, "prompt"),
    (dict(seed="0"), TypeError, "seed"),
])
def test_bad_arguments_name_the_argument(kwargs, exc, name):
    p = prompts()
    before = p.clone()
    args = dict(prompt=p, length=9, steps=4, mask_id=MASK)
    args.update(kwargs)
    with pytest.raises(exc, match=name):
        mdsample.sample_smdm(TinyLM(), **args)
    assert torch.equal(p, before)


def test_compat_diff_sample_is_upstreams_call():
    model, p = TinyLM(), prompts()
    kw = dict(steps=4, temperature=0.7, cfg_scale=1.0, context_length=11, dim=MASK)
    got = compat_smdm.diff_sample(model, None, p, alg="greddy", seed=9, **kw)
    want = mdsample.sample_smdm(model, p, length=11, steps=4, alg="greedy", temperature=0.7, cfg_scale=1.0,
                                mask_id=MASK, seed=9)
    assert torch.equal(got, want)
    for call in (kw, {**kw, "temperature": 0.0}):  # origin at T = 0 still draws its reveal coins
        torch.manual_seed(0)  # no seed: the key comes from the global RNG, as upstream's torch.rand
        a = compat_smdm.diff_sample(model, None, p, **call)
        torch.manual_seed(0)
        assert torch.equal(a, compat_smdm.diff_sample(model, None, p, **call))
        assert not torch.equal(a, compat_smdm.diff_sample(model, None, p, **call))
    with pytest.raises(ValueError, match="cfg_scale"):  # upstream's default 2.0 needs a prompt
        compat_smdm.diff_sample(model, None, None, context_length=6, dim=MASK)
    half = compat_smdm.diff_sample(model, None, p, alg="origin", eps=0.5, seed=9, **{**kw, "steps": 3})
    assert torch.equal(half, mdsample.sample_smdm(model, p, length=11, steps=3, temperature=0.7, cfg_scale=1.0,
                                                  eps=0.5, mask_id=MASK, seed=9))
    with pytest.raises(ValueError, match="context_length"):
        compat_smdm.diff_sample(model, None, p, **{**kw, "context_length": 4})
    with pytest.raises(ValueError, match="dim"):
        compat_smdm.diff_sample(model, None, p, **{**kw, "dim": 99})
    with pytest.raises(ValueError, match="prompt"):
        compat_smdm.diff_sample(model, None, p[0], **kw)
    free = compat_smdm.diff_sample(model, None, None, batch_size=2, cfg_scale=0., context_length=6, dim=MASK, seed=1)
    assert free.shape == (2, 6) and bool((free != MASK).all())
    placed = compat_smdm.diff_sample(model, None, None, batch_size=2, cfg_scale=0., context_length=6, dim=MASK,
                                     seed=1, device="cpu")
    assert torch.equal(placed, free)


def test_compat_suffix_greedy_prediction():
    """True exactly for the target that greedy one-per-step decoding produces (and with CFG, its own)."""
    model, p = TinyLM(seed=1), prompts(B=1, seed=0)[0]
    decoded = {}
    for cfg in (0.0, 3.0):
        greedy = mdsample.generate(model, p, steps=4, gen_length=4, block_length=4, mask_id=MASK, cfg_scale=cfg)[0, 5:]
        decoded[cfg] = greedy
        assert compat_smdm.suffix_greedy_prediction(model, p, greedy, cfg=cfg, mask_id=MASK)
        other = greedy.clone()
        other[2] = (other[2] + 1) % MASK
        assert not compat_smdm.suffix_greedy_prediction(model, p, other, cfg=cfg, mask_id=MASK)
    assert not torch.equal(decoded[0.0], decoded[3.0])  # so the cases above tell CFG from its absence
    assert compat_smdm.suffix_greedy_prediction(model, p[:0], mdsample.generate(  # no prefix: CFG is a no-op
        model, p[:0], steps=4, gen_length=4, block_length=4, mask_id=MASK)[0], cfg=1.0, mask_id=MASK)
    with pytest.raises(ValueError, match="prefix"):
        compat_smdm.suffix_greedy_prediction(model, p.view(1, -1), p[:2], mask_id=MASK)
    with pytest.raises(ValueError, match="cfg"):
        compat_smdm.suffix_greedy_prediction(model, p, p[:2], cfg=-1.0, mask_id=MASK)


def test_batch_size_repeats_a_single_prompt():
    p = prompts()[:1]
    kw = dict(length=9, steps=4, mask_id=MASK, seed=2)
    got = mdsample.sample_smdm(TinyLM(), p, batch_size=3, **kw)
    assert torch.equal(got, mdsample.sample_smdm(TinyLM(), p.expand(3, -1).clone(), **kw))
    assert torch.equal(mdsample.sample_smdm(TinyLM(), p[0], batch_size=3, **kw), got)
    assert mdsample.sample_smdm(TinyLM(), p, **kw).shape == (1, 9)
    with pytest.raises(ValueError, match=r"batch_size=3"):
        mdsample.sample_smdm(TinyLM(), prompts()[:2], batch_size=3, **kw)
