"""BD3-LM block diffusion: the exact block-causal KV cache equals the uncached computation."""
import itertools
import math

import pytest
import torch

import mdsample
import requires
from mdsample.models import Transformer
from sampler_oracles import JointOracle, PrefixOracle, chi_square_pvalue, count_rows, random_joint, reference_truncate

MASK = 127


def _model(bs):
    return Transformer.from_preset("tiny", attention="block_causal", block_size=bs, seed=0).eval()


@pytest.mark.parametrize("block_size", [4, 8, 16])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("steps", [None, 3])
def test_cached_equals_uncached(block_size, temperature, steps):
    m = _model(block_size)
    kw = dict(batch_size=3, length=32, block_size=block_size, mask_id=MASK, temperature=temperature, bos_id=0,
              seed=5, steps_per_block=steps)
    cached = mdsample.sample_bd3lm(m, **kw)
    uncached = mdsample.sample_bd3lm(m, use_cache=False, **kw)
    assert cached.shape == (3, 32)
    assert not (cached == MASK).any()
    assert (cached[:, 0] == 0).all()
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("steps", [None, 2])
def test_progress_bar(capsys, steps):
    """One bar step per sampler step (first-hitting: one per masked position), forwards against the
    published loop's one per sequence and step; the bar does not change the samples."""
    m = _model(4)
    kw = dict(batch_size=2, length=8, block_size=4, mask_id=MASK, bos_id=0, seed=1, steps_per_block=steps)
    out = mdsample.sample_bd3lm(m, progress=True, **kw)
    err = capsys.readouterr().err
    total = 7 if steps is None else 4
    assert "bd3lm" in err and f"{total}/{total}" in err and "saved" in err and "tok/s" in err
    assert torch.equal(out, mdsample.sample_bd3lm(m, **kw))


def test_seed_changes_output_and_is_reproducible():
    m = _model(4)
    kw = dict(batch_size=2, length=16, block_size=4, mask_id=MASK)
    a = mdsample.sample_bd3lm(m, seed=1, **kw)
    assert torch.equal(a, mdsample.sample_bd3lm(m, seed=1, **kw))
    assert not torch.equal(a, mdsample.sample_bd3lm(m, seed=2, **kw))


class _EosLoving(torch.nn.Module):
    """Delegates to a Transformer but boosts one token's logit (an EOS-happy model)."""

    def __init__(self, inner, eos, boost):
        super().__init__()
        self.inner, self.eos, self.boost = inner, eos, boost
        self.config = inner.config

    def forward(self, x):
        return self.head(self.inner.hidden(x))

    def hidden(self, x):
        return self.inner.hidden(x)

    def head(self, h):
        out = self.inner.head(h).clone()
        out[..., self.eos] += self.boost
        return out

    def new_cache(self, batch_size, max_len=None):
        return self.inner.new_cache(batch_size, max_len)

    @property
    def max_length(self):
        return self.inner.max_length


def test_variable_length_stop_at_eos():
    m = _EosLoving(_model(4), eos=3, boost=4.0)
    kw = dict(batch_size=2, length=64, block_size=4, mask_id=MASK, eos_id=3, temperature=1.0, seed=0)
    out = mdsample.sample_bd3lm(m, **kw)
    assert out.shape[1] < 64 and out.shape[1] % 4 == 0
    assert torch.equal(out, mdsample.sample_bd3lm(m, use_cache=False, **kw))
    for row in out:
        first = int((row == 3).nonzero()[0, 0])
        assert (row[first:] == 3).all()


class _Widest:
    """Records the widest input the model is given, forward or through the KV cache."""

    def __init__(self, inner):
        self.inner, self.config, self.widest = inner, inner.config, 0

    def _see(self, x):
        self.widest = max(self.widest, x.shape[1])

    def __call__(self, x):
        self._see(x)
        return self.inner(x)

    def hidden(self, x):
        self._see(x)
        return self.inner.hidden(x)

    def head(self, h):
        return self.inner.head(h)

    def new_cache(self, batch_size, max_len=None):
        cache, see = self.inner.new_cache(batch_size, max_len), self._see

        class Seen:
            def __getattr__(self, name):
                return getattr(cache, name)

            def hidden_block(self, x, start, **kw):
                see(x)
                assert start + x.shape[1] <= 12, (start, x.shape)  # window-relative positions
                return cache.hidden_block(x, start, **kw)

        return Seen()

    @property
    def max_length(self):
        return self.inner.max_length


