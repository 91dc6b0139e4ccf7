"""unmask_step: carry-over, reveal decisions and tokens equal on every backend; bad input.

The reveal frequency and token distribution are tested statistically in tests/stats/.
"""
import math

import pytest
import torch

import mdsample
from mdsample.reference.unmask import reveal

MASK = 3


def _case(device, b=4, length=50, v=2100, masked=0.7, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn((b, length, v), generator=g) * 2).to(device)
    x = torch.randint(0, v, (b, length), generator=g)
    x[torch.rand((b, length), generator=g) < masked] = MASK
    return logits, x.to(device)


def test_matches_reference(fast_backend, device):
    logits, x = _case(device)
    kw = dict(mask_id=MASK, reveal_prob=0.3, seed=4, offset=2)
    got, revealed = mdsample.unmask_step(logits, x, return_revealed=True, backend=fast_backend, **kw)
    want = mdsample.unmask_step(logits, x, backend="reference", **kw)
    assert torch.equal(got.cpu(), want.cpu())
    flat = torch.arange(x.numel()).view_as(x)
    coins = reveal(x.cpu().flatten(), MASK, torch.full((x.numel(),), 0.3, dtype=torch.float64),
                   torch.full((x.numel(),), 4), torch.full((x.numel(),), 2), flat.flatten()).view_as(x)
    assert torch.equal(revealed.cpu(), coins)


def test_carry_over_and_never_the_mask(fast_backend, device):
    logits, x = _case(device)
    logits[..., MASK] = 30.0  # the mask logit would win every draw without SUBS
    before_x, before_l = x.clone(), logits.clone()
    out = mdsample.unmask_step(logits, x, mask_id=MASK, reveal_prob=1.0, backend=fast_backend)
    unmasked = x != MASK
    assert torch.equal(out[unmasked], x[unmasked])
    assert not (out == MASK).any()
    assert torch.equal(x, before_x) and torch.equal(logits, before_l)
    none = mdsample.unmask_step(logits, x, mask_id=MASK, reveal_prob=0.0, backend=fast_backend)
    assert torch.equal(none, x)


def test_unrevealed_rows_are_not_read(fast_backend, device):
    logits, x = _case(device)
    logits[x != MASK] = math.nan  # carried-over rows: a read would show as a NaN error
    out = mdsample.unmask_step(logits, x, mask_id=MASK, reveal_prob=0.5, backend=fast_backend)
    assert torch.equal(out[x != MASK], x[x != MASK])


def test_per_sequence_reveal_prob_and_temperature(fast_backend, device):
    logits, x = _case(device)
    prob = torch.tensor([[0.0], [1.0], [0.5], [0.25]], dtype=torch.float64, device=device)
    kw = dict(mask_id=MASK, reveal_prob=prob, temperature=torch.tensor([[0.0], [1.0], [0.5], [2.0]], device=device), seed=1)
    got = mdsample.unmask_step(logits, x, backend=fast_backend, **kw)
    assert torch.equal(got.cpu(), mdsample.unmask_step(logits, x, backend="reference", **kw).cpu())
    assert torch.equal(got[0], x[0]) and not (got[1] == MASK).any()


def test_guidance_matches_reference(fast_backend, device):
    logits, x = _case(device)
    uncond, _ = _case(device, seed=1)
    kw = dict(mask_id=MASK, reveal_prob=0.5, guidance=uncond, guidance_scale=2.0, seed=3)
    assert torch.equal(mdsample.unmask_step(logits, x, backend=fast_backend, **kw).cpu(),
                       mdsample.unmask_step(logits, x, backend="reference", **kw).cpu())


def test_batch_invariance(fast_backend, device):
    """A sequence's step depends on (seed, offset, its positions), not on its batch."""
    logits, x = _case(device)
    length = x.shape[1]
    full = mdsample.unmask_step(logits, x, mask_id=MASK, reveal_prob=0.4, seed=7, backend=fast_backend)
    positions = torch.arange(2 * length, 3 * length, device=device).view(1, -1)
    alone = mdsample.unmask_step(logits[2:3], x[2:3], mask_id=MASK, reveal_prob=0.4, seed=7,
                                 positions=positions, backend=fast_backend)
    assert torch.equal(alone[0], full[2])


BAD = [
    (dict(x=torch.zeros(2, 5)), TypeError, "x"),
    (dict(x=torch.zeros(2, 4, dtype=torch.int64)), ValueError, "x"),
    (dict(x=torch.full((2, 5), 99)), ValueError, "x"),
    (dict(x=torch.zeros(2, 5, dtype=torch.int64, device="meta")), ValueError, "x.*same device"),
    (dict(mask_id=7), ValueError, "mask_id"),
    (dict(mask_id=None), TypeError, "mask_id"),
    (dict(reveal_prob=1.5), ValueError, "reveal_prob"),
    (dict(reveal_prob=-0.1), ValueError, "reveal_prob"),
    (dict(reveal_prob=torch.tensor([0.5, 2.0]).view(2, 1)), ValueError, "reveal_prob"),
    (dict(reveal_prob=torch.ones(3)), ValueError, "reveal_prob"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(check=0), TypeError, "check must be a bool"),
    (dict(return_revealed="no"), TypeError, "return_revealed must be a bool"),  # returned a tuple once
]


@pytest.mark.parametrize("kw,exc,name", BAD, ids=[f"{i}-{c[2]}" for i, c in enumerate(BAD)])
def test_bad_input_names_the_argument(kw, exc, name):
    args = dict(x=torch.zeros(2, 5, dtype=torch.int64), mask_id=0, reveal_prob=0.5)
    args.update(kw)
    with pytest.raises(exc, match=name):
        mdsample.unmask_step(torch.zeros(2, 5, 7), args.pop("x"), **args)
