"""mdsample.generate against an independent step-by-step implementation of LLaDA / Dream / Fast-dLLM rules.

The reference below is written from ALGORITHMS.md in plain torch, one row and one step at
a time, with mdsample's documented choices: the mask token is excluded from x0 and from
the confidence softmax, and confidence ties go to the lower position.
"""
import math

import pytest
import torch

import mdsample
from mdsample.samplers._random import DOMAIN_REVEAL, uniforms
from sampler_oracles import HeadOracle, chi_square_pvalue, count_rows, random_joint, reference_truncate

ALPHA = 1e-3
V, MASK, PAD = 12, 11, 0


class TinyLM(torch.nn.Module):
    """A one-layer bidirectional attention model in float64 with key padding and mask-aware positions."""

    def __init__(self, vocab=V, d=16, seed=0, scale=4.0, ban=None):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
        weights = dict(emb=r(vocab, d), pos=r(64, d), wq=r(d, d) / d ** 0.5, wk=r(d, d) / d ** 0.5,
                       wv=r(d, d) / d ** 0.5, out=r(d, vocab) * scale / d ** 0.5)
        for name, w in weights.items():  # buffers, so that .to(device) moves them
            self.register_buffer(name, w)
        self.ban = ban
        self.vocab_size = vocab

    def hidden(self, x, attention_mask=None):
        if attention_mask is None:
            pos = torch.arange(x.shape[1], device=x.device).expand_as(x)
        else:
            pos = (attention_mask.long().cumsum(1) - 1).clamp_min(0)
        h = self.emb[x] + self.pos[pos]
        s = (h @ self.wq) @ (h @ self.wk).transpose(1, 2) / h.shape[-1] ** 0.5
        if attention_mask is not None:
            s = s.masked_fill(~attention_mask.bool()[:, None, :], -torch.inf)
        return torch.tanh(h + torch.softmax(s, -1) @ (h @ self.wv))

    def head(self, h):
        logits = h @ self.out
        if self.ban is not None:
            logits[..., self.ban] = -1e4  # finite: upstream's CFG turns -inf - -inf into NaN
        return logits

    def forward(self, x, attention_mask=None):
        return self.head(self.hidden(x, attention_mask))


class LogitsOnly:
    """The same model seen without hidden/head (full logits every call); counts rows."""

    def __init__(self, model):
        self.model, self.rows = model, 0
        self.vocab_size = model.vocab_size

    def __call__(self, x, attention_mask=None):
        self.rows += x.numel()
        return self.model(x, attention_mask)


