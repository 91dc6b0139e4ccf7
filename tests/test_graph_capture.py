"""Graph safety of sample_categorical / unmask_step with ``check=False`` (DESIGN.md §3, §5).

Everywhere: with seed, offset, temperature, positions, active, fallback and
reveal_prob given as tensors, the Python path of every fast backend here makes no
host sync (``no_host_sync()`` of tests/sync_guard.py: on CPU tensors it refuses the
calls that would sync on CUDA tensors) and gives the tokens of the same call outside
the guard; ``check=True`` is seen to sync, so the guard does see the op's path.

On CUDA (skipped without): each op is captured into a ``torch.cuda.CUDAGraph`` with
int64 device seed/offset; replays with the offset written in place give the tokens of
an eager call at that offset, differ across offsets (fresh noise), and run under
``torch.cuda.set_sync_debug_mode("error")``. Shapes: many rows (a CTA per row), and a
few rows of a large vocabulary, which takes the cuda backend's split path with its
stream-ordered scratch.
"""
import pytest
import torch

import mdsample
from mdsample import _backends
from sync_guard import no_host_sync  # tests/ is on sys.path (rootdir conftest)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
V = 2100  # two chunks of the two-level draw, small enough for the Triton interpreter
B, L = 2, 4


def _inputs():
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(B, L, V, generator=g) * 2).to(torch.bfloat16)
    x = torch.randint(0, V, (B, L), generator=g)
    x[:, 1::2] = 7  # the mask token
    return logits.to(DEVICE), x.to(DEVICE)


def _tensors(out):
    return (out,) if isinstance(out, torch.Tensor) else tuple(out)


def _assert_same(a, b):
    """Bitwise equal outputs (tokens, revealed masks, stats with their NaNs)."""
    a, b = _tensors(a), _tensors(b)
    assert len(a) == len(b)
    for s, t in zip(a, b):
        torch.testing.assert_close(s, t, rtol=0, atol=0, equal_nan=True)


def _device_keys():
    d = DEVICE
    return dict(
        seed=torch.tensor(123, device=d),
        offset=torch.tensor([[5], [6]], device=d),
        temperature=torch.full((B, L), 0.8, device=d),
        positions=torch.arange(100, 100 + B * L, device=d).view(B, L),
    )


SAMPLE_CASES = {
    "keys": lambda logits, x: dict(exclude=7),
    "active-fallback": lambda logits, x: dict(active=x != 7, fallback=x),
    "stats": lambda logits, x: dict(return_stats=True, stats_temperature=torch.full((B, 1), 1.5, device=DEVICE)),
    "guidance": lambda logits, x: dict(guidance=logits.flip(0), guidance_scale=1.5),
}


@pytest.mark.parametrize("case", list(SAMPLE_CASES))
def test_sample_categorical_makes_no_host_sync(fast_backend, case):
    logits, x = _inputs()
    kw = dict(_device_keys(), **SAMPLE_CASES[case](logits, x), check=False, backend=fast_backend)
    with no_host_sync():
        got = mdsample.sample_categorical(logits, **kw)
    _assert_same(got, mdsample.sample_categorical(logits, **kw))
    with pytest.raises(RuntimeError, match="host sync"), no_host_sync():
        mdsample.sample_categorical(logits, **dict(kw, check=True))


@pytest.mark.parametrize("reveal", ["tensor", "float"])
def test_unmask_step_makes_no_host_sync(fast_backend, reveal):
    logits, x = _inputs()
    x_before = x.clone()
    prob = torch.tensor([[0.5], [0.7]], dtype=torch.float64, device=DEVICE) if reveal == "tensor" else 0.6
    kw = dict(_device_keys(), mask_id=7, reveal_prob=prob, return_revealed=True, check=False, backend=fast_backend)
    with no_host_sync():
        got = mdsample.unmask_step(logits, x, **kw)
    _assert_same(got, mdsample.unmask_step(logits, x, **kw))
    assert torch.equal(x, x_before)
    with pytest.raises(RuntimeError, match="host sync"), no_host_sync():
        mdsample.unmask_step(logits, x, **dict(kw, check=True))


# ---------------------------------------------------------------------------- CUDA graphs

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a GPU")
GRAPH_BACKENDS = ["cuda", "triton"]
# many rows: a CTA per row; few rows of a large vocabulary: the cuda split path (scratch via cudaMallocAsync)
SHAPES = {"many-rows": (8, 128, 32000), "few-rows-large-V": (1, 16, 151936)}
OFFSETS = (3, 4, 1000)


