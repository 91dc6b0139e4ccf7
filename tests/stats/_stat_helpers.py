"""Shared pieces of the statistical battery (DESIGN.md §4): drawing, tests, false-alarm rates.

Conventions of every test in tests/stats:

* Draws go through the public API. One logits row ``[V]`` is ``expand``ed to
  ``[n, V]`` (not copied) and the rows get distinct ``positions``, so one call
  makes ``n`` independent draws (the Philox counter holds the position).
  Seeds, offsets and positions are fixed: a run is reproducible.
* Expected frequencies are computed in float64 from the logits *as stored*
  (after rounding to their dtype), so dtype rounding is not counted as bias.
* Thresholds: per-bin z-tests at the level of ``|z| <= 5`` (false alarm
  ``P_Z = 2 Phi(-5) = 5.7e-7`` per bin, made exact for small counts by deciding
  with the exact binomial test at that level, see :func:`assert_z`); G /
  chi-square tests at ``ALPHA = 1e-6`` (asymptotic chi-square) on a few dozen
  bins of similar-probability tokens, which concentrate probability-dependent
  biases; and a per-token check (exact binomial, Bonferroni over the tokens,
  ``ALPHA`` in all, :func:`assert_tokens`) for errors local to one token. A
  test's false-alarm rate is the sum over its checks (union bound), stated in
  its docstring.
* Sizes are per backend (:func:`per_backend`): the compiled CPU backend gets the
  statistically meaningful sizes, the float64 reference (0.2-1 ms a row) smaller
  ones, Triton under the CPU interpreter (~30-60 ms a row) only tiny cases.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import mdsample
from mdsample import _backends

Z_BOUND = 5.0
ALPHA = 1e-6
P_Z = 2.0 * stats.norm.sf(Z_BOUND)  # 5.73e-7: two-sided normal tail of |z| > 5
MIN_EXPECTED = 20.0  # every bin of a G / chi-square test expects at least this many draws

CHUNK = 2048  # tokens per chunk of the two-level draw (mdsample/reference/sampling.py)


# ----------------------------------------------------------------------------- sizing

def interpreted_triton(backend: str) -> bool:
    return backend == "triton" and _backends.triton_interpreted()


def per_backend(backend: str, *, cpu, reference, triton=None, gpu=None):
    """The size of a test case on ``backend``.

    ``cpu``: the compiled CPU backend; ``reference``: the float64 PyTorch
    reference (about 0.2-1 ms a row, padded to 2048 tokens); ``triton``: Triton
    under the CPU interpreter (None: the case is skipped there); ``gpu``: cuda and
    triton on a GPU (default: the cpu size).
    """
    if backend == "reference":
        return reference
    if backend == "cpu":
        return cpu
    if interpreted_triton(backend):
        if triton is None:
            pytest.skip("case too large for the Triton interpreter on CPU")
        return triton
    return cpu if gpu is None else gpu


def rows_per_call(backend: str, vocab: int) -> int:
    """Rows per API call: the reference materialises float64 ``[rows, padded V]`` tensors."""
    if backend == "reference":
        padded = -(-vocab // CHUNK) * CHUNK
        return max(1, (1 << 22) // padded)
    if interpreted_triton(backend):
        return 1 << 12
    return 1 << 20


# ----------------------------------------------------------------------------- device

# The device the backends under test run on (as in tests/conftest.py): the CPU here, the
# GPU where there is one (then the fixture lists cuda / triton / reference).
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def on_device(v):
    """A tensor argument moved to DEVICE; an expanded tensor moves its one stored copy and is
    expanded again there (never materialised). Other values pass through."""
    if not isinstance(v, torch.Tensor) or v.device.type == DEVICE:
        return v
    compact = v[tuple(slice(0, 1) if (st == 0 and sz > 1) else slice(None) for sz, st in zip(v.shape, v.stride()))]
    return compact.to(DEVICE).expand(v.shape)


def sample(logits, **kwargs) -> torch.Tensor:
    """``mdsample.sample_categorical`` with its tensors on DEVICE; the tokens come back on the CPU."""
    out = mdsample.sample_categorical(on_device(logits), **{k: on_device(v) for k, v in kwargs.items()})
    return out.cpu()


def unmask(logits, x, **kwargs):
    """``mdsample.unmask_step`` with its tensors on DEVICE; the results come back on the CPU."""
    out = mdsample.unmask_step(on_device(logits), on_device(x), **{k: on_device(v) for k, v in kwargs.items()})
    return tuple(t.cpu() for t in out) if isinstance(out, tuple) else out.cpu()


# ----------------------------------------------------------------------------- drawing

def sample_rows(row: torch.Tensor, n: int, *, backend: str, seed=0, offset=0, first_position: int = 0,
                **kwargs) -> torch.Tensor:
    """``n`` independent draws from one logits row ``[V]``: tokens ``[n]`` int64.

    Row ``i`` has position ``first_position + i``; ``kwargs`` go to
    ``mdsample.sample_categorical`` (temperature, exclude, ...). Asserts every
    token is a valid id.
    """
    vocab = row.shape[-1]
    out = []
    step = rows_per_call(backend, vocab)
    for start in range(0, n, step):
        b = min(step, n - start)
        pos = torch.arange(first_position + start, first_position + start + b, dtype=torch.int64)
        tok = sample(row.expand(b, vocab), seed=seed, offset=offset, positions=pos, backend=backend, **kwargs)
        out.append(tok)
    tokens = torch.cat(out)
    assert tokens.shape == (n,) and tokens.dtype == torch.int64
    assert int(tokens.min()) >= 0 and int(tokens.max()) < vocab, "token id out of range"
    return tokens


def sample_counts(row: torch.Tensor, n: int, **kwargs) -> np.ndarray:
    """Histogram ``[V]`` (int64) of ``n`` draws from one logits row (see :func:`sample_rows`)."""
    tokens = sample_rows(row, n, **kwargs)
    return torch.bincount(tokens, minlength=row.shape[-1]).numpy().astype(np.int64)


def softmax64(row: torch.Tensor, temperature: float = 1.0, exclude: int | None = None) -> np.ndarray:
    """Exact sampling distribution (float64) of a stored logits row at ``temperature``."""
    a = row.detach().to(torch.float64).clone() / temperature
    if exclude is not None:
        a[exclude] = -math.inf
    return torch.softmax(a, -1).numpy()


# ----------------------------------------------------------------------------- z-tests

def z_scores(counts, n: int, probs) -> np.ndarray:
    """Binomial z-scores ``(k - n p) / sqrt(n p (1 - p))`` per bin."""
    k = np.asarray(counts, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    return (k - n * p) / np.sqrt(n * p * (1.0 - p))


def binomial_pvalues(counts, n: int, probs) -> np.ndarray:
    """Exact two-sided binomial p-values, ``min(1, 2 min(P(X <= k), P(X >= k)))`` per bin.

    Valid (P(p-value <= a) <= a for every a) and vectorised."""
    k = np.asarray(counts, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    low = stats.binom.cdf(k, n, p)
    high = stats.binom.sf(k - 1, n, p)
    return np.minimum(1.0, 2.0 * np.minimum(low, high))


def _table(labels, counts, n, probs, z, pv, rows) -> str:
    return "\n".join(
        f"  {labels[i]:>28}: observed {int(counts[i]):>9d}  expected {n * probs[i]:>12.2f}  "
        f"ratio {counts[i] / (n * probs[i]):.4f}  z {z[i]:+.2f}  p {pv[i]:.1e}"
        for i in rows
    )


def assert_z(labels, counts, n: int, probs, what: str = "") -> np.ndarray:
    """Per-bin z-test at the level of ``|z| <= 5``: no bin's count may be rejected by the
    exact two-sided binomial test at level ``P_Z = 5.7e-7``.

    For large expected counts this is ``|z| <= 5``; for small ones (tens of hits) the exact
    test keeps the false alarm at <= 5.7e-7 per bin where the normal bound would not (a
    Binomial(3000, 0.01) count has |z| > 5 with probability 3e-6).
    """
    counts = np.asarray(counts)
    probs = np.asarray(probs, dtype=np.float64)
    z = z_scores(counts, n, probs)
    pv = binomial_pvalues(counts, n, probs)
    table = _table(list(labels), counts, n, probs, z, pv, range(len(counts)))
    assert np.all(pv >= P_Z), f"{what}: a bin is off by more than the |z| = {Z_BOUND:g} level (n = {n}):\n{table}"
    return z


def assert_tokens(counts, n: int, probs, what: str = "", alpha: float = ALPHA) -> None:
    """Every single token at once: tokens of probability 0 are never drawn, and no token's
    count is rejected by the exact binomial test at level ``alpha / k`` (k tokens of
    positive probability; Bonferroni). False alarm <= ``alpha``.

    This catches local errors a G-test dilutes over its degrees of freedom: one token never
    drawn (an off-by-one at a chunk edge), or one drawn twice as often.
    """
    counts = np.asarray(counts)
    probs = np.asarray(probs, dtype=np.float64)
    zero = probs <= 0
    assert counts[zero].sum() == 0, f"{what}: tokens of probability 0 drawn: {np.nonzero(zero & (counts > 0))[0][:20].tolist()}"
    idx = np.nonzero(~zero)[0]
    pv = binomial_pvalues(counts[idx], n, probs[idx])
    level = alpha / len(idx)
    if pv.min() < level:
        z = z_scores(counts[idx], n, probs[idx])
        worst = np.argsort(pv)[:10]
        labels = [f"token {i}" for i in idx]
        raise AssertionError(
            f"{what}: a token is off (exact binomial p < {level:.1e} = {alpha:g} / {len(idx)} tokens, n = {n}):\n"
            + _table(labels, counts[idx], n, probs[idx], z, pv, worst)
        )


# ----------------------------------------------------------------------------- binning

def group_counts(counts, probs, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum per-token counts and probabilities into bins: ``labels[i]`` is token i's bin (-1: dropped)."""
    labels = np.asarray(labels)
    keys = np.unique(labels[labels >= 0])
    c = np.bincount(labels[labels >= 0], weights=np.asarray(counts)[labels >= 0], minlength=keys.max() + 1)
    p = np.bincount(labels[labels >= 0], weights=np.asarray(probs, dtype=np.float64)[labels >= 0], minlength=keys.max() + 1)
    return keys, np.rint(c[keys]).astype(np.int64), p[keys]