def reference_generate(model, prompt, *, steps, gen_length, block_length, cfg_scale=0.0, remasking="low_confidence",
                       mask_id=MASK, threshold=None, factor=None, attention_mask=None, fix_mask=True, seed=0,
                       top_p=None, top_k=None, low_threshold=None, credit=None):
    """LLaDA generate (+ Dream confidences, Fast-dLLM threshold / factor, dInfer's hierarchy rule and
    credit fusion with upstream's dense [B, block, V] credit matrix) at temperature 0, step by step."""
    B, P = prompt.shape
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long)
    x[:, :P] = prompt
    am = None
    if attention_mask is not None:
        am = torch.cat([attention_mask, torch.ones(B, gen_length, dtype=attention_mask.dtype)], 1)
    prompt_index = x != mask_id
    num_blocks = gen_length // block_length
    spb = steps // num_blocks
    dynamic = threshold is not None or factor is not None or low_threshold is not None
    if credit is not None:
        given = {**dict(alpha=0.7, gamma=0.2, beta=0.8), **({} if credit is True else credit)}
        alpha, gamma, beta = given["alpha"], given["gamma"], given["beta"]
    for nb in range(num_blocks):
        s, e = P + nb * block_length, P + (nb + 1) * block_length
        m = (x[:, s:e] == mask_id).sum(1)
        mat = torch.zeros(B, block_length, V, dtype=torch.float64)
        counts = [[int(m[j]) // spb + (1 if i < int(m[j]) % spb else 0) for i in range(spb)] for j in range(B)]
        i = 0
        while True:
            if dynamic:
                if not bool((x[:, s:e] == mask_id).any()):
                    break
            elif i == spb:
                break
            mask_index = x == mask_id
            if cfg_scale > 0:
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                both = model(torch.cat([x, un_x]), None if am is None else torch.cat([am, am]))
                lc, lu = both[:B], both[B:]
                logits = lu + (cfg_scale + 1) * (lc - lu)
            else:
                logits = model(x, am)
            logits = logits.clone().double()
            if fix_mask:
                logits[:, :, mask_id] = -math.inf
            if top_p is not None or top_k is not None:  # Dream's truncation, row by row
                logits = torch.stack([torch.stack([reference_truncate(r, 0.0, top_p, top_k, mask_id) for r in rows])
                                      for rows in logits])
            if credit is not None:
                mat *= beta
                p1, v1 = torch.softmax(logits[:, s:e], -1).max(-1)
                for j in range(B):
                    for c in range(e - s):
                        if int(x[j, s + c]) == mask_id:
                            mat[j, c, v1[j, c]] += float(p1[j, c]) ** gamma
                logits[:, s:e] = logits[:, s:e] + alpha * torch.log(mat + 1)
            x0 = logits.argmax(-1)
            p = torch.softmax(logits, -1)
            if remasking == "low_confidence":
                conf = p.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
            elif remasking == "entropy":
                conf = torch.where(p > 0, p * p.log(), 0.0).sum(-1)
            elif remasking == "margin":
                top = p.topk(2, -1).values
                conf = top[..., 0] - top[..., 1]
            else:  # random, with mdsample's Philox uniforms for the same (seed, block, step, position)
                pos = torch.arange(B).unsqueeze(1) * x.shape[1] + torch.arange(x.shape[1])
                conf, _ = uniforms(seed, (nb << 32) + i, pos, DOMAIN_REVEAL)
            for j in range(B):
                if dynamic and not bool((x[j, s:e] == mask_id).any()):
                    continue
                cand = [c for c in range(e) if bool(mask_index[j, c])]
                cand.sort(key=lambda c: (-float(conf[j, c]), c))
                if not cand:
                    continue
                if low_threshold is not None:  # dInfer's hierarchy: runs of adjacent candidates
                    runs, prev = [], None
                    for c in sorted(cand):
                        if prev is None or c != prev + 1:
                            runs.append([])
                        runs[-1].append(c)
                        prev = c
                    take = {cand[0]}
                    for r in runs:
                        best = max(float(conf[j, c]) for c in r)
                        if best > low_threshold:
                            take |= {c for c in r if float(conf[j, c]) == best}
                    if threshold is not None:
                        take |= {c for c in cand if float(conf[j, c]) > threshold}
                elif threshold is not None:
                    take = [cand[0]] + [c for c in cand[1:] if float(conf[j, c]) >= threshold]
                elif factor is not None:
                    take = [cand[0]]
                    for r, c in enumerate(cand[1:], start=2):
                        if float(conf[j, c]) < 1 - factor / (r + 1):
                            break
                        take.append(c)
                else:
                    take = cand[: counts[j][i]]
                for c in take:
                    x[j, c] = x0[j, c]
            i += 1
    return x


def prompts(B=3, P=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, MASK, (B, P), generator=g)


CASES = [
    dict(steps=8, gen_length=8, block_length=8),
    dict(steps=9, gen_length=12, block_length=4, remasking="entropy"),
    dict(steps=6, gen_length=12, block_length=6, remasking="margin"),
    dict(steps=4, gen_length=8, block_length=4, cfg_scale=1.5),
    dict(steps=6, gen_length=6, block_length=6, remasking="random"),
    dict(steps=6, gen_length=12, block_length=4, threshold=0.6),
    dict(steps=12, gen_length=12, block_length=4, threshold=0.5, remasking="margin", cfg_scale=0.5),
    dict(steps=8, gen_length=8, block_length=4, factor=1.0),
    dict(steps=8, gen_length=8, block_length=4, factor=2.0, remasking="entropy"),
    dict(steps=8, gen_length=8, block_length=4, remasking="entropy", top_p=0.7),
    dict(steps=6, gen_length=12, block_length=6, top_k=3, threshold=0.6),
    dict(steps=6, gen_length=12, block_length=6, low_threshold=0.4),
    dict(steps=6, gen_length=12, block_length=6, low_threshold=0.3, threshold=0.7),
    dict(steps=6, gen_length=12, block_length=6, low_threshold=-1.5, remasking="entropy"),
    dict(steps=6, gen_length=12, block_length=6, credit=True, threshold=0.6),
    dict(steps=12, gen_length=12, block_length=6, credit=dict(alpha=4.0, gamma=1.0, beta=0.5), remasking="entropy"),
    dict(steps=6, gen_length=12, block_length=6, credit=dict(alpha=2.0), low_threshold=0.4, remasking="margin"),
]


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
@pytest.mark.parametrize("head", [True, False])
def test_matches_reference_token_for_token(case, head):
    model = TinyLM()
    p = prompts()
    ref = reference_generate(model, p, seed=3, **case)
    out = mdsample.generate(model if head else LogitsOnly(model), p, mask_id=MASK, seed=3, **case)
    assert torch.equal(out, ref)


def test_rules_actually_differ():
    """The cases above exercise different commit orders (else matching them would prove little)."""
    model, p = TinyLM(), prompts()
    outs = {r: mdsample.generate(model, p, steps=8, gen_length=8, block_length=8, mask_id=MASK, remasking=r)
            for r in ("low_confidence", "entropy", "margin", "random")}
    assert len({tuple(o.flatten().tolist()) for o in outs.values()}) >= 3


def test_left_padding_with_attention_mask():
    model = TinyLM()
    g = torch.Generator().manual_seed(4)
    lens = [5, 3, 1]
    raw = [torch.randint(1, MASK, (n,), generator=g) for n in lens]
    P = max(lens)
    p = torch.full((3, P), PAD)
    am = torch.zeros(3, P, dtype=torch.long)
    for j, r in enumerate(raw):
        p[j, P - len(r):] = r
        am[j, P - len(r):] = 1
    case = dict(steps=8, gen_length=8, block_length=4)
    out = mdsample.generate(model, p, attention_mask=am, mask_id=MASK, **case)
    assert torch.equal(out, reference_generate(model, p, attention_mask=am, **case))
    # Each padded row equals its prompt generated alone (positions follow the attention mask).
    for j, r in enumerate(raw):
        alone = mdsample.generate(model, r.unsqueeze(0), mask_id=MASK, **case)
        assert torch.equal(out[j, P:], alone[0, len(r):])
    with_cfg = mdsample.generate(model, p, attention_mask=am.bool(), mask_id=MASK, cfg_scale=1.0, **case)
    assert torch.equal(with_cfg, reference_generate(model, p, attention_mask=am.bool(), cfg_scale=1.0, **case))


def test_mask_never_sampled_and_upstream_parity_when_model_never_predicts_it():
    model = TinyLM(seed=2)
    with torch.no_grad():
        model.out[:, MASK] += 30.0  # the raw argmax would be the mask token everywhere
    p = prompts()
    out = mdsample.generate(model, p, steps=8, gen_length=8, block_length=8, mask_id=MASK)
    assert bool((out != MASK).all())
    # A model that never predicts the mask: mdsample's output is upstream LLaDA's, unmodified.
    banned = TinyLM(seed=2, ban=MASK)
    for case in CASES[:4]:
        ref = reference_generate(banned, p, fix_mask=False, **case)
        assert torch.equal(mdsample.generate(banned, p, mask_id=MASK, **case), ref)


def test_rows_computed_only_for_block_candidates():
    model = TinyLM()
    seen = []
    head = model.head
    model.head = lambda h: (seen.append(h.shape[0]), head(h))[1]
    p = prompts(B=2, P=4)
    mdsample.generate(model, p, steps=8, gen_length=8, block_length=4, mask_id=MASK)
    # LLaDA: 2 blocks x 4 steps; each step computes the block's remaining masks of both rows (4, 3, 2, 1 each).
    assert seen == [8, 6, 4, 2] * 2
    seen.clear()
    mdsample.generate(model, p, steps=8, gen_length=8, block_length=4, mask_id=MASK, remasking="random")
    assert seen == [2] * 8  # random remasking: only the committed rows


def test_threshold_saves_forwards():
    model = LogitsOnly(TinyLM())
    p = prompts(B=2, P=4)
    mdsample.generate(model, p, steps=16, gen_length=16, block_length=4, mask_id=MASK)
    fixed = model.rows
    model.rows = 0
    mdsample.generate(model, p, steps=16, gen_length=16, block_length=4, mask_id=MASK, threshold=0.0)
    assert model.rows == fixed // 4  # tau = 0 commits a whole block per step
    model.rows = 0
    mdsample.generate(model, p, steps=16, gen_length=16, block_length=4, mask_id=MASK, threshold=1.1)
    assert model.rows == fixed  # tau > 1 commits one token per step: LLaDA's schedule


def test_random_remasking_at_temperature_one_samples_the_joint():
    """One token per step at a uniformly random position from its exact conditional = a draw from the joint
    (chi-square, false-alarm rate ALPHA = 1e-3, fixed seeds)."""
    joint = random_joint(3, 4, seed=8)
    oracle = HeadOracle(joint)
    empty = torch.zeros((3000, 0), dtype=torch.long)
    outs = [mdsample.generate(oracle, empty, steps=4, gen_length=4, block_length=4, mask_id=3, temperature=1.0,
                              remasking="random", seed=s) for s in range(2)]
    x = torch.cat(outs)
    assert chi_square_pvalue(count_rows(x), oracle.joint_probs()) > ALPHA


@pytest.mark.parametrize("kw", [dict(threshold=0.3), dict(factor=1.0), dict(remasking="entropy"), dict()])
def test_reproducible_and_batch_invariant(kw):
    oracle = HeadOracle(random_joint(3, 4, seed=8))
    p = torch.randint(0, 3, (40, 1), generator=torch.Generator().manual_seed(0))
    args = dict(steps=3, gen_length=3, block_length=3, mask_id=3, temperature=1.0, seed=7, **kw)
    big = mdsample.generate(oracle, p, **args)
    assert torch.equal(big[:9], mdsample.generate(oracle, p[:9], **args))
    assert torch.equal(big, mdsample.generate(oracle, p, **args))


def test_progress_bar(capsys):
    mdsample.generate(TinyLM(), prompts(), steps=4, gen_length=8, block_length=4, mask_id=MASK, progress=True)
    err = capsys.readouterr().err
    assert "generate" in err and "saved" in err and "tok/s" in err


@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(gen_length=10, block_length=4), ValueError, "gen_length"),
    (dict(steps=3, gen_length=8, block_length=4), ValueError, "steps"),
    (dict(steps=0), ValueError, "steps"),
    (dict(remasking="low"), ValueError, "remasking"),
    (dict(threshold=0.5, factor=1.0), ValueError, "threshold or factor"),
    (dict(threshold="0.5"), TypeError, "threshold"),
    (dict(factor=-1.0), ValueError, "factor"),
    (dict(temperature=-0.1), ValueError, "temperature"),
    (dict(attention_mask=torch.ones(2, 3)), ValueError, "attention_mask"),
    (dict(attention_mask=torch.ones(3, 5)), TypeError, "attention_mask must be bool or integer"),  # NaN read as 1
    (dict(attention_mask=torch.full((3, 5), 2)), ValueError, r"only 0 \(padding\) and 1 .* holds \[2\]"),
    (dict(eos_id=V), ValueError, f"eos_id {V} is not a token of the model's vocabulary of size {V}"),
    (dict(mask_id=V), ValueError, "mask_id"),
    (dict(seed="0"), TypeError, "seed"),
    (dict(low_threshold=0.4, factor=1.0), ValueError, "low_threshold"),
    (dict(low_threshold="0.4"), TypeError, "low_threshold"),
    (dict(credit="yes"), TypeError, "credit"),
    (dict(credit={"delta": 1.0}), ValueError, "credit"),
    (dict(credit={"beta": 2.0}), ValueError, r"credit\['beta'\]"),
    (dict(credit=True, remasking="random"), ValueError, "credit"),
    (dict(credit=True, cfg_scale=1.0), ValueError, "credit"),
    (dict(credit=True, top_p=0.9), ValueError, "credit"),
    (dict(vicinity=(1, 1)), ValueError, "vicinity"),
])
def test_bad_arguments_name_the_argument(kwargs, exc, name):
    args = dict(steps=8, gen_length=8, block_length=4, mask_id=MASK)
    args.update(kwargs)
    with pytest.raises(exc, match=name):
        mdsample.generate(TinyLM(), prompts(), **args)


