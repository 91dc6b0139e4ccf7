"""Cached generate's fixed-shape, host-sync-free block step (graph_step.py), with and without cuda_graph.

On CPU the step runs eagerly: it must return the tokens of the step-by-step cached loop
(``llada._generate(..., static_steps=False)``) exactly and make no host sync (tests/sync_guard.py). On CUDA (skipped here) the replayed graphs must equal
the same step run eagerly, and the block loop must pass torch.cuda.set_sync_debug_mode("error").
"""
import contextlib
import functools
import json

import pytest
import torch

import mdsample
from mdsample.models import Transformer
from mdsample.samplers import llada
from mdsample.samplers.graph_step import BlockStep
from sync_guard import no_host_sync  # tests/ is on sys.path (rootdir conftest)

MASK = 127
PLEN = 8
CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def model():
    return Transformer.from_preset("tiny", seed=0).eval()


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(0, MASK, (3, PLEN), generator=torch.Generator().manual_seed(1))


def _kw(**over):
    kw = dict(steps=16, gen_length=32, block_length=8, temperature=1.0, mask_id=MASK, seed=3, cache="dual")
    kw.update(over)
    return kw


@pytest.mark.parametrize("block_length", [4, 8])
@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_static_step_equals_cached_generate(model, prompt, mode, temperature, remasking, block_length):
    kw = _kw(cache=mode, temperature=temperature, remasking=remasking, block_length=block_length)
    ref = step_by_step(model, prompt, **kw)
    out = mdsample.generate(model, prompt, cuda_graph=True, **kw)
    assert not (out == MASK).any()
    assert torch.equal(out, ref)
    assert torch.equal(mdsample.generate(model, prompt, **kw), ref)  # the default: the same steps, not captured


@pytest.mark.parametrize("case", [
    dict(remasking="entropy"), dict(remasking="margin"), dict(refresh_every=3), dict(cfg_scale=1.5),
    dict(remasking="random", cfg_scale=1.5, refresh_every=2),
    dict(steps=64, block_length=4),  # more steps than positions: the zero-count steps run no forward
    dict(steps=12, block_length=8),  # several tokens per step (LLaDA's uneven split: 3, 3, 2)
    # Fast-dLLM rules: a budget of steps/num_blocks per block; too small (continued step by step) or too large
    dict(threshold=0.9, steps=4), dict(threshold=0.05, steps=32), dict(factor=1.0, steps=8),
    dict(threshold=0.3, remasking="random", steps=8),
    # dInfer's hierarchy rule and credit fusion (its state in static buffers)
    dict(low_threshold=0.4, steps=4), dict(low_threshold=0.2, threshold=0.8, steps=8),
    dict(credit=True, threshold=0.3, steps=8), dict(credit=dict(alpha=3.0, beta=0.5), steps=16),
    dict(credit=True, low_threshold=0.4, remasking="margin", steps=32),
    dict(credit=True, low_threshold=0.3, eos_id=5, steps=8),
])
@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_static_step_equals_cached_generate_variants(model, prompt, mode, case):
    kw = _kw(cache=mode, **case)
    ref = step_by_step(model, prompt, **kw)
    assert torch.equal(mdsample.generate(model, prompt, cuda_graph=True, **kw), ref)
    assert torch.equal(mdsample.generate(model, prompt, **kw), ref)


@pytest.mark.parametrize("case", [dict(cache="prefix"), dict(cache="dual", cfg_scale=1.5),
                                  dict(cache="dual", threshold=0.3, steps=8),
                                  dict(cache="dual", credit=True, low_threshold=0.4, vicinity=(2, 3), steps=8)])
