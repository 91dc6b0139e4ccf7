"""Fast-dLLM prefix / dual KV cache in mdsample.generate (approximate; agreement reported)."""
import json

import pytest
import torch

import mdsample
from mdsample.models import Backbone, Transformer
from mdsample.samplers import llada

MASK = 127
PLEN = 8


@pytest.fixture(scope="module")
def setup():
    m = Transformer.from_preset("tiny", seed=0).eval()
    prompt = torch.randint(0, MASK, (3, PLEN), generator=torch.Generator().manual_seed(1))
    return m, prompt


def _kw(t):
    return dict(steps=16, gen_length=32, block_length=8, temperature=t, mask_id=MASK, seed=3)


def test_protocol_detects_cache(setup):
    m, _ = setup
    assert Backbone(m).has_cache
    assert not Backbone(lambda x: x).has_cache
    with pytest.raises(TypeError):
        Backbone(lambda x: x).new_cache(1, 4)


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_refresh_every_step_is_exact(setup, mode, temperature):
    m, prompt = setup
    ref = mdsample.generate(m, prompt, **_kw(temperature))
    out = mdsample.generate(m, prompt, cache=mode, refresh_every=1, **_kw(temperature))
    assert torch.equal(out, ref)


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_agreement_with_uncached(setup, mode, record_property, capsys):
    m, prompt = setup
    report = {}
    for t in (0.0, 1.0):
        ref = mdsample.generate(m, prompt, **_kw(t))
        for every in (None, 2):
            out = mdsample.generate(m, prompt, cache=mode, refresh_every=every, **_kw(t))
            assert torch.equal(out[:, :PLEN], prompt) and not (out == MASK).any()
            same = out[:, PLEN:] == ref[:, PLEN:]
            report[f"T={t},refresh_every={every}"] = round(float(same.double().mean()), 4)
            if t == 0.0:
                # the first block's first step is a full forward; at T=0 this model keeps the whole
                # first block identical (the stale prompt K/V do not flip any argmax)
                assert torch.equal(out[:, PLEN:PLEN + 8], ref[:, PLEN:PLEN + 8])
    record_property(f"agreement_{mode}", json.dumps(report))
    with capsys.disabled():
        print(f"\n[cache={mode}] token agreement with uncached generate: {report}")
    assert min(report.values()) > 0.5


def test_cache_counts_and_errors(setup):
    m, prompt = setup
    with pytest.raises(ValueError):
        mdsample.generate(m, prompt, refresh_every=2, **_kw(0.0))
    with pytest.raises(ValueError):
        mdsample.generate(m, prompt, cache="both", **_kw(0.0))
    with pytest.raises(ValueError):
        mdsample.generate(lambda x: torch.zeros(*x.shape, 128), prompt, cache="prefix", **_kw(0.0))
    bad = prompt.clone()
    bad[0, 0] = MASK
    with pytest.raises(ValueError):
        mdsample.generate(m, bad, cache="dual", **_kw(0.0))
    with pytest.raises(ValueError):
        mdsample.generate(Transformer.from_preset("tiny", attention="causal"), prompt, cache="prefix", **_kw(0.0))


def test_cfg_with_cache_exact_when_refreshed(setup):
    m, prompt = setup
    kw = dict(_kw(1.0), cfg_scale=1.5)
    assert torch.equal(mdsample.generate(m, prompt, cache="prefix", refresh_every=1, **kw),
                       mdsample.generate(m, prompt, **kw))


@pytest.mark.parametrize("kw", [dict(cache="prefix"), dict(cache="dual", threshold=0.3)])
def test_eos_id_with_a_cache(setup, kw):
    """Cached runs forward the whole batch: they stop once every row has an EOS; the text up to it is kept."""
    from test_samplers_generate import assert_eos_stop

    m, prompt = setup
    calls = []
    hook = m.layers[0].register_forward_hook(lambda *a: calls.append(1))  # one per forward, cached or not
    try:
        full = mdsample.generate(m, prompt, **kw, **_kw(0.0))
        full_calls, stopped = len(calls), 0
        # EOS candidates: tokens the full run put in its first block (so early stops happen)
        for eos in sorted(set(full[:, PLEN:PLEN + 8].flatten().tolist()))[:6]:
            calls.clear()
            out = mdsample.generate(m, prompt, eos_id=eos, **kw, **_kw(0.0))
            assert_eos_stop(out, full, PLEN, eos)
            every_row = all(eos in row for row in full[:, PLEN:PLEN + 24].tolist())
            assert (len(calls) < full_calls) == every_row  # stops exactly when every row has an EOS
            stopped += every_row
    finally:
        hook.remove()
    assert stopped > 0  # some candidate stops the run early (else the check above is one-sided)