def test_credit_refuses_mask_tokens_in_the_prompt():
    p = prompts()
    p[0, 1] = MASK
    with pytest.raises(ValueError, match="credit needs prompts without mask tokens"):
        mdsample.generate(TinyLM(), p, steps=8, gen_length=8, block_length=4, mask_id=MASK, credit=True)


def test_bad_prompt():
    with pytest.raises(TypeError, match="prompt"):
        mdsample.generate(TinyLM(), torch.zeros(2, 3), mask_id=MASK)
    with pytest.raises(ValueError, match="prompt"):
        mdsample.generate(TinyLM(), torch.zeros(2, 3, 4, dtype=torch.long), mask_id=MASK)


def test_every_backend_gives_the_same_tokens(fast_backend, device):
    model, p = TinyLM().to(device), prompts(B=2, P=3).to(device)
    kw = dict(steps=2, gen_length=4, block_length=2, mask_id=MASK, temperature=0.8, seed=5, threshold=0.5)
    ref = mdsample.generate(model, p, backend="reference", **kw)
    assert torch.equal(mdsample.generate(model, p, backend=fast_backend, **kw), ref)


def upto_first(row: list, eos: int) -> list:
    """A row's tokens up to and including its first EOS (the text a user keeps)."""
    return row[: row.index(eos) + 1] if eos in row else row