def test_step_graphs_reuse_the_buffers_across_calls(model, prompt, case):
    """A StepGraphs keeps one entry per (model, shapes, settings); a later call restarts it with its own
    prompt and seed and returns the tokens of a fresh call, in a tensor of its own."""
    graphs = mdsample.StepGraphs()
    other = torch.randint(0, MASK, prompt.shape, generator=torch.Generator().manual_seed(9))
    kw = _kw(**case)
    first = mdsample.generate(model, prompt, cuda_graph=graphs, **kw)
    kept = first.clone()
    second = mdsample.generate(model, other, cuda_graph=graphs, **dict(kw, seed=11))
    assert len(graphs) == 1
    assert torch.equal(first, kept)  # not the kept canvas, which the second call rewrote
    assert torch.equal(first, mdsample.generate(model, prompt, **kw))
    assert torch.equal(second, mdsample.generate(model, other, **dict(kw, seed=11)))
    assert torch.equal(mdsample.generate(model, prompt, cuda_graph=graphs, **kw), first)  # back to the first prompt
    mdsample.generate(model, prompt, cuda_graph=graphs, **dict(kw, temperature=0.0))  # other settings: an entry
    mdsample.generate(model, prompt[:2], cuda_graph=graphs, **kw)                    # other batch: an entry
    assert len(graphs) == 3
    graphs.clear()
    assert len(graphs) == 0


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_step_graphs_entry_is_held_while_a_call_runs(model, prompt, cache):
    """A call made from on_step with the same key builds its own step: it does not restart the running
    call's buffers (which returned the inner call's prompt as the outer's)."""
    graphs = mdsample.StepGraphs()
    other = torch.randint(0, MASK, prompt.shape, generator=torch.Generator().manual_seed(9))
    kw = _kw(cache=cache)
    mdsample.generate(model, prompt, cuda_graph=graphs, **kw)  # an entry to take
    inner = []

    def hook(step, x):
        if step == 2:
            inner.append(mdsample.generate(model, other, cuda_graph=graphs, **kw))

    outer = mdsample.generate(model, prompt, cuda_graph=graphs, on_step=hook, **kw)
    assert torch.equal(outer, mdsample.generate(model, prompt, **kw))
    assert torch.equal(inner[0], mdsample.generate(model, other, **kw))
    assert len(graphs) == 1


def test_step_graphs_recapture_after_the_model_moves(prompt):
    """model.to(dtype) gives the parameters new storage, which kept graphs would not read: a fresh step."""
    m = Transformer.from_preset("tiny", seed=0).eval()
    graphs, kw = mdsample.StepGraphs(), _kw(cache="dual")
    first = mdsample.generate(m, prompt, cuda_graph=graphs, **kw)
    (step,) = [e[-1] for e in graphs._entries.values()]
    mdsample.generate(m, prompt, cuda_graph=graphs, **kw)
    assert [e[-1] for e in graphs._entries.values()] == [step]  # reused
    m.to("cpu")  # a no-op move keeps every tensor's storage, hence the captures
    mdsample.generate(m, prompt, cuda_graph=graphs, **kw)
    assert [e[-1] for e in graphs._entries.values()] == [step]
    m.to(torch.float64)
    again = mdsample.generate(m, prompt, cuda_graph=graphs, **kw)
    (new,) = [e[-1] for e in graphs._entries.values()]
    assert new is not step and torch.equal(again, mdsample.generate(m, prompt, **kw))
    assert first.shape == again.shape



def test_step_graphs_drop_a_step_whose_model_moved_during_the_call(prompt):
    """A parameter swapped from on_step (new storage, same values) leaves the call's later captures reading
    storage the kept graphs' earlier ones do not: the step is not kept, the next call builds its own."""
    m = Transformer.from_preset("tiny", seed=0).eval()
    graphs, kw = mdsample.StepGraphs(), _kw(cache="prefix")

    def swap(step, x):
        if step == 3:
            m.lm_head.weight = torch.nn.Parameter(m.lm_head.weight.detach().clone())

    out = mdsample.generate(m, prompt, cuda_graph=graphs, on_step=swap, **kw)
    assert len(graphs) == 0
    assert torch.equal(out, mdsample.generate(m, prompt, **kw))
    mdsample.generate(m, prompt, cuda_graph=graphs, **kw)
    assert len(graphs) == 1


class _Holder:
    """A backbone that is no nn.Module: the protocol's methods, the module held as an attribute."""

    def __init__(self, module):
        self.module, self.config = module, module.config
        self.hidden, self.head, self.new_cache = module.hidden, module.head, module.new_cache

    def __call__(self, x, **kw):
        return self.module(x, **kw)


def test_step_graphs_see_the_tensors_of_a_wrapped_module(prompt):
    m = Transformer.from_preset("tiny", seed=0).eval()
    holder, graphs, kw = _Holder(m), mdsample.StepGraphs(), _kw(cache="dual")
    first = mdsample.generate(holder, prompt, cuda_graph=graphs, **kw)
    (step,) = [e[-1] for e in graphs._entries.values()]
    mdsample.generate(holder, prompt, cuda_graph=graphs, **kw)
    assert [e[-1] for e in graphs._entries.values()] == [step]
    m.to(torch.float64)
    again = mdsample.generate(holder, prompt, cuda_graph=graphs, **kw)
    assert [e[-1] for e in graphs._entries.values()] != [step]
    assert torch.equal(again, mdsample.generate(m, prompt, **kw)) and first.shape == again.shape


