"""Batch invariance (DESIGN.md §3): a row's token depends only on its logits and
(seed, offset, position), never on batch size, row order, its index in the batch,
the leading shape or the strides of the logits.

Deterministic checks (false alarm 0). Batches of 100 rows (10 under the Triton
interpreter) of random logits over V = 3000 (two
chunks) with per-row seeds, offsets and positions that use the high bits
(negative seeds are 64-bit seeds with the top bit set; positions up to 2^48 - 1).
"""
from __future__ import annotations

import pytest
import torch

from ._stat_helpers import DEVICE, per_backend, sample, unmask

V = 3000


def batch_size(backend: str) -> int:
    return per_backend(backend, cpu=100, reference=100, triton=10)


def batch(dtype=torch.float32, seed: int = 0, B: int = 100):
    gen = torch.Generator().manual_seed(1000 + seed)
    logits = (2.0 * torch.randn(B, V, generator=gen)).to(dtype)
    seeds = torch.randint(-(2**63), 2**63 - 1, (B,), generator=gen)
    offsets = torch.randint(0, 2**63 - 1, (B,), generator=gen)
    positions = torch.randint(0, 2**48, (B,), generator=gen)
    positions[:4] = torch.tensor([0, 1, 2**32, 2**48 - 1])
    return logits, seeds, offsets, positions


def draw(logits, seeds, offsets, positions, backend, **kw):
    return sample(logits, seed=seeds, offset=offsets, positions=positions, backend=backend, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_row_alone_equals_row_in_batch(backend, dtype):
    """Each row drawn alone (batch of 1) gives the token it got inside the batch,
    and a second call gives the same tokens bitwise. Deterministic: false alarm 0."""
    B = batch_size(backend)
    logits, seeds, offsets, positions = batch(dtype, B=B)
    full = draw(logits, seeds, offsets, positions, backend)
    assert torch.equal(full, draw(logits, seeds, offsets, positions, backend)), "two identical calls differ"
    step = per_backend(backend, cpu=1, reference=4, triton=1)  # the reference: every 4th row alone
    for i in range(0, B, step):
        one = draw(logits[i:i + 1], seeds[i:i + 1], offsets[i:i + 1], positions[i:i + 1], backend)
        assert int(one[0]) == int(full[i]), f"row {i}: alone {int(one[0])}, in batch {int(full[i])}"


def test_row_at_other_index_of_other_batch(backend):
    """Row i of batch A placed at index j of batch B (other rows different) keeps its token.
    Deterministic: false alarm 0."""
    B = batch_size(backend)
    a_logits, a_seeds, a_offsets, a_positions = batch(seed=0, B=B)
    b_logits, b_seeds, b_offsets, b_positions = batch(seed=1, B=B)
    a = draw(a_logits, a_seeds, a_offsets, a_positions, backend)
    checks = per_backend(backend, cpu=20, reference=20, triton=2)
    gen = torch.Generator().manual_seed(9)
    for _ in range(checks):
        i, j = (int(x) for x in torch.randint(0, B, (2,), generator=gen))
        bl, bs, bo, bp = b_logits.clone(), b_seeds.clone(), b_offsets.clone(), b_positions.clone()
        bl[j], bs[j], bo[j], bp[j] = a_logits[i], a_seeds[i], a_offsets[i], a_positions[i]
        b = draw(bl, bs, bo, bp, backend)
        assert int(b[j]) == int(a[i]), f"row {i} of A at index {j} of B: {int(b[j])} != {int(a[i])}"


def test_shuffled_batch(backend):
    """A permuted batch returns the permuted tokens. Deterministic: false alarm 0."""
    B = batch_size(backend)
    logits, seeds, offsets, positions = batch(seed=2, B=B)
    base = draw(logits, seeds, offsets, positions, backend)
    perm = torch.randperm(B, generator=torch.Generator().manual_seed(4))
    shuffled = draw(logits[perm], seeds[perm], offsets[perm], positions[perm], backend)
    assert torch.equal(shuffled, base[perm])


def test_leading_shape_strides_and_scalar_keys(backend):
    """[2, B/2, V] and strided / expanded leading dims give the same tokens as [100, V];
    scalar seed / offset equal full tensors of them; default positions are the flat index.
    Deterministic: false alarm 0."""
    B = batch_size(backend)
    logits, _, _, positions = batch(seed=3, B=B)
    base = draw(logits, 17, 5, positions, backend)
    assert torch.equal(draw(logits.view(2, B // 2, V), 17, 5, positions.view(2, B // 2), backend).flatten(), base)
    assert torch.equal(draw(logits, torch.full((B,), 17), torch.full((B,), 5), positions, backend), base)
    wide = torch.zeros(2 * B, V, device=DEVICE)  # strided rows on the device itself
    wide[::2] = logits.to(DEVICE)
    assert torch.equal(draw(wide[::2], 17, 5, positions, backend), base), "strided rows"
    default = sample(logits, seed=17, offset=5, backend=backend)
    assert torch.equal(default, draw(logits, 17, 5, torch.arange(B), backend)), "default positions != flat index"
    row = logits[7]
    expanded = draw(row.expand(B, V), 17, 5, positions, backend)
    copied = draw(row.repeat(B, 1), 17, 5, positions, backend)
    assert torch.equal(expanded, copied), "an expanded row draws differently from its copy"


def test_unmask_step_batch_invariance(backend):
    """unmask_step: a position's result depends only on its own row, x and (seed, offset,
    position): a shuffled batch gives the shuffled result, a lone row its batch result.
    Deterministic: false alarm 0."""
    B = batch_size(backend)
    logits, seeds, offsets, positions = batch(seed=5, B=B)
    mask_id = 11
    gen = torch.Generator().manual_seed(6)
    x = torch.where(torch.rand(B, generator=gen) < 0.7, mask_id, torch.randint(0, V, (B,), generator=gen))
    prob = torch.rand(B, generator=gen, dtype=torch.float64)
    kw = dict(mask_id=mask_id, backend=backend)
    base = unmask(logits, x, reveal_prob=prob, seed=seeds, offset=offsets, positions=positions, **kw)
    perm = torch.randperm(B, generator=gen)
    shuffled = unmask(
        logits[perm], x[perm], reveal_prob=prob[perm], seed=seeds[perm], offset=offsets[perm],
        positions=positions[perm], **kw,
    )
    assert torch.equal(shuffled, base[perm])
    i = int(torch.nonzero(x == mask_id)[0, 0])
    one = unmask(
        logits[i:i + 1], x[i:i + 1], reveal_prob=prob[i:i + 1], seed=seeds[i:i + 1], offset=offsets[i:i + 1],
        positions=positions[i:i + 1], **kw,
    )
    assert int(one[0]) == int(base[i])