def assert_eos_stop(out, full, plen, eos):
    """Same text up to the first EOS as the full run, EOS after it."""
    assert torch.equal(out[:, :plen], full[:, :plen])
    for got, want in zip(out[:, plen:].tolist(), full[:, plen:].tolist()):
        assert upto_first(got, eos) == upto_first(want, eos)
        if eos in got:
            assert set(got[got.index(eos):]) == {eos}


@pytest.mark.parametrize("kw", [dict(), dict(threshold=0.5), dict(cfg_scale=1.0),
                                dict(remasking="random", temperature=1.0), dict(factor=1.0, remasking="entropy")])
def test_eos_id_stops_rows_without_changing_their_text(kw):
    """For every token taken as EOS: the text up to the first EOS is the full run's, and rows past it are
    not forwarded (some choice of EOS must save forwards, else the shortcut is never taken)."""
    model, p = TinyLM(), prompts(B=4, P=3)
    args = dict(steps=8, gen_length=16, block_length=4, mask_id=MASK, seed=2, **kw)
    full_model = LogitsOnly(model)
    full = mdsample.generate(full_model, p, **args)
    saved = 0
    for eos in range(MASK):
        counted = LogitsOnly(model)
        out = mdsample.generate(counted, p, eos_id=eos, **args)
        assert_eos_stop(out, full, 3, eos)
        assert counted.rows <= full_model.rows
        saved += counted.rows < full_model.rows
    assert saved > 0