@pytest.mark.parametrize("steps", [None, 2])
def test_window_shifts_left_beyond_the_context(steps):
    """A canvas longer than the model's context (14 -> a 12-position window of 4-blocks): the model
    never sees more than the window, cached equals uncached, and until the first shift the tokens
    are those of a canvas that fits (batch 1: the Philox positions are the same)."""
    inner = Transformer.from_preset("tiny", attention="block_causal", block_size=4, max_seq_len=14, seed=0).eval()
    kw = dict(batch_size=1, block_size=4, mask_id=MASK, bos_id=0, seed=2, steps_per_block=steps, temperature=1.0)
    for use_cache in (True, False):
        m = _Widest(inner)
        long = mdsample.sample_bd3lm(m, length=32, use_cache=use_cache, **kw)
        assert m.widest <= 12 and long.shape == (1, 32) and not (long == MASK).any()
        if use_cache:
            cached = long
    assert torch.equal(cached, long)
    short = mdsample.sample_bd3lm(inner, length=12, **kw)
    assert torch.equal(cached[:, :12], short)
    with pytest.raises(ValueError, match="shorter than a block"):
        mdsample.sample_bd3lm(Transformer.from_preset("tiny", attention="block_causal", block_size=4, max_seq_len=3),
                              length=8, **kw)


def test_argument_errors():
    m = _model(4)
    with pytest.raises(ValueError):
        mdsample.sample_bd3lm(m, batch_size=1, length=10, block_size=4, mask_id=MASK)
    with pytest.raises(ValueError):
        mdsample.sample_bd3lm(m, batch_size=1, length=16, block_size=8, mask_id=MASK)
    with pytest.raises(ValueError):
        mdsample.sample_bd3lm(m, batch_size=1, length=16, block_size=4, mask_id=MASK, steps_per_block=2,
                              first_hitting=True)
    with pytest.raises(ValueError):
        mdsample.sample_bd3lm(Transformer.from_preset("tiny"), batch_size=1, length=16, block_size=4, mask_id=MASK)
    with pytest.raises(ValueError, match="shifted"):
        mdsample.sample_bd3lm(mdsample.models.shifted(m), batch_size=1, length=16, block_size=4, mask_id=MASK)


# --- The sampler's law on an oracle with a known joint, BD3-LM's nucleus and low-entropy check ---

ALPHA = 1e-3  # per chi-square test; fixed seeds, so each test is deterministic


def _keep_bd3lm(probs, top_p):
    """BD3-LM's nucleus of a probability list (the sorted-list reference), renormalised: {token: probability}."""
    kept = torch.softmax(reference_truncate(torch.tensor(probs, dtype=torch.float64).log(), 1.0, top_p, None, None,
                                            rule="bd3lm"), 0)
    return {v: float(q) for v, q in enumerate(kept) if q > 0}