def test_step_graphs_refuse_a_model_whose_tensors_they_cannot_see(prompt):
    m = Transformer.from_preset("tiny", seed=0).eval()

    class Closure:  # the module reachable only through closures
        config, vocab_size = m.config, m.config.vocab_size
        hidden = staticmethod(lambda x, **k: m.hidden(x, **k))
        head = staticmethod(lambda h: m.head(h))
        new_cache = staticmethod(lambda *a, **k: m.new_cache(*a, **k))

        def __call__(self, x, **kw):
            return m(x, **kw)

    with pytest.raises(TypeError, match="StepGraphs cannot see the tensors of Closure"):
        mdsample.generate(Closure(), prompt, cuda_graph=mdsample.StepGraphs(), **_kw(cache="dual"))
    assert torch.equal(mdsample.generate(Closure(), prompt, cuda_graph=True, **_kw(cache="dual")),
                       mdsample.generate(m, prompt, **_kw(cache="dual")))

def _guarded(fn, calls):
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        calls.append(fn.__name__)
        with no_host_sync():
            return fn(*args, **kwargs)
    return wrapped


SYNC_CASES = [dict(remasking=r, cfg_scale=1.0, **rule) for r in ("low_confidence", "random")
              for rule in ({}, dict(threshold=0.05), dict(low_threshold=0.3))] + [
    dict(credit=True, threshold=0.3), dict(cache="dual", vicinity=(2, 3), cfg_scale=1.0)]


@pytest.mark.parametrize("case", SYNC_CASES, ids=[str(i) for i in range(len(SYNC_CASES))])
@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_step_loop_makes_no_host_sync(model, prompt, mode, case, monkeypatch):
    """Every block start and step, refreshes included, runs under the sync guard (CFG on: the doubled
    batch; dInfer's credit state). With a threshold, steps past the budget (4 per block) are guarded too."""
    calls = []
    monkeypatch.setattr(BlockStep, "__call__", _guarded(BlockStep.__call__, calls))
    monkeypatch.setattr(BlockStep, "begin_block", _guarded(BlockStep.begin_block, calls))
    kw = _kw(**{"cache": mode, **case})  # a vicinity case runs the dual cache in both
    out = mdsample.generate(model, prompt, cuda_graph=True, **kw)
    assert calls.count("begin_block") == 4
    budget = calls.count("__call__")
    assert budget >= 16 if "threshold" in case or "low_threshold" in case else budget == 16
    monkeypatch.undo()
    assert torch.equal(out, step_by_step(model, prompt, **kw))


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_default_cached_loop_makes_no_host_sync(model, prompt, mode, monkeypatch):
    """Without cuda_graph a cached run with LLaDA's counts takes the same guarded steps; with a threshold
    it runs step by step instead (each block stops when done: fewer forwards than the fixed budget)."""
    calls = []
    monkeypatch.setattr(BlockStep, "__call__", _guarded(BlockStep.__call__, calls))
    monkeypatch.setattr(BlockStep, "begin_block", _guarded(BlockStep.begin_block, calls))
    kw = _kw(cache=mode, cfg_scale=1.0)
    out = mdsample.generate(model, prompt, **kw)
    assert calls.count("begin_block") == 4 and calls.count("__call__") == 16
    calls.clear()
    mdsample.generate(model, prompt, **_kw(cache=mode, threshold=0.05))
    assert calls == []
    monkeypatch.undo()
    assert torch.equal(out, step_by_step(model, prompt, **kw))


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_truncated_steps_of_a_shifted_model_make_no_host_sync(model, prompt, mode, monkeypatch):
    """Dream's settings on the cache: a next-token-aligned model (chunks fed from one position earlier) with
    top-p / top-k truncation, every step under the sync guard; the tokens of the step-by-step loop."""
    from mdsample.models import shifted

    calls = []
    monkeypatch.setattr(BlockStep, "__call__", _guarded(BlockStep.__call__, calls))
    monkeypatch.setattr(BlockStep, "begin_block", _guarded(BlockStep.begin_block, calls))
    kw = _kw(cache=mode, remasking="entropy", temperature=0.2, top_p=0.9, top_k=5)
    out = mdsample.generate(shifted(model), prompt, cuda_graph=True, **kw)
    assert calls.count("begin_block") == 4 and calls.count("__call__") == 16
    monkeypatch.undo()
    assert torch.equal(out, step_by_step(shifted(model), prompt, **kw))


