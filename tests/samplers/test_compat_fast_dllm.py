"""compat.fast_dllm's step hook and step helpers against a re-statement of Fast-dLLM's (llada/generate.py)."""
import pytest
import torch

from mdsample.compat import fast_dllm, llada
from mdsample.models import Transformer


def _upstream_transfer(logits, mask_index, x, k=None, threshold=None):
    """Fast-dLLM's get_transfer_index at temperature 0, low_confidence: argmax, float64 softmax confidence,
    top-k per row (with a threshold: every masked position ranked, the first always kept)."""
    x0 = torch.where(mask_index, logits.argmax(-1), x)
    conf = torch.softmax(logits.double(), -1).gather(-1, logits.argmax(-1, keepdim=True)).squeeze(-1)
    conf = torch.where(mask_index, conf, -torch.inf)
    take = torch.zeros_like(mask_index)
    for j in range(conf.shape[0]):
        n = int(mask_index[j].sum()) if threshold is not None else int(k[j])
        order = torch.topk(conf[j], n).indices
        take[j, order] = True
        if threshold is not None:
            take[j, order[1:][conf[j, order[1:]] < threshold]] = False
    return x0, take


@pytest.mark.parametrize("rule", [dict(k=(2, 0, 5)), dict(threshold=0.3), dict(threshold=1.1)])
def test_get_transfer_index_is_upstreams(rule):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g) * 2  # no ties in confidence (continuous logits)
    mask_index = torch.rand(3, 7, generator=g) < 0.7
    mask_index[1] = False  # a row with nothing to commit
    x = torch.randint(0, 11, (3, 7), generator=g)
    k = torch.tensor(rule.get("k", (0, 0, 0)))
    k = torch.minimum(k, mask_index.sum(1))
    want = _upstream_transfer(logits, mask_index, x, k=k, threshold=rule.get("threshold"))
    got = fast_dllm.get_transfer_index(logits, 0.0, "low_confidence", mask_index, x, k, rule.get("threshold"))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    # the draw at T > 0 reads only masked rows: unmasked positions keep x
    x0, _ = fast_dllm.get_transfer_index(logits, 0.7, "random", mask_index, x, k, None, seed=3)
    assert torch.equal(x0[~mask_index], x[~mask_index]) and bool((x0[mask_index] < 11).all())


def test_random_remasking_draws_upstreams_uniforms():
    """remasking="random" ranks by torch.rand((B, L)) from the global RNG, as upstream: the same float32 draws
    after the same manual_seed, and the RNG left in the same state (float64 draws differed in 49 of 50 seeds)."""
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 6, 9, generator=g)
    mask_index = torch.ones(2, 6, dtype=torch.bool)
    x = torch.zeros(2, 6, dtype=torch.long)
    k = torch.tensor([2, 3])
    for seed in range(5):
        torch.manual_seed(seed)
        _, take = fast_dllm.get_transfer_index(logits, 0.0, "random", mask_index, x, k, None)
        after = torch.rand(1)
        torch.manual_seed(seed)
        u = torch.rand((2, 6))
        want = torch.zeros_like(take)
        for j in range(2):
            want[j, torch.topk(u[j], int(k[j])).indices] = True
        assert torch.equal(take, want) and torch.equal(torch.rand(1), after)


def _logits_with_top_probs(probs):
    """[1, n, 4] logits whose position i draws token 0 at T = 0 with p(token 0) = probs[i]."""
    logits = torch.full((1, len(probs), 4), -30.0)
    for i, p in enumerate(probs):
        logits[0, i, 0] = 0.0
        logits[0, i, 1] = float(torch.log(torch.tensor((1 - p) / p)))
    return logits