def _walk_law(oracle, block_size, top_p, steps):
    """Exact law of BD3-LM on the oracle, by walking every reveal. First-hitting (``steps`` None): each masked
    position of the block is next with equal probability. Ancestral: at step i of S each masked position of the
    block is revealed independently with prob dt / t_i on upstream's grid t = linspace(1, 0, S), dt = 1 / S (1 at
    t = 0), written here as (S - 1) / (S (S - 1 - i)). Revealed tokens are drawn
    independently from the (nucleus-truncated) exact conditionals given the positions revealed before the step."""
    law = {}

    def dist(state, i):
        cond = oracle.cond_lists[tuple(state)][i]
        return _keep_bd3lm(cond, top_p) if top_p is not None else dict(enumerate(cond))

    def fill(before, partial, reveal, p, then):  # every token of a step drawn given the state before it
        if not reveal:
            return then(partial, p)
        for v, q in dist(before, reveal[0]).items():
            nxt = list(partial)
            nxt[reveal[0]] = v
            fill(before, nxt, reveal[1:], p * q, then)

    def walk(state, p, step):
        masked = [i for i, a in enumerate(state) if a == oracle.mask_id]
        if not masked:
            law[tuple(state)] = law.get(tuple(state), 0.0) + p
            return
        start = masked[0] // block_size * block_size  # the current block: the first with a masked position
        here = [i for i in masked if i < start + block_size]
        if steps is None:
            for i in here:
                fill(state, state, [i], p / len(here), lambda st, pp: walk(st, pp, 0))
            return
        last = step == steps - 1
        r = 1.0 if last or steps == 1 else min(1.0, (steps - 1) / (steps * (steps - 1 - step)))
        for chosen in itertools.product((False, True), repeat=len(here)):
            sel = [i for i, c in zip(here, chosen) if c]
            w = r ** len(sel) * (1 - r) ** (len(here) - len(sel))
            if w == 0.0:
                continue
            done_block = len(sel) == len(here)
            fill(state, state, sel, p * w, lambda st, pp: walk(st, pp, 0 if done_block or last else step + 1))

    walk([oracle.mask_id] * oracle.L, 1.0, 0)
    return law


def _oracle(vocab, length, seed):
    return JointOracle(random_joint(vocab, length, seed))


@pytest.mark.parametrize("top_p", [None, 0.6])
@requires.cpu_backend
@pytest.mark.parametrize("steps", [None, 2, 4])
def test_law_is_the_joint_or_its_nucleus_walk(top_p, steps):
    """T = 1 on an oracle of exact conditionals: without top-p any reveal order gives the joint (first-hitting
    and ancestral); with top-p the law is the walk over first-hitting's uniformly random orders, each token
    from BD3-LM's nucleus of its conditional. Chi-square, P(false alarm) = ALPHA."""
    oracle = _oracle(3, 4, seed=11)
    for cond in oracle.cond_lists.values():  # the nucleus is well posed: no cumulative mass within 1e-6 of p
        for row in cond:
            c = torch.tensor(sorted(row, reverse=True)).cumsum(0)
            assert top_p is None or bool(((c - top_p).abs() > 1e-6).all())
    out = mdsample.sample_bd3lm(PrefixOracle(oracle), batch_size=20000, length=4, block_size=2, mask_id=oracle.mask_id,
                                steps_per_block=steps, top_p=top_p, seed=3, use_cache=False, backend="cpu")
    law = _walk_law(oracle, 2, top_p, steps)
    assert abs(sum(law.values()) - 1.0) < 1e-9
    if top_p is None and steps is None:  # exact conditionals one at a time: the joint itself
        assert max(abs(law[k] - p) for k, p in oracle.joint_probs().items()) < 1e-12
    assert chi_square_pvalue(count_rows(out), law) > ALPHA


def test_the_nucleus_law_is_not_the_joint():
    """The walk above is a different law (the test would see a sampler that ignores top_p)."""
    oracle = _oracle(3, 4, seed=11)
    law, joint = _walk_law(oracle, 2, 0.6, None), oracle.joint_probs()
    assert sum(abs(law.get(k, 0.0) - p) for k, p in joint.items()) > 0.3


@requires.cpu_backend
def test_low_entropy_rejection_law():
    """Length 6, blocks of 2, window 2, min_entropy 0.5: the check runs after the blocks ending at 4 and 6 (not
    2: only past the window) and rejects equal neighbours, so the law is the joint given x2 != x3 and x4 != x5
    (chi-square, P(false alarm) = ALPHA), and no returned row breaks it (a check at the last block only would
    return rows with x2 == x3)."""
    oracle = _oracle(2, 6, seed=4)
    out = mdsample.sample_bd3lm(PrefixOracle(oracle), batch_size=12000, length=6, block_size=2, mask_id=oracle.mask_id,
                                min_entropy=0.5, entropy_window=2, max_attempts=100, seed=8, use_cache=False,
                                backend="cpu")
    assert ((out[:, 2] != out[:, 3]) & (out[:, 4] != out[:, 5])).all()
    joint = {s: p for s, p in oracle.joint_probs().items() if s[2] != s[3] and s[4] != s[5]}
    z = sum(joint.values())
    assert chi_square_pvalue(count_rows(out), {s: p / z for s, p in joint.items()}) > ALPHA
    assert (out[:, 0] == out[:, 1]).any()  # the first block is never checked


