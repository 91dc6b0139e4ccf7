"""sample_mdlm against exact distributions of an oracle backbone, and against a plain unmask_step loop.

Statistical tests: Pearson chi-square of sampled sequences against the exact
distribution (bins with expected count < 5 pooled); each test fails with probability
ALPHA = 1e-3 when the sampler is right (false-alarm rate), and the seeds are fixed, so a
run is deterministic.
"""
import itertools
import math

import pytest
import torch

import mdsample
from mdsample import unmask_step
from mdsample.samplers import get_schedule, time_grid
from sampler_oracles import (
    HeadOracle,
    JointOracle,
    TimeOracle,
    ancestral_distribution,
    chi_square_pvalue,
    count_rows,
    random_joint,
    total_variation,
)

ALPHA = 1e-3
JOINT = random_joint(3, 4, seed=7)  # 81 sequences of length 4 over 3 tokens; mask id 3


def draw(oracle, n, batches=2, **kw):
    """n sequences in `batches` calls with different seeds (per-call memory stays small)."""
    outs = [mdsample.sample_mdlm(oracle, batch_size=n // batches, length=oracle.L, mask_id=oracle.mask_id,
                                 seed=1000 + b, **kw) for b in range(batches)]
    return torch.cat(outs)


def product_of_marginals(oracle, state):
    cond = oracle.cond[state]
    return {s: math.prod(float(cond[i, v]) for i, v in enumerate(s))
            for s in itertools.product(range(oracle.Vr), repeat=oracle.L)}


def test_one_step_gives_product_of_marginals():
    oracle = JointOracle(JOINT)
    x = draw(oracle, 6000, steps=1, eps=0.0)
    expected = product_of_marginals(oracle, (oracle.mask_id,) * oracle.L)
    assert chi_square_pvalue(count_rows(x), expected) > ALPHA
    # Power check: the same samples are far from the joint, so the test can tell them apart.
    assert total_variation(expected, oracle.joint_probs()) > 0.1
    assert chi_square_pvalue(count_rows(x), oracle.joint_probs()) < ALPHA


@pytest.mark.parametrize("kind,schedule,steps", [
    ("full", "loglinear", 4),
    ("head", "loglinear", 4),
    ("time", "cosine", 3),
    ("head", "cosine-mdlm", 5),
])
def test_ancestral_matches_exact_distribution(kind, schedule, steps):
    cls = {"full": JointOracle, "head": HeadOracle, "time": TimeOracle}[kind]
    oracle = cls(JOINT)
    x = draw(oracle, 6000, steps=steps, eps=1e-5, schedule=schedule, time_conditioned=kind == "time")
    exact = ancestral_distribution(oracle, steps=steps, eps=1e-5, schedule=schedule)
    assert abs(sum(exact.values()) - 1) < 1e-9
    assert chi_square_pvalue(count_rows(x), exact) > ALPHA


def test_many_steps_approach_the_joint():
    oracle = HeadOracle(JOINT)
    exact = ancestral_distribution(oracle, steps=200, eps=1e-5)
    assert total_variation(exact, oracle.joint_probs()) < 0.01
    x = draw(oracle, 6000, steps=200, eps=1e-5)
    assert chi_square_pvalue(count_rows(x), exact) > ALPHA