@pytest.mark.parametrize("fn,cache", [("generate", None), ("generate_with_prefix_cache", "prefix"),
                                      ("generate_with_dual_cache", "dual")])
@pytest.mark.parametrize("rule", [dict(), dict(threshold=0.3), dict(factor=1.0)], ids=["fixed", "threshold", "factor"])
def test_fast_dllm_dropins_return_tokens_and_nfe(setup, fn, cache, rule):
    """Upstream's positional signature; the tokens of mdsample.generate with that cache; nfe = the model calls."""
    from mdsample.compat import fast_dllm

    m, prompt = setup
    calls = []
    hook = m.layers[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        x, nfe = getattr(fast_dllm, fn)(m, prompt, 16, 32, 8, 0.0, "low_confidence", MASK, **rule)
    finally:
        hook.remove()
    assert nfe == len(calls) and (nfe == 16 if not rule else 0 < nfe <= 32)  # fixed: one forward per step
    want = mdsample.generate(m, prompt, steps=16, gen_length=32, block_length=8, mask_id=MASK, cache=cache, **rule)
    assert torch.equal(x, want)
    with pytest.raises(ValueError, match="remasking"):
        getattr(fast_dllm, fn)(m, prompt, 16, 32, 8, 0.0, "entropy", MASK)
    p, am = _padded(prompt, [PLEN, 5, 2])  # a left-padded batch through the keyword-only attention_mask
    x, _ = getattr(fast_dllm, fn)(m, p, 16, 32, 8, 0.0, "low_confidence", MASK, attention_mask=am, **rule)
    assert torch.equal(x, mdsample.generate(m, p, attention_mask=am, steps=16, gen_length=32, block_length=8,
                                            mask_id=MASK, cache=cache, **rule))


def _padded(prompt, lens):
    am = torch.zeros_like(prompt)
    for j, k in enumerate(lens):
        am[j, prompt.shape[1] - k:] = 1  # left padding
    return prompt.masked_fill(am == 0, 0), am


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("cfg", [0.0, 1.0])
def test_padded_batch_with_a_cache(setup, mode, cfg):
    """A left-padded batch: the cache hides the padding keys as the uncached forward does, so refreshing
    every step is the uncached computation; the padding changes the output (else this proves little)."""
    m, prompt = setup
    p, am = _padded(prompt, [PLEN, 5, 2])
    kw = dict(cfg_scale=cfg, **_kw(0.0))
    ref = mdsample.generate(m, p, attention_mask=am, **kw)
    assert torch.equal(mdsample.generate(m, p, attention_mask=am, cache=mode, refresh_every=1, **kw), ref)
    assert not torch.equal(ref, mdsample.generate(m, p, **kw))
    approx = mdsample.generate(m, p, attention_mask=am, cache=mode, **kw)
    assert approx.shape == ref.shape and bool((approx[:, PLEN:] != MASK).all())


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_padded_batch_with_dinfer_rules_and_a_cache(setup, mode):
    """dInfer's hierarchy rule and credit on a left-padded batch: with the cache refreshed every step the
    output is the uncached one (vicinity: a window over the whole canvas), in both loops."""
    m, prompt = setup
    p, am = _padded(prompt, [PLEN, 5, 2])
    kw = dict(_kw(1.0), low_threshold=0.3, credit=dict(alpha=2.0), eos_id=5)
    ref = mdsample.generate(m, p, attention_mask=am, **kw)
    extra = dict(vicinity=(64, 64)) if mode == "dual" else dict(refresh_every=1)
    assert torch.equal(mdsample.generate(m, p, attention_mask=am, cache=mode, **extra, **kw), ref)
    assert torch.equal(llada._generate(m, p, cache=mode, static_steps=False, **extra,
                                       **_internal_kw(dict(kw, attention_mask=am))), ref)
    assert not torch.equal(ref, mdsample.generate(m, p, attention_mask=am, **dict(kw, credit=None)))


def test_kept_graphs_take_each_calls_padding(setup):
    """StepGraphs reuse a call's cache for the next: its key mask is the new call's (CPU: the steps run eagerly)."""
    m, prompt = setup
    graphs = mdsample.StepGraphs()
    for lens in ([PLEN, 5, 2], [3, PLEN, 6]):
        p, am = _padded(prompt, lens)
        fresh = mdsample.generate(m, p, attention_mask=am, cache="dual", cuda_graph=True, **_kw(0.0))
        kept = mdsample.generate(m, p, attention_mask=am, cache="dual", cuda_graph=graphs, **_kw(0.0))
        assert torch.equal(kept, fresh)
    assert len(graphs) == 1


def test_padded_batch_needs_a_cache_that_takes_the_mask(setup):
    m, prompt = setup

    class OldCache:  # a cache-offering backbone whose new_cache predates attention masks
        config, vocab_size = m.config, m.config.vocab_size
        hidden, head = m.hidden, m.head

        def __call__(self, x, **kw):
            return m(x, **kw)

        def new_cache(self, batch_size, max_len=None):
            return m.new_cache(batch_size, max_len)

    p, am = _padded(prompt, [PLEN, 5, 2])
    with pytest.raises(TypeError, match="attention_mask"):
        mdsample.generate(OldCache(), p, attention_mask=am, cache="dual", **_kw(0.0))
    assert mdsample.generate(OldCache(), prompt, cache="dual", **_kw(0.0)).shape == (3, PLEN + 32)


def _internal_kw(kw):
    """What mdsample.generate passes to llada._generate, for the keywords ``kw`` of a test."""
    out = dict(temperature=0.0, cfg_scale=0.0, remasking="low_confidence", threshold=None, factor=None,
               attention_mask=None, backend="auto", progress=False)
    out.update(kw)
    return out


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("plen,gen", [(PLEN, 32), (0, 32), (0, 8)], ids=["prompt", "no-prompt", "one-block"])
@pytest.mark.parametrize("rule", [dict(), dict(threshold=0.3)], ids=["fixed", "threshold"])
def test_next_token_aligned_model_with_a_cache(setup, mode, plen, gen, rule):
    """Dream-style models (output i - 1 scores token i): with the cache refreshed every step, the shifted
    chunks give the uncached shifted computation, token for token, in the fixed-shape and step-by-step loops."""
    from mdsample.models import shifted
    from mdsample.models.shift import shift_rows

    m, prompt = setup
    dream_like = shifted(m)
    plain = lambda x, **kw: shift_rows(m(x, **kw), 1)  # noqa: E731  (no hidden/head, no cache)
    plain.vocab_size = m.config.vocab_size
    kw = dict(steps=gen // 2, gen_length=gen, block_length=8, mask_id=MASK, seed=3, **rule)
    p = prompt[:, :plen]
    ref = mdsample.generate(plain, p, **kw)
    assert torch.equal(mdsample.generate(dream_like, p, **kw), ref)
    assert not torch.equal(ref, mdsample.generate(m, p, **kw))  # the shift matters
    for static in (None, False):
        if static is False and not rule:
            continue  # the fixed schedule with a cache always takes the fixed-shape steps
        out = llada._generate(dream_like, p, cache=mode, refresh_every=1, static_steps=static, **_internal_kw(kw))
        assert torch.equal(out, ref), static
    approx = mdsample.generate(dream_like, p, cache=mode, **kw)
    assert bool((approx[:, plen:] != MASK).all())


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("shift", [0, 1])
@pytest.mark.parametrize("plen,gen", [(PLEN, 32), (0, 16), (0, 8)], ids=["prompt", "no-prompt", "one-block"])
@torch.no_grad()
def test_cached_rows_equal_the_refresh_when_nothing_changed(setup, mode, static, shift, plen, gen):
    """A cached call on an unchanged canvas reads K/V equal to what it would write: its rows (the block's,
    and for a shifted model the outputs one position earlier) equal the refresh's full forward."""
    from mdsample.models import shifted
    from mdsample.samplers.forward import CachedRowForward

    m, prompt = setup
    backbone = Backbone(shifted(m, shift))
    x = torch.cat([prompt[:, :plen], torch.randint(0, MASK, (3, gen), generator=torch.Generator().manual_seed(2))], 1)
    fwd = CachedRowForward(backbone, mode=mode, total=x.shape[1], batch_size=3, mask_id=MASK)
    everyone = torch.arange(3)
    for start in range(plen, plen + gen, 8):
        fwd.begin_block(x, start, start + 8, static=static)
        r_seq = torch.arange(3).repeat_interleave(8)
        r_pos = torch.arange(start, start + 8).repeat(3)
        full, _ = fwd.rows(x, everyone, r_seq, r_pos, refresh=True)
        cached, _ = fwd.rows(x, everyone, r_seq, r_pos, refresh=False)
        torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("trunc", [dict(top_p=0.6), dict(top_k=3, top_p=0.9)])
def test_truncation_in_the_fixed_shape_steps(setup, mode, trunc):
    """The fixed-shape steps truncate without host reads (one pass, the same set): refreshed every step
    they give the uncached run's tokens, with Dream's settings (entropy, T 0.2)."""
    m, prompt = setup
    kw = dict(remasking="entropy", **trunc, **_kw(0.2))
    ref = mdsample.generate(m, prompt, **kw)
    assert torch.equal(mdsample.generate(m, prompt, cache=mode, refresh_every=1, **kw), ref)
    assert not torch.equal(ref, mdsample.generate(m, prompt, remasking="entropy", **_kw(0.2)))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("rule", [dict(), dict(threshold=0.3)], ids=["fixed", "threshold"])
def test_vicinity_covering_the_canvas_is_exact(setup, temperature, rule):
    """dInfer's vicinity refresh: a window covering the whole canvas refreshes every K/V at every step,
    which is the uncached computation (fixed-shape steps and the step-by-step loop alike)."""
    m, prompt = setup
    kw = dict(_kw(temperature), **rule)
    ref = mdsample.generate(m, prompt, **kw)
    for static in (None, False):
        if static is False and not rule:
            continue  # the fixed schedule with a cache always takes the fixed-shape steps
        out = llada._generate(m, prompt, cache="dual", vicinity=(64, 64), static_steps=static, **_internal_kw(kw))
        assert torch.equal(out, ref), static
    assert not torch.equal(mdsample.generate(m, prompt, cache="dual", **kw), ref)  # the plain dual cache is not


@pytest.mark.parametrize("vicinity", [(0, 3), (5, 0), (2, 6), (20, 20)])
def test_vicinity_windows_fixed_shape_equal_step_by_step(setup, vicinity):
    """Windows cut at the canvas' start or end slide inside it, in both loops alike; (20, 20) covers all of it
    from some blocks but not others."""
    m, prompt = setup
    kw = dict(_kw(1.0), threshold=0.3, steps=8)
    step_by_step = llada._generate(m, prompt, cache="dual", vicinity=vicinity, static_steps=False,
                                   **_internal_kw(kw))
    assert torch.equal(mdsample.generate(m, prompt, cache="dual", vicinity=vicinity, **kw), step_by_step)
    assert torch.equal(mdsample.generate(m, prompt, cache="dual", vicinity=vicinity, cuda_graph=True, **kw),
                       step_by_step)


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("shift", [0, 1])
@torch.no_grad()
def test_vicinity_rows_equal_the_refresh_when_nothing_changed(setup, static, shift):
    """As the plain dual cache: a vicinity call on an unchanged canvas gives the refresh's rows, and it feeds
    the window (block plus looks, slid inside the canvas)."""
    from mdsample.models import shifted
    from mdsample.samplers.forward import CachedRowForward

    m, prompt = setup
    backbone = Backbone(shifted(m, shift))
    x = torch.cat([prompt, torch.randint(0, MASK, (3, 24), generator=torch.Generator().manual_seed(2))], 1)
    fwd = CachedRowForward(backbone, mode="dual", total=x.shape[1], batch_size=3, mask_id=MASK, vicinity=(3, 5))
    fed, feed = [], backbone.cache_rows
    backbone.cache_rows = lambda cache, chunk, start, *a, **k: fed.append((int(start), chunk.shape[1])) or feed(
        cache, chunk, start, *a, **k)
    everyone = torch.arange(3)
    for start in range(PLEN, PLEN + 24, 8):
        fwd.begin_block(x, start, start + 8, static=static)
        r_seq = torch.arange(3).repeat_interleave(8)
        r_pos = torch.arange(start, start + 8).repeat(3)
        full, _ = fwd.rows(x, everyone, r_seq, r_pos, refresh=True)
        cached, _ = fwd.rows(x, everyone, r_seq, r_pos, refresh=False)
        assert fed[-1] == (min(start - 3, x.shape[1] - 16), 16)  # 3 + 8 + 5 positions, slid inside the canvas
        torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-4)


def test_vicinity_arguments(setup):
    m, prompt = setup
    with pytest.raises(ValueError, match="cache='dual'"):
        mdsample.generate(m, prompt, cache="prefix", vicinity=(2, 2), **_kw(0.0))
    with pytest.raises(ValueError, match="cache='dual'"):
        mdsample.generate(m, prompt, vicinity=(2, 2), **_kw(0.0))
    with pytest.raises(TypeError, match="pair"):
        mdsample.generate(m, prompt, cache="dual", vicinity=4, **_kw(0.0))
    with pytest.raises(ValueError, match=r"vicinity\[1\] must be >= 0"):
        mdsample.generate(m, prompt, cache="dual", vicinity=(2, -1), **_kw(0.0))


@pytest.mark.parametrize("mode", [None, "prefix", "dual"])
def test_empty_batch_gives_an_empty_canvas(setup, mode):
    m, prompt = setup
    out = mdsample.generate(m, prompt[:0], cache=mode, **_kw(0.0))
    assert out.shape == (0, PLEN + 32) and out.dtype == torch.int64