def test_eos_id_errors():
    with pytest.raises(ValueError, match="eos_id"):
        mdsample.generate(TinyLM(), prompts(), steps=4, gen_length=4, block_length=4, mask_id=MASK, eos_id=MASK)
    with pytest.raises(ValueError, match="eos_id 12 is not a token"):
        mdsample.generate(TinyLM(), prompts(), steps=4, gen_length=4, block_length=4, mask_id=MASK, eos_id=V)


def test_truncation_changes_the_commits():
    """top-p / top-k reshape the confidences even at T = 0 (else the truncated cases above prove little)."""
    model, p = TinyLM(scale=2.0), prompts()  # flatter than the default: truncation bites
    kw = dict(steps=12, gen_length=12, block_length=12, remasking="entropy")
    plain = mdsample.generate(model, p, mask_id=MASK, **kw)
    for trunc in (dict(top_p=0.7), dict(top_k=2)):
        out = mdsample.generate(model, p, mask_id=MASK, **trunc, **kw)
        assert not torch.equal(out, plain)
        assert torch.equal(out, reference_generate(model, p, **trunc, **kw))
    with pytest.raises(ValueError, match="cfg_scale"):
        mdsample.generate(model, p, mask_id=MASK, top_p=0.7, cfg_scale=1.0, **kw)
