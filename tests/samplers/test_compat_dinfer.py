"""mdsample.compat.dinfer's decoders against a float64 re-statement of dInfer's parallel_strategy rules.

The reference below follows upstream's formulas (ALGORITHMS.md, dInfer section; samplers/credit.py)
with dense tensors: a float64 softmax over [B, block, V], the argmax, upstream's cutoffs, and the
credit decoder's dense [B, block, V] matrix, plus mdsample's documented choices (the mask token is
never drawn, ties to the lower position). Chi-square tests use ALPHA = 1e-3, fixed seeds.
"""
import pytest
import torch

from mdsample.compat import dinfer
from sampler_oracles import chi_square_pvalue
from sync_guard import no_host_sync  # tests/ is on sys.path (rootdir conftest)

ALPHA = 1e-3
V, MASK, P, BLOCK = 9, 8, 3, 6


class Reference:
    """dInfer's three decoders at temperature 0, step by step, in upstream's dtypes: confidences are p(x0)
    under the softmax over all V (the mask included), float32 for the threshold and credit decoders and the
    logits' dtype for the hierarchy decoder, compared with Python-float thresholds as torch does. The
    token x0 is the best non-mask token (mdsample's documented choice)."""

    def __init__(self, rule, threshold=None, low_threshold=None, credit=(0.7, 0.2, 0.8)):
        self.rule, self.threshold, self.low, self.credit = rule, threshold, low_threshold, credit
        self.mats = {}  # upstream: one credit matrix per block, all dropped once the canvas has no mask

    def block_init(self, block, block_id):
        pass

    @staticmethod
    def best(l):
        return l.masked_fill(torch.arange(l.shape[-1]) == MASK, -torch.inf).argmax(-1)

    def decode(self, logits, start, end, x):
        masked = x[:, start:end] == MASK
        if self.rule == "credit":
            alpha, gamma, beta = self.credit
            mat = self.mats.setdefault((start, end), torch.zeros(logits.shape))
            mat *= beta
            p = torch.softmax(logits.float(), -1)
            v1 = self.best(logits)
            p1 = p.gather(-1, v1.unsqueeze(-1)).squeeze(-1)
            mat.scatter_add_(2, v1.unsqueeze(-1), (p1 ** gamma * masked).unsqueeze(-1))
            logits = logits + alpha * torch.log(mat + 1)  # float32, as bf16 + float32
        x0 = self.best(logits)
        if self.rule == "hierarchy":
            conf = logits.log_softmax(-1).gather(-1, x0.unsqueeze(-1)).squeeze(-1).exp()  # the logits' dtype
        else:
            conf = torch.softmax(logits.float(), -1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
        for b in range(x.shape[0]):
            cand = [i for i in range(end - start) if masked[b, i]]
            if not cand:
                continue
            c = conf[b]
            top = max(cand, key=lambda i: (float(c[i]), -i))
            if self.rule in ("threshold", "credit"):
                cut = (c[top] - 1e-5).clamp(-1000, self.threshold)
                take = {i for i in cand if bool(c[i] >= cut)}
            else:
                take, run = {top}, []
                for i in cand + [None]:
                    if run and (i is None or i != run[-1] + 1):
                        best = max(float(c[j]) for j in run)
                        if self.low is None or best > float(torch.tensor(self.low, dtype=c.dtype)):
                            take |= {j for j in run if float(c[j]) == best}
                        run = []
                    if i is not None:
                        run.append(i)
                if self.threshold is not None:
                    take |= {i for i in cand if bool(c[i] > self.threshold)}
            for i in take:
                x[b, start + i] = x0[b, i]
        if not bool((x == MASK).any()):
            self.mats.clear()


def decoders(rule, **kw):
    threshold, low = kw.get("threshold"), kw.get("low_threshold")
    if rule == "threshold":
        return dinfer.ThresholdParallelDecoder(0.0, threshold, mask_id=MASK), Reference(rule, threshold)
    if rule == "hierarchy":
        return (dinfer.HierarchyDecoder(0.0, mask_id=MASK, threshold=threshold, low_threshold=low),
                Reference(rule, threshold, low))
    alpha, gamma, beta = kw.get("credit", (0.7, 0.2, 0.8))
    return (dinfer.CreditThresholdParallelDecoder(credit_alpha=alpha, boost_gamma=gamma, decay_beta=beta,
                                                  temperature=0.0, threshold=threshold, mask_id=MASK),
            Reference(rule, threshold, credit=(alpha, gamma, beta)))


def canvas(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.full((batch, P + 2 * BLOCK), MASK, dtype=torch.int64)
    x[:, :P] = torch.randint(0, MASK, (batch, P), generator=g)
    if batch > 1:
        x[1, P + 2] = 4  # a sequence whose block starts partly decoded
    return x


def run_blocks(decoder, x, seed, dtype=torch.float32, scale=3.0):
    """Both blocks, each decoded until no mask is left, with fresh random logits each call (a model stand-in)."""
    g = torch.Generator().manual_seed(seed)
    for blk in range(2):
        start, end = P + blk * BLOCK, P + (blk + 1) * BLOCK
        decoder.block_init(x[:, start:end], blk)
        while bool((x[:, start:end] == MASK).any()):
            logits = (torch.randn(x.shape[0], BLOCK, V, generator=g) * scale).to(dtype)
            decoder.decode(logits, start, end, x)
    return x


CASES = [("threshold", dict(threshold=0.9)), ("threshold", dict(threshold=0.3)),
         ("hierarchy", dict(low_threshold=0.4)), ("hierarchy", dict(low_threshold=0.2, threshold=0.7)),
         ("hierarchy", dict(low_threshold=None, threshold=0.95)),
         ("credit", dict(threshold=0.9)), ("credit", dict(threshold=0.6, credit=(3.0, 1.0, 0.5)))]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("rule,kw", CASES, ids=[f"{r}-{i}" for i, (r, _) in enumerate(CASES)])
def test_decoders_match_the_reference_call_for_call(rule, kw, batch):
    for seed in range(4):
        ours, ref = decoders(rule, **kw)
        got = run_blocks(ours, canvas(batch), seed)
        want = run_blocks(ref, canvas(batch), seed)
        assert torch.equal(got, want), (seed, got, want)


def test_credit_changes_the_commits_and_is_per_block():
    """The credit decoder is not the threshold decoder (the reference's credit is what it matches), and a
    second generation reusing the decoder equals a fresh decoder's (no credit carried over)."""
    x = [run_blocks(decoders(r, threshold=0.6, credit=(3.0, 1.0, 0.5))[0], canvas(3), seed=s)
         for r in ("threshold", "credit") for s in range(4)]
    assert any(not torch.equal(a, b) for a, b in zip(x[:4], x[4:]))
    dec, _ = decoders("credit", threshold=0.6, credit=(3.0, 1.0, 0.5))
    run_blocks(dec, canvas(3), seed=0)
    assert torch.equal(run_blocks(dec, canvas(3), seed=1), x[5])


def test_credit_of_each_block_apart_without_block_init():
    """Blocks decoded in turn (A, B, A, B, ...) and a second generation on the same decoder, never calling
    block_init: each block keeps its own credit and a finished one leaves none (as upstream's matrices)."""
    def interleaved(dec, seed, scale):
        x, g = canvas(2), torch.Generator().manual_seed(seed)
        blocks = [(P, P + BLOCK), (P + BLOCK, P + 2 * BLOCK)]
        while bool((x[:, P:] == MASK).any()):
            for start, end in blocks:
                if bool((x[:, start:end] == MASK).any()):
                    dec.decode(torch.randn(2, BLOCK, V, generator=g) * scale, start, end, x)
        return x
    for threshold, scale in [(0.95, 1.5), (0.6, 3.0)]:
        kw = dict(threshold=threshold, credit=(3.0, 1.0, 0.5))
        for seed in range(3):
            ours, ref = decoders("credit", **kw)
            assert torch.equal(interleaved(ours, seed, scale), interleaved(ref, seed, scale))
            again, _ = decoders("credit", **kw)
            assert torch.equal(interleaved(ours, seed + 10, scale), interleaved(again, seed + 10, scale))


def test_block_init_drops_an_unfinished_blocks_credit():
    kw = dict(threshold=0.95, credit=(5.0, 1.0, 1.0))  # no decay: what an unfinished block leaves stays
    used, fresh = decoders("credit", **kw)[0], decoders("credit", **kw)[0]
    logits = torch.randn(2, BLOCK, V, generator=torch.Generator().manual_seed(7)) * 1.5
    for _ in range(20):  # an unfinished block: credit piles up on the five positions left masked each time
        used.decode(logits, P, P + BLOCK, canvas(2))
    assert torch.equal(run_blocks(used, canvas(2), 0, scale=1.5), run_blocks(fresh, canvas(2), 0, scale=1.5))


def test_bfloat16_logits_and_decoding_without_block_init():
    """bf16 rows as a bf16 model gives them; a decoder never told of block starts (no block_init) still
    keeps each block's credit apart, as upstream's per-block matrices do."""
    for rule in ("threshold", "hierarchy", "credit"):
        ours, ref = decoders(rule, threshold=0.7, low_threshold=0.4)
        ours.block_init = lambda *a: None
        want = run_blocks(ref, canvas(2), 5, dtype=torch.bfloat16)
        assert torch.equal(run_blocks(ours, canvas(2), 5, dtype=torch.bfloat16), want)


def test_temperature_draws_follow_the_tempered_softmax():
    """One masked position is always committed (the top-1): over 4000 sequences its token follows
    softmax(l / T) without the mask token (T = 0.7)."""
    logits = torch.tensor([0.5, 2.0, -1.0, 1.0, 0.0, 1.5, -0.5, 0.2, 9.0])  # the mask (id 8) would win
    n, temp = 4000, 0.7
    for make in (lambda: dinfer.ThresholdParallelDecoder(temp, 0.9, mask_id=MASK, seed=11),
                 lambda: dinfer.HierarchyDecoder(temp, mask_id=MASK, seed=11),
                 lambda: dinfer.CreditThresholdParallelDecoder(temperature=temp, threshold=0.9, mask_id=MASK, seed=11)):
        x = torch.zeros(n, 4, dtype=torch.int64)
        x[:, 2] = MASK
        make().decode(logits.expand(n, 1, V), 2, 3, x)
        assert not (x[:, 2] == MASK).any()
        p = torch.softmax(logits[:MASK].double() / temp, 0)  # credit adds the same bias to every row's argmax
        if isinstance(make(), dinfer.CreditThresholdParallelDecoder):
            fused = logits[:MASK].double().clone()
            fused[1] += 0.7 * torch.log1p(torch.softmax(logits.double(), 0)[1] ** 0.2)  # p1: the mask in the softmax
            p = torch.softmax(fused / temp, 0)
        counts = {(v,): int((x[:, 2] == v).sum()) for v in range(MASK)}
        assert chi_square_pvalue(counts, {(v,): float(p[v]) for v in range(MASK)}) > ALPHA


def test_randomness_keys():
    """An int seed: reproducible, and each call of a decoder draws anew; None: torch's global RNG."""
    def draw(dec, calls=2):
        outs = []
        for _ in range(calls):
            x = torch.full((64, 1), MASK, dtype=torch.int64)
            dec.decode(torch.zeros(64, 1, V), 0, 1, x)
            outs.append(x)
        return outs
    a = draw(dinfer.ThresholdParallelDecoder(1.0, 0.9, mask_id=MASK, seed=3))
    b = draw(dinfer.ThresholdParallelDecoder(1.0, 0.9, mask_id=MASK, seed=3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], a[1])
    torch.manual_seed(0)
    c = draw(dinfer.ThresholdParallelDecoder(1.0, 0.9, mask_id=MASK))
    torch.manual_seed(0)
    assert torch.equal(c[0], draw(dinfer.ThresholdParallelDecoder(1.0, 0.9, mask_id=MASK), 1)[0])
    assert not torch.equal(c[0], c[1])


@pytest.mark.parametrize("rule", ["threshold", "hierarchy", "credit"])
def test_decode_makes_no_host_sync_and_reads_no_unmasked_row(rule):
    ours, _ = decoders(rule, threshold=0.8, low_threshold=0.3)
    ours.seed, ours.temperature, ours.check = 5, 1.0, False
    x = canvas(3)
    x[:, P:P + 2] = 1  # decoded positions: their logits rows are NaN, and must not be read
    logits = torch.randn(3, BLOCK, V, generator=torch.Generator().manual_seed(0))
    logits[:, :2] = torch.nan
    with no_host_sync():
        ours.decode(logits, P, P + BLOCK, x)
    assert (x[:, P:P + 2] == 1).all() and (x[:, P:P + BLOCK] != MASK).any()


@pytest.mark.parametrize("rule", ["threshold", "hierarchy", "credit"])
@pytest.mark.parametrize("bad", ["nan", "inf", "mask_only"])
def test_bad_masked_row_raises_unless_check_false(rule, bad):
    """A bad row commits nothing: with the default check it raises, naming the row, instead of leaving a
    decode-until-done loop spinning; check=False keeps the call free of host syncs and commits nothing there."""
    ours, _ = decoders(rule, threshold=0.8, low_threshold=0.3)
    x = canvas(2)
    logits = torch.randn(2, BLOCK, V, generator=torch.Generator().manual_seed(0))
    if bad == "mask_only":
        logits[1, 3] = -torch.inf
        logits[1, 3, MASK] = 0.0
    else:
        logits[1, 3, 5] = float(bad)
    with pytest.raises(ValueError, match=r"logits\[1, 3\]"):
        ours.decode(logits, P, P + BLOCK, x.clone())
    ours.check = False
    ours.decode(logits, P, P + BLOCK, x)
    assert x[1, P + 3] == MASK


def test_block_outside_the_canvas_is_named():
    dec = dinfer.ThresholdParallelDecoder(0.0, 0.9, mask_id=MASK)
    x = canvas(1)
    for start, end in ((x.shape[1] - 2, x.shape[1] + 2), (x.shape[1] + 1, x.shape[1] + 3)):
        with pytest.raises(ValueError, match="must lie inside x"):
            dec.decode(torch.zeros(1, end - start, V), start, end, x)
    with pytest.raises(ValueError, match="block_end"):
        dec.decode(torch.zeros(1, 2, V), 4, 2, x)


def test_decoder_arguments():
    with pytest.raises(ValueError, match="remasking"):
        dinfer.ThresholdParallelDecoder(0.0, 0.9, remasking="random")
    with pytest.raises(ValueError, match="temperature"):
        dinfer.HierarchyDecoder(-1.0)
    with pytest.raises(ValueError, match=r"credit\['beta'\]"):
        dinfer.CreditThresholdParallelDecoder(decay_beta=1.5, temperature=0.0, threshold=0.9)
    dec = dinfer.ThresholdParallelDecoder(0.0, 0.9, mask_id=MASK)
    assert (dec.mask_id, dec.eos_id) == (MASK, 126081)
    with pytest.raises(ValueError, match=r"logits must be \[B, block_end - block_start, V\] = \[3, 6, V\]"):
        dec.decode(torch.zeros(3, 5, V), P, P + BLOCK, canvas(3))
    with pytest.raises(ValueError, match=r"mask_id \(8\) must be a token of the logits' vocabulary \[0, 5\)"):
        dec.decode(torch.zeros(3, BLOCK, 5), P, P + BLOCK, canvas(3))
    with pytest.raises(TypeError, match="logits must be float16, bfloat16, float32 or float64"):
        dec.decode(torch.zeros(3, BLOCK, V, dtype=torch.long), P, P + BLOCK, canvas(3))
    with pytest.raises(ValueError, match="iter_threshold must be a float or a one-element tensor"):
        dec.decode(torch.zeros(3, BLOCK, V), P, P + BLOCK, canvas(3), iter_threshold=torch.tensor([0.5, 0.2]))
    x, y = canvas(3), canvas(3)  # NumPy logits (DLPack): read as torch, no AttributeError on .dim()
    logits = torch.randn(3, BLOCK, V, generator=torch.Generator().manual_seed(1))
    dec.decode(logits.numpy(), P, P + BLOCK, x)
    dec.decode(logits, P, P + BLOCK, y)
    assert torch.equal(x, y) and not torch.equal(x, canvas(3))


def test_threshold_decoder_commits_every_tie_of_the_top():
    """dInfer's cutoff min(tau, max - 1e-5): positions as confident as the top one all commit in one call
    (Fast-dLLM's rule, the top-1 plus those >= tau, would commit one)."""
    x = torch.full((1, BLOCK), MASK, dtype=torch.int64)
    logits = torch.randn(1, 1, V, generator=torch.Generator().manual_seed(0)).expand(1, BLOCK, V).contiguous()
    logits[0, 4] *= 0.2  # a flatter row: one position less sure than the five tied ones
    dinfer.ThresholdParallelDecoder(0.0, 0.99, mask_id=MASK).decode(logits, 0, BLOCK, x)
    assert (x[0] != MASK).tolist() == [True, True, True, True, False, True]


def test_hierarchy_confidences_in_the_logits_dtype():
    """Upstream's hierarchy decoder takes log_softmax and exp in the logits' dtype and compares with the
    threshold rounded to it: p(x0) = 0.8019 is 0.80078 in bf16, not above low_threshold 0.8 (= 0.80078 too),
    while float32 logits commit it."""
    a = 3.34375  # exactly representable in bf16: p = e^a / (e^a + 7) = 0.8019 over the 8 non-mask tokens
    logits = torch.zeros(1, 3, V)
    logits[..., MASK] = -torch.inf
    logits[0, 0, 1], logits[0, 2, 1] = 6.0, a
    for dtype, committed in ((torch.bfloat16, False), (torch.float32, True)):
        x = torch.tensor([[MASK, 3, MASK]])
        dinfer.HierarchyDecoder(0.0, mask_id=MASK, low_threshold=0.8).decode(logits.to(dtype), 0, 3, x)
        assert int(x[0, 0]) == 1 and (int(x[0, 2]) == 1) == committed, dtype


def test_confidences_count_the_mask_tokens_mass():
    """p(x0) is upstream's, under the softmax over all V: 0.5 here (the mask holds 0.3), below threshold 0.6,
    so the second position waits (the first, p 0.95, is the top-1); renormalised without the mask it
    would be 0.714 and commit."""
    logits = torch.full((1, 2, V), -torch.inf)
    logits[0, 0, 1], logits[0, 0, MASK] = 0.0, torch.log(torch.tensor(0.05 / 0.95))
    logits[0, 1, [2, MASK, 3]] = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    for dec in (dinfer.ThresholdParallelDecoder(0.0, 0.6, mask_id=MASK),
                dinfer.HierarchyDecoder(0.0, mask_id=MASK, threshold=0.6, low_threshold=0.99)):
        x = torch.full((1, 2), MASK)
        dec.decode(logits, 0, 2, x)
        assert x.tolist() == [[1, MASK]], type(dec).__name__
    x = torch.full((1, 2), MASK)
    dinfer.ThresholdParallelDecoder(0.0, 0.45, mask_id=MASK).decode(logits, 0, 2, x)
    assert x.tolist() == [[1, 2]]


@pytest.mark.parametrize("rule", ["threshold", "hierarchy", "credit"])
def test_iter_threshold_replaces_the_threshold(rule):
    """dInfer's schedules pass a per-call threshold (a float or a 0-d tensor): the call then decides as a
    decoder built with that threshold."""
    logits = torch.randn(3, BLOCK, V, generator=torch.Generator().manual_seed(4)) * 3
    want = canvas(3)
    decoders(rule, threshold=0.6, low_threshold=0.3)[0].decode(logits, P, P + BLOCK, want)
    for given in (0.6, torch.tensor(0.6)):
        got = canvas(3)
        decoders(rule, threshold=0.99, low_threshold=0.3)[0].decode(logits, P, P + BLOCK, got, iter_threshold=given)
        assert torch.equal(got, want)
    other = canvas(3)
    decoders(rule, threshold=0.99, low_threshold=0.3)[0].decode(logits, P, P + BLOCK, other)
    assert not torch.equal(other, want)  # the threshold matters here


def test_credit_slots_evict_the_least_credited_and_skip_invalid_rows():
    """Past ``block`` distinct tokens a position drops its least credited one (the newcomer starts from its own
    gain); a row with no valid draw (token -1, NaN probability) credits nothing and evicts nothing."""
    from mdsample.samplers.credit import Credit

    def steps(slots, seq):
        c = Credit(1, slots, (1.0, 1.0, 0.5), "cpu")
        for tok, p in seq:
            fused = c.fuse(torch.zeros(1, 10), torch.tensor([0]), torch.tensor([0]), torch.tensor([tok]),
                           torch.tensor([p]), torch.tensor([True]))
        return c.tokens[0, 0].tolist(), c.credit[0, 0], fused[0]

    # credits before the 4th: 1 -> 0.1125, 2 -> 0.0125, 3 -> 0.45: token 2 (slot 1) makes room for 4
    tokens, credit, fused = steps(3, [(1, 0.9), (2, 0.05), (3, 0.9), (4, 0.3)])
    assert tokens == [1, 4, 3]
    torch.testing.assert_close(credit, torch.tensor([0.1125, 0.3, 0.45]))
    torch.testing.assert_close(fused[[1, 2, 3, 4]], torch.log1p(torch.tensor([0.1125, 0.0, 0.45, 0.3])))
    # a NaN row between two draws of token 2 leaves its credit: 0.1 / 4 + 0.5
    tokens, credit, _ = steps(2, [(1, 0.9), (2, 0.1), (-1, float("nan")), (2, 0.5)])
    assert tokens == [1, 2]
    torch.testing.assert_close(credit, torch.tensor([0.1125, 0.525]))


def test_empty_block_and_a_token_array_canvas():
    """A zero-width block is a no-op; a canvas object indexable as x[:, a:b] (dInfer's TokenArray) works."""
    class TokenArray:
        def __init__(self, data):
            self.data = data

        def __getitem__(self, idx):
            return self.data[idx]

        def __setitem__(self, idx, value):
            self.data[idx] = value

    for rule in ("threshold", "hierarchy", "credit"):
        dec = decoders(rule, threshold=0.9, low_threshold=0.4)[0]
        x = canvas(2)
        dec.decode(torch.zeros(2, 0, V), P, P, x)
        assert torch.equal(x, canvas(2))
        arr = TokenArray(canvas(2))
        dec.decode(torch.randn(2, BLOCK, V, generator=torch.Generator().manual_seed(1)), P, P + BLOCK, arr)
        assert (arr.data[:, P:P + BLOCK] != MASK).sum(1).min() >= 1


def test_use_float64_decides_as_upstreams_float64_softmax():
    """A threshold equal to the larger of upstream's float64 and float32 p(x0) of a position: exactly one of
    upstream's two decoders commits it (>=), and mdsample's use_float64 / float32 paths decide as those do."""
    logits = torch.randn(1, 2, V, generator=torch.Generator().manual_seed(0)) * 3
    logits[0, 0, 1] = 20.0  # position 0: the sure top-1
    x0 = int(logits[0, 1, :MASK].argmax())
    p64 = torch.softmax(logits[0, 1].double(), -1)[x0]
    p32 = torch.softmax(logits[0, 1].float(), -1)[x0]  # upstream without use_float64
    tau = max(float(p64), float(p32))
    upstream = {True: bool(p64 >= tau), False: bool(p32 >= tau)}  # torch rounds tau to the tensor's dtype
    assert upstream[True] != upstream[False]  # the case tells the two paths apart
    for use_float64, committed in upstream.items():
        x = torch.full((1, 2), MASK)
        dinfer.ThresholdParallelDecoder(0.0, tau, mask_id=MASK, use_float64=use_float64).decode(logits, 0, 2, x)
        assert x.tolist() == [[1, x0 if committed else MASK]], use_float64
