"""What a softmax says of a row, good to a few float64 ulps, for tests of the ops' statistics.

``log_softmax`` in float64 is not enough of an oracle for them: it rounds a near-certain token's log p
of -1e-13 by 0.1% (the logarithm of a sum near 1), and ``p1 - p2`` at a near-tie loses what the two
probabilities share. Here each term is rounded once, sums are exact (``math.fsum``) and no step
cancels: with z = (g - max) / T <= 0 and tail = the sum of e^z over all but one maximum,
log p = z - log1p(tail), p1 - p2 = -expm1(z2) / (1 + tail) and the entropy is log1p(tail) plus
-sum(e^z z) / (1 + tail), two terms >= 0. Scores are taken as stored (every float dtype widens to
float64 exactly), the temperature as the float32 the kernels divide by.
"""
import math

import torch


def softmax_truth(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0):
    """float64 ``[N]`` (log p of ``tokens``, top1 - top2 probability margin, entropy) of ``softmax(logits / T)``.

    ``logits``: ``[N, V]`` any float dtype, finite scores or -inf, at least one finite per row;
    ``tokens``: ``[N]`` int64; ``temperature``: T > 0.
    """
    t = float(torch.tensor(temperature, dtype=torch.float32))
    logp, margin, entropy = [], [], []
    for row, tok in zip(logits.double().cpu().tolist(), tokens.cpu().tolist()):
        top = max(row)
        z = [(g - top) / t for g in row]
        first = z.index(0.0)
        e = [math.exp(zi) for zi in z]
        tail = math.fsum(e[:first] + e[first + 1:])
        z2 = max(z[:first] + z[first + 1:], default=-math.inf)
        logp.append(z[tok] - math.log1p(tail))
        margin.append(-math.expm1(z2) / (1.0 + tail))
        entropy.append(math.log1p(tail) - math.fsum(ei * zi for ei, zi in zip(e, z) if ei > 0) / (1.0 + tail))
    return tuple(torch.tensor(v, dtype=torch.float64) for v in (logp, margin, entropy))