@pytest.mark.parametrize("probs, want", [
    # a middle candidate fails (factor 1: c_(j) >= 1 - 1/(j + 1)): upstream's rule and mdsample's agree
    ((0.99, 0.97, 0.55, 0.96, 0.52), [True, True, False, True, False]),
    # only the last fails: upstream's loop also commits it (its off-by-one); mdsample commits the passing prefix
    ((0.95, 0.9, 0.5), [True, True, False]),
])
def test_get_transfer_index_dynamic_commits_the_passing_prefix(probs, want):
    logits = _logits_with_top_probs(probs)
    n = len(probs)
    x0, take = fast_dllm.get_transfer_index_dynamic(logits, 0.0, "low_confidence", torch.ones(1, n, dtype=torch.bool),
                                                    torch.zeros(1, n, dtype=torch.long), None, factor=1.0)
    assert take[0].tolist() == want and x0[0].tolist() == [0] * n


def test_step_helpers_check_their_arguments():
    logits, m, x = torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=torch.bool), torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"logits must be \[B, L, V\]"):
        fast_dllm.get_transfer_index(logits[0], 0.0, "low_confidence", m, x, torch.tensor([1]))
    with pytest.raises(ValueError, match="mask_index must have the logits' leading shape"):
        fast_dllm.get_transfer_index(logits, 0.0, "low_confidence", m[:, :1], x, torch.tensor([1]))
    with pytest.raises(TypeError, match="mask_index must be a bool"):
        fast_dllm.get_transfer_index(logits, 0.0, "low_confidence", m.long(), x, torch.tensor([1]))
    with pytest.raises(ValueError, match="remasking"):
        fast_dllm.get_transfer_index_dynamic(logits, 0.0, "entropy", m, x, None)
    for k in (torch.tensor([1.0]), torch.tensor(1), torch.tensor([[1, 1]])):  # float, 0-d, [B, 2]
        with pytest.raises(ValueError, match=r"num_transfer_tokens must be an integer tensor \[B\]"):
            fast_dllm.get_transfer_index(logits, 0.0, "low_confidence", m, x, k)
    for k, match in ((torch.tensor([1, 1]), r"one count per row \(1\); got shape \(2,\)"),
                     (torch.tensor([-1]), r"counts >= 0; got \[-1\]")):
        with pytest.raises(ValueError, match=match):
            fast_dllm.get_transfer_index(logits, 0.0, "low_confidence", m, x, k)
    with pytest.raises(ValueError, match="needs num_transfer_tokens .* or a threshold"):
        fast_dllm.get_transfer_index(logits, 0.0, "low_confidence", m, x, None)
    _, take = fast_dllm.get_transfer_index(logits, 0.0, "low_confidence", m, x, torch.tensor([[1]]))  # [B, 1]
    assert int(take.sum()) == 1
    assert fast_dllm.add_gumbel_noise is llada.add_gumbel_noise  # upstream's module has them too
    assert fast_dllm.get_num_transfer_tokens is llada.get_num_transfer_tokens


@pytest.mark.parametrize("fn", [fast_dllm.generate, fast_dllm.generate_with_prefix_cache,
                                fast_dllm.generate_with_dual_cache])
def test_step_callback_gets_the_global_step_from_0(fn):
    """Upstream calls step_callback(i) after every step, i counting from 0 across blocks; one forward per step
    (the cached modes' block-start forward is that block's first step)."""
    model = Transformer.from_preset("tiny", seed=0).eval()  # a KV cache for the cached modes; mask id 127
    p = torch.randint(0, 127, (2, 5), generator=torch.Generator().manual_seed(1))
    steps = []
    _, nfe = fn(model, p, 8, 16, 8, 0.0, "low_confidence", 127, 0.5, None, steps.append)
    assert steps == list(range(nfe)) and nfe >= 2
    # the fixed schedule with more steps than masks: upstream leaves a block once it is done, so the budgeted
    # steps that would commit nothing get no callback (and mdsample runs no forward for them)
    steps.clear()
    _, nfe = fn(model, p, 32, 16, 8, 0.0, "low_confidence", 127, None, None, steps.append)
    assert steps == list(range(nfe)) and nfe == 16
    with pytest.raises(TypeError, match="step_callback must be None or a callable"):
        fn(model, p, 8, 16, 8, 0.0, "low_confidence", 127, None, None, 3)