def test_unigram_entropy_matches_unique_counts():
    from mdsample.samplers.low_entropy import unigram_entropy

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 7, (50, 33), generator=g)
    x[0] = 4  # one token: 0 nats
    got = unigram_entropy(x)
    for r in range(x.shape[0]):
        _, c = torch.unique(x[r], return_counts=True)
        p = c.double() / c.sum()
        assert abs(float(got[r]) - float(-(p * p.log()).sum())) < 1e-12
    assert float(got[0]) == 0.0
    assert abs(float(unigram_entropy(torch.arange(256).unsqueeze(0))[0]) - math.log(256)) < 1e-12


def _repetitive(bs, token=7, boost=30.0):
    return _EosLoving(_model(bs), eos=token, boost=boost)  # every draw is `token`: entropy 0


def test_low_entropy_with_eos_ends_the_sequence_before_the_window():
    """Variable length: a sequence failing the check after the block ending at e is cut at e - window (upstream's
    truncation), the rest EOS; every row fails at e = 12, so the run stops there."""
    kw = dict(batch_size=3, length=32, block_size=4, mask_id=MASK, eos_id=3, min_entropy=1.0, entropy_window=8, seed=0)
    for use_cache in (True, False):
        out = mdsample.sample_bd3lm(_repetitive(4), use_cache=use_cache, **kw)
        assert out.shape == (3, 12)
        assert (out[:, :4] == 7).all() and (out[:, 4:] == 3).all()


class _SevensThenEos(torch.nn.Module):
    """Draws 7 everywhere except EOS (3) at position 9: uncached only (it scores by position)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, x):
        out = torch.full((*x.shape, 128), -30.0)
        out[..., 7] = 30.0
        if x.shape[1] > 9:
            out[:, 9, 7], out[:, 9, 3] = -30.0, 30.0
        return out


def test_a_cut_in_the_block_of_the_first_eos_still_applies():
    """The check fails at the block ending at 12 (cut at 4) in the same block where the first EOS (9) appears:
    the sequence ends at the earlier of the two, the cut."""
    out = mdsample.sample_bd3lm(_SevensThenEos(_model(4)), batch_size=2, length=32, block_size=4, mask_id=MASK,
                                eos_id=3, min_entropy=1.0, entropy_window=8, use_cache=False, seed=0)
    assert out.shape == (2, 12)
    assert (out[:, :4] == 7).all() and (out[:, 4:] == 3).all()
    plain = mdsample.sample_bd3lm(_SevensThenEos(_model(4)), batch_size=2, length=32, block_size=4, mask_id=MASK,
                                  eos_id=3, use_cache=False, seed=0)
    assert (plain[:, :9] == 7).all() and (plain[:, 9:] == 3).all()  # without the check: the EOS ends it


def test_rows_failing_every_attempt_warn_and_come_back_whole(capsys):
    kw = dict(batch_size=2, length=16, block_size=4, mask_id=MASK, min_entropy=1.0, entropy_window=8, seed=0,
              max_attempts=3, progress=True)
    with pytest.warns(RuntimeWarning, match="2 of 2 sequences failed the low-entropy check.*all 3 attempts"):
        out = mdsample.sample_bd3lm(_repetitive(4), **kw)
    assert out.shape == (2, 16) and (out == 7).all()
    # attempts 1 and 2 stop after the block ending at 12 (every row rejected), the last runs to the end
    assert "40/40" in capsys.readouterr().err


@pytest.mark.parametrize("use_cache", [True, False])
def test_redraws_are_batch_invariant_and_cached_equals_uncached(use_cache):
    """A redrawn row depends only on its index, the seed and its attempt: rows of a batch of 2 equal the first
    two of a batch of 5, with and without the cache (both with the nucleus), and some rows were redrawn."""
    m = _model(4)
    kw = dict(length=24, block_size=4, mask_id=MASK, top_p=0.9, min_entropy=2.45, entropy_window=12, seed=6,
              temperature=0.7, max_attempts=100)
    five = mdsample.sample_bd3lm(m, batch_size=5, use_cache=use_cache, **kw)
    two = mdsample.sample_bd3lm(m, batch_size=2, use_cache=use_cache, **kw)
    assert torch.equal(five[:2], two)
    assert torch.equal(five, mdsample.sample_bd3lm(m, batch_size=5, use_cache=not use_cache, **kw))
    from mdsample.samplers.low_entropy import unigram_entropy

    for e in (16, 20, 24):
        assert (unigram_entropy(five[:, e - 12:e]) >= 2.45).all()  # 12 distinct tokens: log 12 = 2.48
    plain = mdsample.sample_bd3lm(m, batch_size=5, **{**kw, "min_entropy": None})
    assert not torch.equal(plain, five)


def test_a_check_that_can_never_run_warns():
    """Upstream checks only past 256 tokens: a shorter canvas with min_entropy gets the model's law, and a warning."""
    with pytest.warns(RuntimeWarning, match=r"min_entropy has no effect.*entropy_window \(256\).*length is 16"):
        out = mdsample.sample_bd3lm(_repetitive(4), batch_size=1, length=16, block_size=4, mask_id=MASK,
                                    min_entropy=4.0)
    assert (out == 7).all()


