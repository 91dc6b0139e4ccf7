"""The cuda backend of the likelihood ops against the cpu backend and the float64 truth (GPU only).

lowdisc_timesteps and forward_mask run the cpu backend's float64 / integer steps on the
same Philox words (csrc/include/mdsample/likelihood_math.h), so the two must agree
bitwise. masked_nll uses the hardware exp on the GPU (csrc/likelihood.cu), so it matches
the float64 truth within the fp32 tolerance of tests/test_masked_nll.py (rtol 2e-6 plus
2e-5 per scored row) and is bitwise independent of the batch, the grid and a row's
address. No test here is statistical.
"""
import math

import pytest
import torch
from likelihood_oracles import MarkovOracle
from test_masked_nll import truth

import mdsample
from mdsample import _backends

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(torch.cuda.is_available() and not _backends.available("cuda", "cuda"),
                       reason=f"cuda backend: {_backends.why_not('cuda', 'cuda')}"),
]

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _both(fn):
    """fn(device, backend) on cuda and on cpu, results on the CPU."""
    return fn("cuda", "cuda").cpu(), fn("cpu", "cpu")


@pytest.mark.parametrize("mode", ["stratified", "shifted", "iid"])
def test_timesteps_bitwise(mode):
    offsets = torch.tensor([0, 1, 2**40 + 3, -5])
    for n, eps in ((1, 1e-3), (7, 0.0), (5000, 0.3)):
        got, want = _both(lambda dev, b: mdsample.lowdisc_timesteps(n, eps=eps, mode=mode, seed=-(2**62) + 11,
                                                                   offset=offsets.to(dev), backend=b))
        assert got.shape == (4, n)
        assert torch.equal(got, want), f"{mode} n={n}: {int((got != want).sum())} times differ"


def test_forward_mask_bernoulli_bitwise():
    g = _gen(0)
    for batch, length in ((5, 1000), (3, 1)):
        x0 = torch.randint(5, 100, (batch, length), generator=g)
        t = torch.rand(batch, generator=g, dtype=torch.float64)
        t[0] = 1.0
        maskable = torch.rand(batch, length, generator=g) < 0.8
        seed, offset = torch.arange(batch) * 7 - 3, torch.arange(batch) + 2**33
        for positions in (None, torch.randint(0, 2**48, (batch, length), generator=g)):
            got, want = _both(lambda dev, b: mdsample.forward_mask(
                x0.to(dev), t.to(dev), mask_id=1, maskable=maskable.to(dev), seed=seed.to(dev), offset=offset.to(dev),
                positions=None if positions is None else positions.to(dev), backend=b))
            assert torch.equal(got, want)
            assert length == 1 or ((got == 1).any() and (got == x0).any())


