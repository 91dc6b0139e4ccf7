"""Oracle backbones and exact sampler distributions for the sampler tests.

:class:`JointOracle` knows a joint distribution ``p`` over ``Vr^L`` short sequences
(``Vr`` real tokens, mask id ``Vr``) and returns, for a partially masked input, the
exact conditional marginals ``log p(x_i = v | unmasked positions)`` at every masked
position, found by enumeration. The mask column gets a large logit so that a sampler
that forgets SUBS (mask excluded) is caught.

:func:`ancestral_distribution` computes, by dynamic programming over the ``(Vr+1)^L``
partial states, the exact output distribution of the MDLM ancestral sampler for a
given grid and noise removal: the ground truth of the chi-square tests.
"""
from __future__ import annotations

import itertools
import math
from collections import defaultdict

import numpy as np
import torch
from scipy import stats



def random_joint(vocab: int, length: int, seed: int, concentration: float = 0.7) -> torch.Tensor:
    """A Dirichlet-random joint ``[vocab] * length`` (float64, all entries > 0)."""
    g = np.random.default_rng(seed)
    p = g.dirichlet(np.full(vocab ** length, concentration))
    p = np.maximum(p, 1e-6)
    return torch.tensor(p / p.sum(), dtype=torch.float64).view(*([vocab] * length))


class JointOracle:
    """Backbone ``model(x [B, L]) -> logits [B, L, Vr + 1]`` with exact conditional marginals."""

    def __init__(self, joint: torch.Tensor, *, mask_logit: float = 8.0):
        self.joint = joint
        self.L = joint.dim()
        self.Vr = joint.shape[0]
        self.V = self.Vr + 1
        self.mask_id = self.Vr
        self.vocab_size = self.V
        self.calls = []  # batch size of every call
        n_states = self.V ** self.L
        table = torch.full((n_states, self.L, self.V), -30.0, dtype=torch.float64)
        self.cond = {}
        flat = joint.reshape(-1)
        seqs = list(itertools.product(range(self.Vr), repeat=self.L))
        for state in itertools.product(range(self.V), repeat=self.L):
            idx = self.index(state)
            match = [j for j, s in enumerate(seqs) if all(a == b or a == self.mask_id for a, b in zip(state, s))]
            w = flat[match]
            marg = torch.zeros(self.L, self.Vr, dtype=torch.float64)
            for j, wj in zip(match, w):
                for i, v in enumerate(seqs[j]):
                    marg[i, v] += wj
            marg /= w.sum()
            self.cond[state] = marg
            for i, a in enumerate(state):
                if a == self.mask_id:
                    table[idx, i, : self.Vr] = marg[i].log()
                    table[idx, i, self.mask_id] = mask_logit
                else:
                    table[idx, i, a] = 0.0
        self.table = table
        self.cond_lists = {k: v.tolist() for k, v in self.cond.items()}
        self.powers = torch.tensor([self.V ** (self.L - 1 - i) for i in range(self.L)], dtype=torch.int64)

    def to(self, device) -> "JointOracle":
        """Move the lookup tables (the model's "weights") to ``device``; samplers find it as ``.device``."""
        self.device = torch.device(device)
        self.table, self.powers = self.table.to(device), self.powers.to(device)
        return self

    def index(self, state) -> int:
        return sum(a * self.V ** (self.L - 1 - i) for i, a in enumerate(state))

    def __call__(self, x: torch.Tensor, **kw) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return self.table[(x * self.powers).sum(1)]

    def joint_probs(self) -> dict:
        return {s: float(self.joint[s]) for s in itertools.product(range(self.Vr), repeat=self.L)}

    def conditional_joint(self, prompt) -> dict:
        """The joint of the remaining positions given a prefix (as full sequences)."""
        probs = {s: p for s, p in self.joint_probs().items() if tuple(s[: len(prompt)]) == tuple(prompt)}
        z = sum(probs.values())
        return {s: p / z for s, p in probs.items()}


class PrefixOracle:
    """A block-causal view of a :class:`JointOracle`: a prefix ``x[:, :e]`` is scored as the full sequence with
    the positions after it masked, i.e. by the exact conditionals given the revealed prefix (BD3-LM's samplers
    feed the prefix up to the current block's end)."""

    def __init__(self, oracle: JointOracle):
        self.oracle, self.vocab_size = oracle, oracle.V

    def __call__(self, x: torch.Tensor, **kw) -> torch.Tensor:
        pad = torch.full((x.shape[0], self.oracle.L - x.shape[1]), self.oracle.mask_id, dtype=x.dtype)
        return self.oracle(torch.cat([x, pad], 1))[:, : x.shape[1]]


class HeadOracle(JointOracle):
    """The oracle offering ``hidden`` (the logits as a D = V hidden state) and an identity ``head``."""

    def __init__(self, joint, **kw):
        super().__init__(joint, **kw)
        self.head_rows = 0

    def hidden(self, x, **kw):
        self.calls.append(x.shape[0])
        return self.table[(x * self.powers).sum(1)]

    def head(self, h):
        self.head_rows += h.shape[0]
        return h.clone()