def test_step_loop_makes_no_host_sync_on_the_reference_backend(model, prompt, monkeypatch):
    """The float64 reference draw (backend="auto"'s last fallback on CUDA) is sync-free too."""
    calls = []
    monkeypatch.setattr(BlockStep, "__call__", _guarded(BlockStep.__call__, calls))
    kw = _kw(remasking="low_confidence", backend="reference")
    out = mdsample.generate(model, prompt, cuda_graph=True, **kw)
    monkeypatch.undo()
    assert len(calls) == 16
    assert torch.equal(out, step_by_step(model, prompt, **kw))


def test_guard_sees_a_sync_in_the_step(model, prompt, monkeypatch):
    """The guard of the test above is live inside the step: a step with an .item() fails under it."""
    run = BlockStep.run

    def syncing_run(self, refresh):
        self.offset.item()
        return run(self, refresh)

    monkeypatch.setattr(BlockStep, "run", syncing_run)
    monkeypatch.setattr(BlockStep, "__call__", _guarded(BlockStep.__call__, []))
    with pytest.raises(RuntimeError, match="host sync"):
        mdsample.generate(model, prompt, cuda_graph=True, **_kw())


def test_bad_arguments(model, prompt):
    with pytest.raises(TypeError, match="cuda_graph"):
        mdsample.generate(model, prompt, cuda_graph="yes", **_kw())
    with pytest.raises(ValueError, match="cache="):
        mdsample.generate(model, prompt, cuda_graph=True, **_kw(cache=None))
    with pytest.raises(ValueError, match="threshold or factor"):
        mdsample.generate(model, prompt, cuda_graph=True, threshold=0.9, factor=1.0, **_kw())
    with pytest.raises(ValueError, match="eos"):
        llada._generate(model, prompt, **_internal(), logits_exclude=(5,))
    with pytest.raises(ValueError, match="CUDA tensors"):
        llada._generate(model, prompt, **_internal(graph_capture=True))
    with pytest.raises(ValueError, match="cannot be captured"):
        llada._generate(model, prompt, **_internal(), static_steps=False)


@pytest.mark.parametrize("rule", [dict(), dict(threshold=0.3), dict(low_threshold=0.4)])
@pytest.mark.parametrize("cuda_graph", [True, False])
def test_rows_without_a_valid_draw_raise_after_the_loop(prompt, cuda_graph, rule):
    """NaN logits: the fixed-shape steps (a rule that runs until no mask is left included: at most a block's
    length of steps past the budget) end and report it."""
    broken = Transformer.from_preset("tiny", seed=0).eval()
    with torch.no_grad():
        broken.lm_head.weight.fill_(float("nan"))
    # without graphs a threshold rule runs the eager steps, whose draws check each row and name the first bad one
    match = "contains NaN" if rule and not cuda_graph else "no valid draw"
    with pytest.raises(ValueError, match=match):
        mdsample.generate(broken, prompt, cuda_graph=cuda_graph, **_kw(**rule))


def _internal(**over):
    """Keywords of llada._generate (what generate passes) for the default case of _kw."""
    kw = dict(_kw(), cfg_scale=0.0, remasking="low_confidence", threshold=None, factor=None, attention_mask=None,
              backend="auto", progress=False, cuda_graph=True)
    kw.update(over)
    return kw


def step_by_step(model, prompt, **kw):
    """The step-by-step cached loop (eager, host checks each step): what the fixed-shape steps must equal."""
    return llada._generate(model, prompt, **_internal(**kw, cuda_graph=False), static_steps=False)


# ---------------------------------------------------------------- CUDA (run by benchmarks/gpu_check.sh)