def test_low_entropy_and_nucleus_argument_errors():
    m = _model(4)
    kw = dict(batch_size=1, length=16, block_size=4, mask_id=MASK)
    for bad, err in ((dict(min_entropy=-1.0), ValueError), (dict(entropy_window=0), ValueError),
                     (dict(max_attempts=0), ValueError), (dict(top_p=0.0), ValueError), (dict(top_p=1.5), ValueError),
                     (dict(min_entropy="4"), TypeError), (dict(entropy_window=2.0), TypeError)):
        name = next(iter(bad))
        with pytest.raises(err, match=name):
            mdsample.sample_bd3lm(m, **kw, **bad)


def test_bos_that_is_also_eos_does_not_end_the_sequence():
    """GPT-2's tokenizer (BD3-LM's OWT models) has BOS = EOS: the BOS at position 0 is not an end of sequence, a
    generated EOS is (upstream stops at more than one EOS)."""
    m = _model(4)
    kw = dict(batch_size=2, length=32, block_size=4, mask_id=MASK, bos_id=5, seed=0, temperature=1.0)
    plain = mdsample.sample_bd3lm(m, **kw)
    assert not (plain[:, 1:] == 5).any()  # this model and seed never draw token 5
    assert torch.equal(mdsample.sample_bd3lm(m, eos_id=5, **kw), plain)
    eos_happy = _EosLoving(m, eos=5, boost=4.0)
    out = mdsample.sample_bd3lm(eos_happy, eos_id=5, **kw)
    assert out.shape[1] < 32 and (out[:, 0] == 5).all()
    for row in out:
        first = 1 + int((row[1:] == 5).nonzero()[0, 0])
        assert (row[first:] == 5).all() and not (row[1:first] == 5).any()


def test_a_min_entropy_the_window_cannot_reach_is_refused():
    """16 tokens hold at most log 16 = 2.77 nats: min_entropy 4 would fail every attempt."""
    model = mdsample.models.Transformer.from_preset("tiny", attention="block_causal", block_size=4, seed=0)
    with pytest.raises(ValueError, match="min_entropy=4.0 can never pass"):
        mdsample.sample_bd3lm(model, batch_size=1, length=32, block_size=4, mask_id=127, min_entropy=4.0,
                              entropy_window=16)
