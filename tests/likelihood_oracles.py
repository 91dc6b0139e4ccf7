"""Oracle backbones whose likelihood is known exactly, for the likelihood tests and benchmarks.

Each returns the exact conditional marginals ``log p(x_i = v | unmasked tokens)`` of a
known joint at every position (the mask logit is -inf), so its masked-diffusion ELBO is
its true log-likelihood:

- :class:`JointOracle`: an enumerable Dirichlet joint over ``vr^length`` sequences; its
  :meth:`JointOracle.expected` gives the exact expectation of the Bernoulli estimator
  (with its ``eps`` truncation) and of the count estimator by enumerating masked subsets.
- :class:`MarkovOracle`: a Markov chain (forward-backward gives the conditionals); with
  sharp transitions the per-token NLL falls from ~log(vr) with no context to well under
  a nat with full context, as it does for text.
"""
import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F


class JointOracle:
    """Exact conditional marginals of a Dirichlet joint over ``vr^length`` sequences; mask id = vr."""

    def __init__(self, vr=3, length=8, seed=0, concentration=0.3):
        g = np.random.default_rng(seed)
        p = np.maximum(g.dirichlet(np.full(vr ** length, concentration)), 1e-12)
        self.p = torch.tensor(p / p.sum(), dtype=torch.float64)
        self.vr, self.V, self.mask_id, self.length = vr, vr + 1, vr, length
        self.states = torch.tensor(list(itertools.product(range(vr), repeat=length)), dtype=torch.int64)
        self.onehot = F.one_hot(self.states, vr).to(torch.float64).flatten(1)  # [S, L * vr]

    def cond(self, x):
        # A state is consistent with x when it matches every observed token: count matches by a matmul.
        seen = x != self.mask_id
        obs = F.one_hot(torch.where(seen, x, 0), self.vr).to(torch.float64) * seen.unsqueeze(-1)  # [Q, L, vr]
        ok = (obs.flatten(1) @ self.onehot.T) == seen.sum(1, keepdim=True)  # [Q, S]
        w = ok.to(torch.float64) * self.p
        return ((w @ self.onehot) / w.sum(1, keepdim=True)).view(x.shape[0], self.length, self.vr)

    def __call__(self, x, **kw):
        out = torch.full((*x.shape, self.V), -math.inf, dtype=torch.float64)
        out[..., : self.vr] = self.cond(x).clamp_min(1e-300).log()
        return out.to(torch.float32)

    def log_prob(self, seq, prompt=0):
        """log p(seq[prompt:] | seq[:prompt])."""
        match = (self.states[:, :prompt] == torch.tensor(seq[:prompt])).all(1)
        full = (self.states == torch.tensor(seq)).all(1)
        return float(self.p[full].sum().log() - self.p[match].sum().log())

    def expected(self, seq, *, prompt=0, eps=1e-3, sched_eps=1e-3, schedule=None):
        """Exact expectations of (-) the Bernoulli and count estimators for ``seq``.

        The Bernoulli form integrates ``m'/m`` times the masked NLL over t in [eps, 1]; in the
        variable m that is an incomplete beta integral between ``m(eps)`` and ``m(1)``, so any
        ``schedule`` (an object with ``mask_prob``; default loglinear with ``sched_eps``) is exact.
        """
        from scipy import special  # here, not at import: the GPU check's likelihood steps import this module

        answer = list(range(prompt, self.length))
        n = len(answer)
        subsets = [[answer[j] for j in range(n) if mask >> j & 1] for mask in range(1, 1 << n)]
        xs = torch.tensor(seq).repeat(len(subsets), 1)
        for q, s in enumerate(subsets):
            xs[q, s] = self.mask_id
        marg = self.cond(xs)
        total = np.zeros(n + 1)  # N_k: sum over k-subsets of the masked tokens' NLLs
        for q, s in enumerate(subsets):
            total[len(s)] += sum(-math.log(float(marg[q, i, seq[i]])) for i in s)
        if schedule is None:
            lo, hi = (1 - sched_eps) * eps, 1 - sched_eps  # mask probabilities at t = eps and t = 1
        else:
            lo, hi = float(schedule.mask_prob(eps)), float(schedule.mask_prob(1.0))
        bern = sum(total[k] * special.beta(k, n - k + 1)
                   * (special.betainc(k, n - k + 1, hi) - special.betainc(k, n - k + 1, lo)) for k in range(1, n + 1))
        count = sum(total[k] / k / math.comb(n, k) for k in range(1, n + 1))
        return bern, count


class HeadJoint(JointOracle):
    """The joint oracle offering hidden (its logits as D = V features) and an identity head."""

    head_rows = 0

    def hidden(self, x, **kw):
        return self(x)

    def head(self, h):
        self.head_rows += h.shape[0]
        return h.clone()


class MarkovOracle:
    """Exact conditional marginals of a Markov chain (forward-backward over the unmasked tokens)."""

    def __init__(self, vr=16, seed=0, concentration=0.05):
        g = np.random.default_rng(seed)
        self.pi = torch.tensor(g.dirichlet(np.ones(vr)), dtype=torch.float64)
        self.T = torch.tensor(g.dirichlet(np.full(vr, concentration), size=vr), dtype=torch.float64)
        self.vr, self.V, self.mask_id = vr, vr + 1, vr

    def sample(self, n, length, seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.empty(n, length, dtype=torch.int64)
        x[:, 0] = torch.multinomial(self.pi.expand(n, -1), 1, generator=g).squeeze(1)
        for i in range(1, length):
            x[:, i] = torch.multinomial(self.T[x[:, i - 1]], 1, generator=g).squeeze(1)
        return x

    def log_prob(self, x, prompt=0):
        """log p(x[:, prompt:] | x[:, :prompt]) per row (float64)."""
        steps = self.T.log()[x[:, :-1], x[:, 1:]]
        lp = self.pi.log()[x[:, 0]] * (prompt == 0) + steps[:, max(prompt - 1, 0):].sum(1)
        return lp

    def __call__(self, x, attention_mask=None, **kw):
        device, x = x.device, x.cpu()  # computed on the CPU, returned where the input lives
        q, length = x.shape
        # Evidence per position: one-hot where observed, all ones where masked or padding (padding is
        # marginalised out: a chain padded on the right has the conditionals of the shorter chain).
        unseen = x == self.mask_id
        if attention_mask is not None:
            unseen |= attention_mask.cpu() == 0
        ev = F.one_hot(torch.where(unseen, 0, x.clamp(0, self.vr - 1)), self.vr).to(torch.float64)
        ev = torch.where(unseen.unsqueeze(-1), 1.0, ev).unbind(1)
        fwd = [self.pi * ev[0]]
        fwd[0] = fwd[0] / fwd[0].sum(1, keepdim=True)
        for i in range(1, length):
            a = torch.mm(fwd[-1], self.T) * ev[i]
            fwd.append(a / a.sum(1, keepdim=True))
        bwd = [torch.ones(q, self.vr, dtype=torch.float64)]
        for i in range(length - 2, -1, -1):
            b = torch.mm(ev[i + 1] * bwd[-1], self.T.T)
            bwd.append(b / b.sum(1, keepdim=True))
        m = torch.stack(fwd, 1) * torch.stack(bwd[::-1], 1)
        out = torch.full((q, length, self.V), -math.inf, dtype=torch.float64)
        out[..., : self.vr] = (m / m.sum(-1, keepdim=True)).clamp_min(1e-300).log()
        return out.to(device, torch.float32)