@contextlib.contextmanager
def _sync_debug(mode):
    saved = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(saved)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_graph_replay_equals_eager_step_on_cuda(model, prompt, mode, remasking, monkeypatch, record_property):
    m, p = Transformer.from_preset("tiny", seed=0, device="cuda").eval(), prompt.cuda()
    kw = _internal(cache=mode, remasking=remasking, cfg_scale=1.0)
    eager = llada._generate(m, p, **dict(kw, graph_capture=False))

    calls, captures, replays = [], [], []
    monkeypatch.setattr(BlockStep, "__call__", _guarded(BlockStep.__call__, calls))
    monkeypatch.setattr(BlockStep, "begin_block", _guarded(BlockStep.begin_block, calls))
    capture = BlockStep._capture

    def unguarded_capture(self):
        # torch.cuda.graph synchronizes the device on entry, by design: the capture is not the loop.
        captures.append(self.fwd.start)
        with _sync_debug("default"):
            return capture(self)

    monkeypatch.setattr(BlockStep, "_capture", unguarded_capture)
    replay = torch.cuda.CUDAGraph.replay
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", lambda g: (replays.append(1), replay(g))[1])
    graphed = llada._generate(m, p, **kw)
    monkeypatch.undo()

    assert torch.equal(graphed, eager)
    num_blocks, per_block = 4, 4
    assert len(captures) == (num_blocks if mode == "prefix" else 1)
    assert len(replays) == num_blocks * (per_block - 1) - len(captures)  # every non-refresh step but the warm-ups
    cached = llada._generate(m, p, **dict(kw, cuda_graph=False), static_steps=False)
    agreement = float((cached == graphed).double().mean())
    record_property(f"graph_vs_cached_{mode}_{remasking}", json.dumps(agreement))
    assert agreement > 0.95  # same draws; only the head's GEMM rounding (more rows at once) differs


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_graph_replay_of_dream_settings_on_cuda(prompt, mode):
    """A shifted model (chunks one position earlier) with top-p / top-k: the captured steps replay to the
    eager steps' tokens (the truncation is the sync-free one in both)."""
    from mdsample.models import shifted

    m, p = shifted(Transformer.from_preset("tiny", seed=0, device="cuda").eval()), prompt.cuda()
    kw = _internal(cache=mode, remasking="entropy", temperature=0.2, top_p=0.9, top_k=5)
    eager = llada._generate(m, p, **dict(kw, graph_capture=False))
    assert torch.equal(llada._generate(m, p, **kw), eager)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("case", [dict(cache="prefix", low_threshold=0.4, threshold=0.9, steps=8),
                                  dict(cache="dual", credit=True, threshold=0.3, steps=8),
                                  dict(cache="dual", vicinity=(3, 5), credit=dict(alpha=2.0), steps=16)])
def test_graph_replay_of_dinfer_rules_on_cuda(prompt, case):
    """dInfer's hierarchy rule, credit state (static buffers read and written by the replays) and vicinity
    window: the captured steps replay to the eager steps' tokens."""
    m, p = Transformer.from_preset("tiny", seed=0, device="cuda").eval(), prompt.cuda()
    kw = _internal(**_kw(**case))
    eager = llada._generate(m, p, **dict(kw, graph_capture=False))
    assert not (eager == MASK).any()
    assert torch.equal(llada._generate(m, p, **kw), eager)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_step_graphs_replay_without_recapture_on_cuda(prompt, mode, monkeypatch):
    """The second call with a StepGraphs captures nothing and returns the eager step's tokens."""
    m, p = Transformer.from_preset("tiny", seed=0, device="cuda").eval(), prompt.cuda()
    other = torch.randint(0, MASK, p.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(9))
    graphs, captures = mdsample.StepGraphs(), []
    capture = BlockStep._capture
    monkeypatch.setattr(BlockStep, "_capture", lambda self: (captures.append(self.fwd.start), capture(self))[1])
    kw = _kw(cache=mode)
    mdsample.generate(m, p, cuda_graph=graphs, **kw)
    first_call = len(captures)
    out = mdsample.generate(m, other, cuda_graph=graphs, **dict(kw, seed=11))
    assert first_call == (4 if mode == "prefix" else 1) and len(captures) == first_call
    eager = llada._generate(m, other, **_internal(**dict(kw, seed=11), graph_capture=False))
    assert torch.equal(out, eager)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_replay_loop_passes_sync_debug_error_mode(prompt, monkeypatch):
    """The replay loop alone, under set_sync_debug_mode("error"): a graph's replay and the buffer updates."""
    m, p = Transformer.from_preset("tiny", seed=0, device="cuda").eval(), prompt.cuda()
    steps = []

    def loop_under_error_mode(self, i):
        with _sync_debug("error") if self.graphs else contextlib.nullcontext():
            steps.append(bool(self.graphs))
            return call(self, i)

    call = BlockStep.__call__
    monkeypatch.setattr(BlockStep, "__call__", loop_under_error_mode)
    mdsample.generate(m, p, cuda_graph=True, **_kw())
    assert sum(steps) >= 12  # every step after the first capture ran in error mode


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("rule", [dict(threshold=0.9, steps=4), dict(factor=1.0, steps=32)])
@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_graph_replay_with_fast_dllm_rules_on_cuda(prompt, mode, rule):
    """Threshold / factor: budget too small (steps continue past it) and too large (surplus replays)."""
    m, p = Transformer.from_preset("tiny", seed=0, device="cuda").eval(), prompt.cuda()
    kw = _internal(cache=mode, **rule)
    assert torch.equal(llada._generate(m, p, **kw), llada._generate(m, p, **dict(kw, graph_capture=False)))