def _need(backend):
    if not _backends.available(backend, "cuda"):
        pytest.skip(f"{backend}: {_backends.why_not(backend, 'cuda')}")


def _replay_per_offset(step, offsets):
    """Capture ``step(offset_tensor)`` in a CUDA graph; replay it once per value of ``offsets``,
    written into the int64 device offset in place. Returns the outputs of each replay (cloned)."""
    offset = torch.zeros((), dtype=torch.int64, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: Triton compiles, the cuda backend reads device attributes
        for _ in range(2):
            step(offset)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        with no_host_sync():
            out = step(offset)
    replays = []
    with no_host_sync():  # also torch.cuda.set_sync_debug_mode("error")
        for k in offsets:
            offset.fill_(k)
            graph.replay()
            replays.append(tuple(t.clone() for t in _tensors(out)))
    torch.cuda.synchronize()
    return replays


def _check_replays(step, replays):
    """Each replay equals the eager call at its offset; the tokens differ across offsets."""
    for k, got in zip(OFFSETS, replays):
        _assert_same(got, step(k))
    tokens = [r[0] for r in replays]
    for a, b in zip(tokens, tokens[1:]):
        # Equal by chance with probability < 1e-7 at these shapes (16+ rows, >= 3/4 of them drawing).
        assert not torch.equal(a, b), "replays at different offsets drew the same tokens: stale noise"


@cuda_only
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("stats", [False, True], ids=["tokens", "stats"])
@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_captured_sample_categorical_replays_fresh_noise(backend, shape, stats):
    _need(backend)
    dims = SHAPES[shape]
    g = torch.Generator(device="cuda").manual_seed(1)
    logits = (torch.randn(dims, device="cuda", generator=g) * 2).to(torch.bfloat16)
    seed = torch.tensor(77, device="cuda")
    temperature = torch.full(dims[:-1], 0.9, device="cuda")

    def step(offset):
        return mdsample.sample_categorical(logits, seed=seed, offset=offset, temperature=temperature,
                                           return_stats=stats, check=False, backend=backend)

    replays = _replay_per_offset(step, OFFSETS)
    _check_replays(step, replays)


@cuda_only
@pytest.mark.parametrize("split", [False, True], ids=["row", "split"])
def test_captured_triton_call_with_autotuning_on(split, monkeypatch):
    """The GPU check runs the tests with MDSAMPLE_TRITON_AUTOTUNE=0 (one compile per variant); users get the
    autotuner, which benchmarks with host syncs that a capture forbids. Tuned in the warm-up on a side stream (as
    graph_step warms up), the captured call is a cache hit and replays like the eager one."""
    _need("triton")
    monkeypatch.delenv("MDSAMPLE_TRITON_AUTOTUNE", raising=False)
    # shapes no other test tunes; 6 rows take the split path, 1024 rows (> 4 per SM) one program per row
    dims = (2, 3, 50257) if split else (128, 8, 50257)
    g = torch.Generator(device="cuda").manual_seed(3)
    logits = (torch.randn(dims, device="cuda", generator=g) * 2).to(torch.bfloat16)
    seed = torch.tensor(79, device="cuda")

    def step(offset):
        return mdsample.sample_categorical(logits, seed=seed, offset=offset, check=False, backend="triton")

    _check_replays(step, _replay_per_offset(step, OFFSETS))


@cuda_only
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_captured_unmask_step_replays_fresh_noise(backend, shape):
    _need(backend)
    dims = SHAPES[shape]
    g = torch.Generator(device="cuda").manual_seed(2)
    logits = (torch.randn(dims, device="cuda", generator=g) * 2).to(torch.bfloat16)
    mask_id = 0
    x = torch.randint(1, dims[-1], dims[:-1], device="cuda", generator=g)
    every_fourth = torch.arange(x.numel(), device="cuda").view(x.shape) % 4 == 0
    x = torch.where(every_fourth, x, mask_id)  # a quarter kept, three quarters masked
    seed = torch.tensor(78, device="cuda")
    prob = torch.full((dims[0], 1), 0.5, dtype=torch.float64, device="cuda")

    def step(offset):
        return mdsample.unmask_step(logits, x, mask_id=mask_id, reveal_prob=prob, seed=seed, offset=offset,
                                    return_revealed=True, check=False, backend=backend)

    replays = _replay_per_offset(step, OFFSETS)
    _check_replays(step, replays)
    kept = x != mask_id
    for tokens, revealed in replays:
        assert torch.equal(tokens[kept], x[kept]), "unmasked positions must carry over"
        assert bool(revealed.any()) and not bool(revealed[kept].any())