@pytest.mark.parametrize("cls", [JointOracle, HeadOracle, TimeOracle])
def test_first_hitting_reproduces_the_joint(cls):
    oracle = cls(JOINT)
    n = 6000
    x = draw(oracle, n, steps=1, first_hitting=True, time_conditioned=cls is TimeOracle)
    assert chi_square_pvalue(count_rows(x), oracle.joint_probs()) > ALPHA
    # Exactly one reveal per sequence per call: L calls per batch, each with the whole batch.
    assert oracle.calls == [n // 2] * (2 * oracle.L)
    if cls is HeadOracle:
        assert oracle.head_rows == n * oracle.L


def test_first_hitting_times_are_first_hitting_times():
    """Time-conditioned first hitting: sigma at the k-th call is that of t_k = t_{k-1} u^(1/n) (loglinear)."""
    oracle = TimeOracle(JOINT)
    mdsample.sample_mdlm(oracle, batch_size=5000, length=4, mask_id=3, steps=1, first_hitting=True,
                         time_conditioned=True, seed=3)
    sched = get_schedule("loglinear")
    t = [sched.t_for_mask_prob(-torch.expm1(-s.double())) for s in oracle.sigmas]
    # E[t_1] = E[u^(1/4)] = 4/5; E[t_4] = prod_k E[u^(1/k)] = 4/5 * 3/4 * 2/3 * 1/2 = 1/5.
    # Standard errors with 5000 sequences are ~0.0023 and ~0.0024: the bounds are > 4 sigma.
    assert abs(float(t[0].mean()) - 0.8) < 0.01
    assert abs(float(t[3].mean()) - 0.2) < 0.01
    assert bool((t[1] < t[0]).all() and (t[3] < t[2]).all())


def test_prompt_and_first_hitting_give_the_conditional():
    oracle = HeadOracle(JOINT)
    prompt = torch.tensor([2, 0])
    x = draw(oracle, 6000, steps=1, first_hitting=True, prompt=prompt)
    assert bool((x[:, :2] == prompt).all())
    assert chi_square_pvalue(count_rows(x), oracle.conditional_joint([2, 0])) > ALPHA


def test_cfg_one_step_distribution():
    """One step (all revealed at once) with SMDM CFG: each position from softmax(l_u + (w+1)(l_c - l_u))."""
    oracle = HeadOracle(JOINT)
    w = 1.5
    prompt = [1]
    x = draw(oracle, 6000, steps=1, eps=0.0, prompt=torch.tensor(prompt), cfg_scale=w)
    cond = oracle.cond[(1, 3, 3, 3)].log()
    unc = oracle.cond[(3, 3, 3, 3)].log()
    guided = torch.softmax(unc + (w + 1) * (cond - unc), -1)
    expected = {(1,) + s: math.prod(float(guided[i + 1, v]) for i, v in enumerate(s))
                for s in itertools.product(range(3), repeat=3)}
    assert chi_square_pvalue(count_rows(x), expected) > ALPHA
    assert all(c % 2 == 0 for c in oracle.calls)  # conditional and unconditional in one doubled batch


def plain_loop(oracle, *, batch, length, steps, eps=1e-5, schedule="loglinear", seed=0, prompt=None,
               cfg_scale=0.0, time_conditioned=False, temperature=1.0, noise_removal="greedy", offset_base=0,
               pos=None, x=None, uncond=None):
    """MDLM ancestral sampling the plain way: every step, full logits of every sequence, then unmask_step."""
    sched = get_schedule(schedule)
    grid = time_grid(steps, eps)
    if x is None:
        x = torch.full((batch, length), oracle.mask_id)
        if prompt is not None:
            x[:, : len(prompt)] = prompt
    if pos is None:
        pos = torch.arange(batch).unsqueeze(1) * length + torch.arange(length)
    if uncond is None and prompt is not None:
        uncond = torch.zeros_like(x, dtype=torch.bool)
        uncond[:, : len(prompt)] = True

    def logits(x, t):
        kw = {"sigma": sched.sigma(t).float().expand(x.shape[0])} if time_conditioned else {}
        if cfg_scale > 0:
            both = oracle(torch.cat([x, x.masked_fill(uncond, oracle.mask_id)]), **kw) if not time_conditioned \
                else oracle(torch.cat([x, x.masked_fill(uncond, oracle.mask_id)]),
                            sigma=torch.cat([kw["sigma"], kw["sigma"]]))
            return both[: x.shape[0]], both[x.shape[0]:]
        return oracle(x, **kw), None

    for k in range(steps):
        lc, lu = logits(x, grid[k])
        p = float(sched.reveal_prob(grid[k], grid[k + 1]))
        x = unmask_step(lc, x, mask_id=oracle.mask_id, reveal_prob=p, temperature=temperature, seed=seed,
                        offset=offset_base + k, positions=pos, guidance=lu, guidance_scale=cfg_scale if lu is not None else 0.0)
    if noise_removal != "none":
        lc, lu = logits(x, grid[-1])
        temp = 0.0 if noise_removal == "greedy" else temperature
        x = unmask_step(lc, x, mask_id=oracle.mask_id, reveal_prob=1.0, temperature=temp, seed=seed,
                        offset=offset_base + steps, positions=pos, guidance=lu,
                        guidance_scale=cfg_scale if lu is not None else 0.0)
    return x


@pytest.mark.parametrize("cls", [JointOracle, HeadOracle, TimeOracle])
@pytest.mark.parametrize("cfg", [0.0, 2.0])
def test_shortcuts_give_the_plain_loop_token_for_token(cls, cfg):
    """Reveal-first, per-sequence skipping and head-only rows change nothing, bit for bit."""
    oracle = cls(JOINT)
    tc = cls is TimeOracle
    prompt = torch.tensor([1]) if cfg else None
    kw = dict(steps=7, eps=1e-3, seed=11, cfg_scale=cfg, time_conditioned=tc, temperature=0.8)
    fast = mdsample.sample_mdlm(oracle, batch_size=64, length=4, mask_id=3, prompt=prompt, **kw)
    plain = plain_loop(cls(JOINT), batch=64, length=4, prompt=prompt, **kw)
    assert torch.equal(fast, plain)


def test_forwards_and_rows_are_saved():
    oracle = HeadOracle(JOINT)
    n, steps = 200, 50
    mdsample.sample_mdlm(oracle, batch_size=n, length=4, mask_id=3, steps=steps)
    # Each position is drawn exactly once (steps or the greedy fill): N * L head rows, not steps * N * L.
    assert oracle.head_rows == n * 4
    # A sequence is forwarded only at steps where it reveals something: at most L times.
    assert sum(oracle.calls) <= n * 4
    assert sum(oracle.calls) < (steps + 1) * n / 10


def test_noise_removal_modes():
    oracle = HeadOracle(JOINT)
    none = mdsample.sample_mdlm(oracle, batch_size=500, length=4, mask_id=3, steps=2, eps=0.5, noise_removal="none")
    assert bool((none == 3).any())  # reveal prob (1 - 0.5)/1 per step leaves masks behind
    for mode in ("greedy", "ancestral"):
        out = mdsample.sample_mdlm(oracle, batch_size=500, length=4, mask_id=3, steps=2, eps=0.5, noise_removal=mode)
        assert bool((out < 3).all())
    greedy = mdsample.sample_mdlm(oracle, batch_size=500, length=4, mask_id=3, steps=2, eps=0.5,
                                  noise_removal="greedy", seed=0)
    # Greedy fills exactly the positions left masked, with the argmax of their conditional.
    for row_none, row in zip(none.tolist(), greedy.tolist()):
        state = tuple(row_none)
        for i, a in enumerate(state):
            if a == 3:
                assert row[i] == int(oracle.cond[state][i].argmax())
            else:
                assert row[i] == a


def test_strides_equal_plain_windows():
    joint = random_joint(3, 3, seed=5)
    length, window, stride, batch, steps = 7, 3, 2, 40, 4
    oracle = HeadOracle(joint)
    out = mdsample.sample_mdlm(oracle, batch_size=batch, length=length, mask_id=3, steps=steps,
                               stride=(window, stride), seed=9, prompt=torch.tensor([2]))
    assert out.shape == (batch, length)
    assert all(c in (batch,) or c <= batch for c in oracle.calls)
    ref = torch.full((batch, length), 3)
    ref[:, 0] = 2
    pos = torch.arange(batch).unsqueeze(1) * length + torch.arange(length)
    plain_oracle = JointOracle(joint)
    for w, a in enumerate(range(0, length - window + 1, stride)):
        ref[:, a:a + window] = plain_loop(plain_oracle, batch=batch, length=window, steps=steps, seed=9,
                                          offset_base=w << 32, pos=pos[:, a:a + window],
                                          x=ref[:, a:a + window].clone())
    assert torch.equal(out, ref)
    # The model only ever saw windows.
    class Width:
        def __init__(self):
            self.widths = set()

        def __call__(self, x):
            self.widths.add(x.shape[1])
            return plain_oracle(x)
    spy = Width()
    mdsample.sample_mdlm(spy, batch_size=4, length=length, mask_id=3, steps=2, stride=(window, stride))
    assert spy.widths == {window}


def test_stride_int_uses_model_max_length():
    oracle = JointOracle(random_joint(3, 3, seed=5))
    oracle.max_length = 3
    out = mdsample.sample_mdlm(oracle, batch_size=2, length=5, mask_id=3, steps=2, stride=1)
    assert out.shape == (2, 5) and bool((out < 3).all())
    del oracle.max_length
    with pytest.raises(ValueError, match="stride"):
        mdsample.sample_mdlm(oracle, batch_size=2, length=5, mask_id=3, steps=2, stride=1)


@pytest.mark.parametrize("first_hitting", [False, True])
def test_reproducible_and_batch_invariant(first_hitting):
    oracle = HeadOracle(JOINT)
    kw = dict(length=4, mask_id=3, steps=6, seed=5, first_hitting=first_hitting)
    big = mdsample.sample_mdlm(oracle, batch_size=50, **kw)
    small = mdsample.sample_mdlm(oracle, batch_size=7, **kw)
    assert torch.equal(big[:7], small)
    assert torch.equal(big, mdsample.sample_mdlm(oracle, batch_size=50, **kw))
    assert not torch.equal(big, mdsample.sample_mdlm(oracle, batch_size=50, **{**kw, "seed": 6}))


def test_does_not_use_the_global_rng():
    oracle = HeadOracle(JOINT)
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    a = mdsample.sample_mdlm(oracle, batch_size=30, length=4, mask_id=3, steps=5, first_hitting=True)
    b = mdsample.sample_mdlm(oracle, batch_size=30, length=4, mask_id=3, steps=5)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG was not consumed
    torch.manual_seed(123)
    assert torch.equal(a, mdsample.sample_mdlm(oracle, batch_size=30, length=4, mask_id=3, steps=5,
                                               first_hitting=True))
    assert torch.equal(b, mdsample.sample_mdlm(oracle, batch_size=30, length=4, mask_id=3, steps=5))


@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(batch_size=2.0), TypeError, "batch_size"),
    (dict(length=0), ValueError, "length"),
    (dict(steps=0), ValueError, "steps"),
    (dict(mask_id=-1), ValueError, "mask_id"),
    (dict(mask_id=7), ValueError, "mask_id"),
    (dict(eps=1.0), ValueError, "eps"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(cfg_scale=1.0), ValueError, "cfg_scale"),
    (dict(noise_removal="argmax"), ValueError, "noise_removal"),
    (dict(schedule="linear"), ValueError, "schedule"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(first_hitting=1), TypeError, "first_hitting"),
    (dict(prompt=torch.tensor([0.5])), TypeError, "prompt"),
    (dict(prompt=torch.tensor([1, 2, 0, 1, 2])), ValueError, "prompt"),
    (dict(prompt=torch.tensor([[1], [2], [0]])), ValueError, "prompt"),
    (dict(prompt=[1, 2]), TypeError, "prompt"),
    (dict(stride=(3, 2)), ValueError, "length"),
    (dict(stride=(2, 3)), ValueError, "stride"),
    (dict(stride=(2, 3, 4)), ValueError, "stride"),
])
def test_bad_arguments_name_the_argument(kwargs, exc, name):
    args = dict(batch_size=2, length=4, mask_id=3, steps=2)
    args.update(kwargs)
    with pytest.raises(exc, match=name):
        mdsample.sample_mdlm(JointOracle(JOINT), **args)