def count_case(batch, length, seed):
    """An exact-count forward_mask case on the CPU: (kwargs, number of maskable tokens ``[B]``) for the two
    position layouts (flat index; tied pairs, whose equal keys go to the lowest index).

    Counts cycle through 0, inside, at and above the maskable number, odd and even so that
    the k-th key splits tied pairs both ways.
    """
    g = _gen(seed)
    x0 = torch.randint(5, 100, (batch, length), generator=g)
    maskable = torch.rand(batch, length, generator=g) < 0.7
    n = maskable.sum(-1)
    choices = torch.stack([torch.zeros_like(n), n // 3, n, n + 5, n // 3 + 1, torch.ones_like(n), n // 2, n - 1])
    count = choices[torch.arange(batch) % 8, torch.arange(batch)]
    kw = dict(x0=x0, count=count, mask_id=1, maskable=maskable, seed=torch.arange(batch) + 11)
    tied = (torch.arange(length) // 2).expand(batch, length).contiguous()
    return [dict(kw, positions=None), dict(kw, positions=tied)], n


def test_forward_mask_count_bitwise():
    for batch, length in ((8, 300), (8, 5000), (2, 1)):
        cases, n_allowed = count_case(batch, length, seed=1)
        for kw in cases:
            got, want = _both(lambda dev, b: mdsample.forward_mask(
                **{k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}, backend=b))
            assert torch.equal(got, want), f"L={length} positions={'tied' if kw['positions'] is not None else 'flat'}"
            assert torch.equal((got == 1).sum(-1), torch.minimum(kw["count"], n_allowed))


def nll_case(shape, vocab, dtype, seed, *, offset=0, mask_id=3, device="cuda"):
    """logits ``[*shape, vocab]`` whose rows start `offset` elements into a wider tensor (off 16 bytes), x0, x_t."""
    g = _gen(seed)
    wide = (torch.randn(*shape, vocab + offset, generator=g, dtype=torch.float64) * 3).to(dtype)
    x0 = torch.randint(0, vocab, shape, generator=g)
    xt = torch.where(torch.rand(shape, generator=g) < 0.5, mask_id, x0)
    return wide.to(device)[..., offset:], x0.to(device), xt.to(device)


def _check(got, want, rows):
    assert got.dtype == torch.float32 and got.is_cuda
    torch.testing.assert_close(got.double().cpu(), want.cpu(), rtol=2e-6, atol=2e-5 * max(rows, 1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_nll_matches_truth(dtype):
    # Several tiles with a partial last vector (V = 32003), odd V (rows alternate alignments), tiny V,
    # and rows starting one element into their storage.
    for k, (shape, vocab, offset) in enumerate([((2, 9), 32003, 0), ((3, 5), 301, 1), ((1, 4), 5, 1),
                                                ((2, 3), 9000, 3)]):
        logits, x0, xt = nll_case(shape, vocab, dtype, seed=k, offset=offset)
        got = mdsample.masked_nll(logits, x0, xt, mask_id=3, backend="cuda")
        _check(got, truth(logits.cpu(), x0.cpu(), xt.cpu(), mask_id=3), int((xt == 3).sum()))


def test_masked_nll_weights_exclude_guidance():
    logits, x0, xt = nll_case((3, 17), 4100, torch.bfloat16, seed=5, offset=1)
    guidance = (torch.randn(logits.shape, generator=_gen(6)) * 2).to(torch.bfloat16).cuda()
    guidance[..., 7] = -math.inf  # -inf on either side stays -inf
    weight = torch.rand(3, 17, generator=_gen(7)).cuda()
    weight[:, ::4] = 0.0
    logits[weight == 0] = math.nan  # zero-weight rows are not read
    x0 = torch.where(x0 == 3, 4, x0)  # no target is the excluded mask token
    rows = int(((xt == 3) & (weight != 0)).sum())
    got = mdsample.masked_nll(logits, x0, xt, mask_id=3, weight=weight, exclude=3, guidance=guidance,
                              guidance_scale=1.5, backend="cuda")
    want = truth(torch.where(weight.unsqueeze(-1) == 0, 0.0, logits.float()).cpu(), x0.cpu(), xt.cpu(), mask_id=3,
                 weight=weight.cpu(), exclude=3, guidance=guidance.cpu(), guidance_scale=1.5)
    _check(got, want, rows)


def test_masked_nll_bad_rows():
    """A NaN or +inf in a masked row makes its sequence NaN; the same in an unmasked row is never read."""
    logits, x0, xt = nll_case((4, 6), 3000, torch.float32, seed=8)
    xt[:, 0], xt[:, 1] = 3, 0
    logits[0, 0, 2999] = math.nan
    logits[1, 0, 5] = math.inf
    logits[2, 1] = math.nan
    got = mdsample.masked_nll(logits, x0, xt, mask_id=3, check=False, backend="cuda").cpu()
    assert got[:2].isnan().all() and got[2:].isfinite().all()
    with pytest.raises(ValueError, match=r"\[0\]"):
        mdsample.masked_nll(logits, x0, xt, mask_id=3, backend="cuda")


def test_masked_nll_batch_and_address_invariant():
    """A sequence's value is the same bits alone, in a batch, and read from another alignment."""
    logits, x0, xt = nll_case((4, 12), 50257, torch.bfloat16, seed=9)
    batch = mdsample.masked_nll(logits, x0, xt, mask_id=3, backend="cuda")
    for b in range(4):
        alone = mdsample.masked_nll(logits[b:b + 1], x0[b:b + 1], xt[b:b + 1], mask_id=3, backend="cuda")
        shifted = torch.empty(1, 12, 50257 + 1, dtype=logits.dtype, device="cuda")[..., 1:]
        shifted.copy_(logits[b:b + 1])
        moved = mdsample.masked_nll(shifted, x0[b:b + 1], xt[b:b + 1], mask_id=3, backend="cuda")
        assert torch.equal(alone, batch[b:b + 1]) and torch.equal(moved, alone)


def test_graph_capture():
    """forward_mask and masked_nll (check=False) are captured in a CUDA graph and replay with new inputs."""
    logits, x0, _ = nll_case((2, 64), 1000, torch.float32, seed=10)
    t = torch.tensor([0.3, 0.9], dtype=torch.float64, device="cuda")
    seed = torch.tensor([1, 2], device="cuda")

    def step():
        xt = mdsample.forward_mask(x0, t, mask_id=3, seed=seed, check=False, backend="cuda")
        return mdsample.masked_nll(logits, x0, xt, mask_id=3, check=False, backend="cuda")

    eager = step()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    graph.replay()
    assert torch.equal(out, eager)
    seed.add_(5)
    graph.replay()
    assert torch.equal(out, step()) and not torch.equal(out, eager)


MARKOV = MarkovOracle()


def _markov(x):
    """The Markov oracle's exact conditionals, computed on the CPU, returned on x's device."""
    return MARKOV(x.cpu()).to(x.device)


@pytest.mark.parametrize("masking", ["bernoulli", "count"])
def test_likelihood_end_to_end(masking):
    """likelihood / perplexity on CUDA tensors: the same draws as on the CPU, so the same estimate."""
    x = MARKOV.sample(3, 24, seed=11)
    kw = dict(mask_id=MARKOV.mask_id, mc_samples=6, batch_size=8, prompt_len=4, masking=masking, seed=2)
    got = mdsample.likelihood(_markov, x.cuda(), **kw)
    want = mdsample.likelihood(_markov, x, **kw)
    assert got.log_likelihood.is_cuda
    torch.testing.assert_close(got.log_likelihood.cpu(), want.log_likelihood, rtol=1e-5, atol=1e-4)
    ppl_gpu, ppl_cpu = mdsample.perplexity(_markov, x.cuda(), **kw), mdsample.perplexity(_markov, x, **kw)
    assert math.isclose(ppl_gpu.perplexity, ppl_cpu.perplexity, rel_tol=1e-5)