def quantile_bins(probs, n: int, n_bins: int = 32, min_expected: float = MIN_EXPECTED) -> np.ndarray:
    """Bin label per token for a G-test: tokens sorted by probability, cut into about
    ``n_bins`` bins of equal mass (fewer when ``n`` draws cannot fill them with
    ``min_expected`` each); a token heavier than a bin's share is a bin of its own.

    Few bins of similar-probability tokens concentrate a probability-dependent bias (tail
    under-sampled, temperature off) into a few bins, where per-token bins would spread it over
    thousands of degrees of freedom; :func:`assert_tokens` covers single-token errors.
    Tokens of probability 0 get label -1.
    """
    probs = np.asarray(probs, dtype=np.float64)
    n_bins = int(max(2, min(n_bins, n * probs.sum() // min_expected)))
    target = probs.sum() / n_bins
    labels = np.full(len(probs), -1, dtype=np.int64)
    b, acc = 0, 0.0
    for i in np.argsort(-probs, kind="stable"):
        if probs[i] <= 0:
            break
        labels[i] = b
        acc += probs[i]
        if acc >= target:
            b, acc = b + 1, 0.0
    if 0.0 < acc and n * acc < min_expected and b > 0:  # a short last bin joins the one before
        labels[labels == b] = b - 1
    return labels


def decade_bins(probs, n: int, alone: float = 1e-2, min_expected: float = MIN_EXPECTED) -> tuple[np.ndarray, list[str]]:
    """Bin label per token: tokens of probability >= ``alone`` are bins of their own (the
    head), the others are binned by decade of probability, [10^-(d+1), 10^-d); a decade
    expecting fewer than ``min_expected`` draws joins the next larger one. Returns the labels
    and readable bin names."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.full(len(probs), -1, dtype=np.int64)
    names: list[str] = []
    for i in np.nonzero(probs >= alone)[0]:
        labels[i] = len(names)
        names.append(f"token {i} (p={probs[i]:.2e})")
    tail = (probs > 0) & (probs < alone)
    dec = np.zeros(len(probs), dtype=np.int64)
    dec[tail] = np.floor(-np.log10(probs[tail])).astype(np.int64)
    pending: list[int] = []  # decades (small p first) waiting to reach min_expected
    for d in sorted(set(dec[tail].tolist()), reverse=True):
        pending.append(d)
        members = tail & np.isin(dec, pending)
        if n * probs[members].sum() >= min_expected:
            labels[members] = len(names)
            names.append("p in " + " + ".join(f"[1e-{x + 1}, 1e-{x})" for x in sorted(pending)))
            pending = []
    if pending:  # the largest decades left over: merge into the last tail bin made
        members = tail & np.isin(dec, pending)
        if names and names[-1].startswith("p in"):
            labels[members] = len(names) - 1
            names[-1] += " + " + " + ".join(f"[1e-{x + 1}, 1e-{x})" for x in sorted(pending))
        else:
            labels[members] = len(names)
            names.append("tail (too few expected draws to split)")
    return labels, names


# ----------------------------------------------------------------------------- G / chi-square

def g_test(observed, probs, n: int | None = None) -> tuple[float, int, float]:
    """Goodness-of-fit G-test (likelihood ratio, Williams-corrected) of bin counts against
    bin probabilities (summing to 1). Returns (G, degrees of freedom, p-value)."""
    o = np.asarray(observed, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    n = int(o.sum()) if n is None else n
    assert int(o.sum()) == n, "counts must add up to the number of draws"
    assert abs(p.sum() - 1.0) < 1e-9, f"bin probabilities add up to {p.sum()}, not 1"
    e = n * p
    k = len(o)
    assert k >= 2, "a G-test needs at least two bins"
    assert e.min() >= 5.0, f"a bin expects only {e.min():.2f} draws: merge bins"
    nz = o > 0
    g = 2.0 * float((o[nz] * np.log(o[nz] / e[nz])).sum())
    q = 1.0 + (k + 1.0) / (6.0 * n)  # Williams' correction
    df = k - 1
    return g / q, df, float(stats.chi2.sf(g / q, df))


def assert_g_test(observed, probs, names=None, what: str = "", alpha: float = ALPHA) -> float:
    """Assert the G-test p-value is >= alpha; the message shows the worst bins."""
    o = np.asarray(observed, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    n = int(o.sum())
    g, df, pval = g_test(o, p, n)
    if pval < alpha:
        z = z_scores(o, n, p)
        worst = np.argsort(-np.abs(z))[:12]
        names = names if names is not None else [str(i) for i in range(len(o))]
        rows = "\n".join(
            f"  {names[i]:>40}: observed {int(o[i]):>9d}  expected {n * p[i]:>12.2f}  z {z[i]:+.2f}" for i in worst
        )
        raise AssertionError(f"{what}: G = {g:.1f} on {df} df, p = {pval:.2e} < {alpha:g}; worst bins:\n{rows}")
    return pval


def assert_independent(table, what: str = "", alpha: float = ALPHA) -> float:
    """Pearson chi-square test of independence of a contingency table (rows x columns).
    An empty row or column (a draw that never varies) fails the expected-count check."""
    t = np.asarray(table, dtype=np.float64)
    expected = t.sum(1, keepdims=True) * t.sum(0, keepdims=True) / t.sum()
    assert expected.min() >= 5.0, f"{what}: a contingency cell expects only {expected.min():.2f}"
    chi2, pval, dof, _ = stats.chi2_contingency(t, correction=False)
    assert pval >= alpha, (
        f"{what}: chi-square = {chi2:.1f} on {dof} df, p = {pval:.2e} < {alpha:g}: the draws are dependent\n{t.astype(int)}"
    )
    return pval


def contingency(a, b, na: int, nb: int) -> np.ndarray:
    """``[na, nb]`` table of pairs (a_i, b_i) of small non-negative ints."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    return np.bincount(a * nb + b, minlength=na * nb).reshape(na, nb)


def assert_budget(rate: float, budget: float) -> None:
    """A test's computed false-alarm rate must stay within what its docstring states."""
    assert rate <= budget, f"false-alarm rate {rate:.3g} exceeds the stated budget {budget:.3g}: resize the test"