def test_bad_model_output_is_reported():
    with pytest.raises(ValueError, match="mask_id"):  # no vocab_size declared: checked on the first output
        mdsample.sample_mdlm(lambda x: torch.zeros(x.shape[0], x.shape[1], 5), batch_size=2, length=4, mask_id=5,
                             steps=2)
    with pytest.raises(ValueError, match="model must return"):
        mdsample.sample_mdlm(lambda x: torch.zeros(x.shape[0], 5), batch_size=2, length=4, mask_id=3, steps=2)
    with pytest.raises(TypeError, match="model must return"):
        mdsample.sample_mdlm(lambda x: "logits", batch_size=2, length=4, mask_id=3, steps=2)
    with pytest.raises(TypeError, match="model must be callable"):
        mdsample.sample_mdlm(object(), batch_size=2, length=4, mask_id=3, steps=2)


def test_progress_bar(capsys):
    mdsample.sample_mdlm(HeadOracle(JOINT), batch_size=8, length=4, mask_id=3, steps=10, progress=True)
    err = capsys.readouterr().err
    assert "mdlm" in err and "saved" in err and "tok/s" in err and "10/10" in err


def test_every_backend_gives_the_same_samples(fast_backend, device):
    """Same keys, same tokens on every compiled backend (DESIGN.md §3); tiny sizes so interpreted Triton stays quick."""
    oracle = HeadOracle(JOINT).to(device)
    kw = dict(batch_size=8, length=4, mask_id=3, steps=3, seed=21, temperature=0.9)
    ref = mdsample.sample_mdlm(oracle, backend="reference", **kw)
    assert torch.equal(mdsample.sample_mdlm(oracle, backend=fast_backend, **kw), ref)
    plain = JointOracle(JOINT).to(device)
    assert torch.equal(mdsample.sample_mdlm(plain, backend=fast_backend, **kw), ref)  # fused unmask_step path