class TimeOracle(JointOracle):
    """A time-conditioned oracle: requires ``sigma`` [B] and records it (the conditionals do not use it)."""

    def __init__(self, joint, **kw):
        super().__init__(joint, **kw)
        self.sigmas = []

    def __call__(self, x, *, sigma, **kw):
        assert sigma.shape == (x.shape[0],) and sigma.dtype == torch.float32
        self.sigmas.append(sigma.clone())
        return super().__call__(x)


_SCHEDULE_EPS = 1e-3  # the schedules' default eps (MDLM's LogLinearNoise)
_MASK_PROB = {  # 1 - alpha_t
    "loglinear": lambda t: (1 - _SCHEDULE_EPS) * t,
    "cosine": lambda t: math.cos(math.pi / 2 * (1 - (1 - _SCHEDULE_EPS) * t)),  # Duo's cosine
    "cosine-mdlm": lambda t: (1 - _SCHEDULE_EPS) * (1 - math.cos(math.pi / 2 * t)),  # MDLM's CosineNoise
}


def ancestral_distribution(oracle: JointOracle, *, steps: int, eps: float, schedule="loglinear",
                           noise_removal="greedy", prompt=(), reveal_probs=None) -> dict:
    """Exact output distribution of sample_mdlm's ancestral sampler (temperature 1) over full sequences.

    ``reveal_probs``: the per-step reveal probabilities, instead of the schedule's on MDLM's grid.
    """
    if reveal_probs is None:  # ALGORITHMS.md's 1 - alpha_t, spelled out here rather than taken from the library
        m = _MASK_PROB[schedule]
        grid = [1.0 + (eps - 1.0) * k / steps for k in range(steps + 1)]  # linspace(1, eps, steps + 1)
        reveal_probs = [(m(grid[k]) - m(grid[k + 1])) / m(grid[k]) for k in range(steps)]
    start = tuple(prompt) + (oracle.mask_id,) * (oracle.L - len(prompt))
    dist = {start: 1.0}
    for r in reveal_probs:
        new = defaultdict(float)
        for state, p in dist.items():
            masked = [i for i, a in enumerate(state) if a == oracle.mask_id]
            cond = oracle.cond_lists[state]
            for n_rev in range(len(masked) + 1):
                p_sub = r ** n_rev * (1 - r) ** (len(masked) - n_rev)
                if p_sub == 0.0:
                    continue
                for sub in itertools.combinations(masked, n_rev):
                    for toks in itertools.product(range(oracle.Vr), repeat=n_rev):
                        q = p * p_sub * math.prod(cond[i][v] for i, v in zip(sub, toks))
                        s = list(state)
                        for i, v in zip(sub, toks):
                            s[i] = v
                        new[tuple(s)] += q
        dist = dict(new)
    out = defaultdict(float)
    for state, p in dist.items():
        s = list(state)
        if noise_removal == "greedy":
            cond = oracle.cond[state]
            for i, a in enumerate(state):
                if a == oracle.mask_id:
                    s[i] = int(torch.argmax(cond[i]))
        elif noise_removal == "ancestral":
            raise NotImplementedError
        out[tuple(s)] += p
    return dict(out)


def count_rows(x: torch.Tensor) -> dict:
    counts = defaultdict(int)
    for row in x.tolist():
        counts[tuple(row)] += 1
    return counts


def chi_square_pvalue(counts: dict, probs: dict, *, min_expected: float = 5.0) -> float:
    """Pearson chi-square p-value of ``counts`` against ``probs``; bins with expected < min_expected pooled.

    Observed categories outside ``probs`` make the p-value 0.
    """
    n = sum(counts.values())
    if any(k not in probs for k in counts):
        return 0.0
    obs, exp = [], []
    pool_o = pool_e = 0.0
    for k, p in probs.items():
        e = n * p
        if e < min_expected:
            pool_o += counts.get(k, 0)
            pool_e += e
        else:
            obs.append(counts.get(k, 0))
            exp.append(e)
    if pool_e > 0:
        obs.append(pool_o)
        exp.append(pool_e)
    obs, exp = np.array(obs, dtype=float), np.array(exp, dtype=float)
    stat = float(((obs - exp) ** 2 / exp).sum())
    return float(stats.chi2.sf(stat, len(obs) - 1))


def total_variation(a: dict, b: dict) -> float:
    keys = set(a) | set(b)
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in keys)


def reference_truncate(row: torch.Tensor, T: float, top_p, top_k, mask_id, rule: str = "dream") -> torch.Tensor:
    """Dream's top-p then top-k on one float64 row [V] (the mask removed first; None: no mask), by sorting a
    Python list. ``rule="bd3lm"``: BD3-LM's nucleus, a token stays iff its own cumulative mass is <= top_p (the
    first always); Dream's keeps it iff the mass before it is."""
    row = row.clone()
    if mask_id is not None:
        row[mask_id] = -math.inf
    if top_p is not None:
        scaled = row / T if T > 0 else row
        p = torch.softmax(scaled, 0).tolist()
        order = sorted(range(row.numel()), key=lambda v: (-float(scaled[v]), v))
        cum, keep = 0.0, set()
        for v in order:
            if keep and (cum if rule == "dream" else cum + p[v]) > top_p:
                break
            keep.add(v)
            cum += p[v]
        row[[v for v in range(row.numel()) if v not in keep]] = -math.inf
    if top_k is not None:
        kth = sorted(row.tolist(), reverse=True)[top_k - 1]
        row[row < kth] = -math.inf
    return row
