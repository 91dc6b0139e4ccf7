"""BD3-LM block diffusion: the exact block-causal KV cache equals the uncached computation."""
import pytest
import torch

import mdsample
from mdsample.models import Transformer

MASK = 127


def _model(bs):
    return Transformer.from_preset("tiny", attention="block_causal", block_size=bs, seed=0).eval()


@pytest.mark.parametrize("block_size", [4, 8, 16])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("steps", [None, 3])
def test_cached_equals_uncached(block_size, temperature, steps):
    m = _model(block_size)
    kw = dict(batch_size=3, length=32, block_size=block_size, mask_id=MASK, temperature=temperature, bos_id=0,
              seed=5, steps_per_block=steps)
    cached = mdsample.sample_bd3lm(m, **kw)
    uncached = mdsample.sample_bd3lm(m, use_cache=False, **kw)
    assert cached.shape == (3, 32)
    assert not (cached == MASK).any()
    assert (cached[:, 0] == 0).all()
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("steps", [None, 2])
def test_progress_bar(capsys, steps):
    """One bar step per sampler step (first-hitting: one per masked position), forwards against the
    published loop's one per sequence and step; the bar does not change the samples."""
    m = _model(4)
    kw = dict(batch_size=2, length=8, block_size=4, mask_id=MASK, bos_id=0, seed=1, steps_per_block=steps)
    out = mdsample.sample_bd3lm(m, progress=True, **kw)
    err = capsys.readouterr().err
    total = 7 if steps is None else 4
    assert "bd3lm" in err and f"{total}/{total}" in err and "saved" in err and "tok/s" in err
    assert torch.equal(out, mdsample.sample_bd3lm(m, **kw))


def test_seed_changes_output_and_is_reproducible():
    m = _model(4)
    kw = dict(batch_size=2, length=16, block_size=4, mask_id=MASK)
    a = mdsample.sample_bd3lm(m, seed=1, **kw)
    assert torch.equal(a, mdsample.sample_bd3lm(m, seed=1, **kw))
    assert not torch.equal(a, mdsample.sample_bd3lm(m, seed=2, **kw))


class _EosLoving(torch.nn.Module):
    """Delegates to a Transformer but boosts one token's logit (an EOS-happy model)."""

    def __init__(self, inner, eos, boost):
        super().__init__()
        self.inner, self.eos, self.boost = inner, eos, boost
        self.config = inner.config

    def forward(self, x):
        return self.head(self.inner.hidden(x))

    def hidden(self, x):
        return self.inner.hidden(x)

    def head(self, h):
        out = self.inner.head(h).clone()
        out[..., self.eos] += self.boost
        return out

    def new_cache(self, batch_size, max_len=None):
        return self.inner.new_cache(batch_size, max_len)

    @property
    def max_length(self):
        return self.inner.max_length


def test_variable_length_stop_at_eos():
    m = _EosLoving(_model(4), eos=3, boost=4.0)
    kw = dict(batch_size=2, length=64, block_size=4, mask_id=MASK, eos_id=3, temperature=1.0, seed=0)
    out = mdsample.sample_bd3lm(m, **kw)
    assert out.shape[1] < 64 and out.shape[1] % 4 == 0
    assert torch.equal(out, mdsample.sample_bd3lm(m, use_cache=False, **kw))
    for row in out:
        first = int((row == 3).nonzero()[0, 0])
        assert (row[first:] == 3).all()


class _Widest:
    """Records the widest input the model is given, forward or through the KV cache."""

    def __init__(self, inner):
        self.inner, self.config, self.widest = inner, inner.config, 0

    def _see(self, x):
        self.widest = max(self.widest, x.shape[1])

    def __call__(self, x):
        self._see(x)
        return self.inner(x)

    def hidden(self, x):
        self._see(x)
        return self.inner.hidden(x)

    def head(self, h):
        return self.inner.head(h)

    def new_cache(self, batch_size, max_len=None):
        cache, see = self.inner.new_cache(batch_size, max_len), self._see

        class Seen:
            def __getattr__(self, name):
                return getattr(cache, name)

            def hidden_block(self, x, start, **kw):
                see(x)
                assert start + x.shape[1] <= 12, (start, x.shape)  # window-relative positions
                return cache.hidden_block(x, start, **kw)

        return Seen()

    @property
    def max_length(self):
        return self.inner.max_length


@pytest.mark.parametrize("steps", [None, 2])
def test_window_shifts_left_beyond_the_context(steps):
    """A canvas longer than the model's context (14 -> a 12-position window of 4-blocks): the model
    never sees more than the window, cached equals uncached, and until the first shift the tokens
    are those of a canvas that fits (batch 1: the Philox positions are the same)."""
    inner = Transformer.from_preset("tiny", attention="block_causal", block_size=4, max_seq_len=14, seed=0).eval()
    kw = dict(batch_size=1, block_size=4, mask_id=MASK, bos_id=0, seed=2, steps_per_block=steps, temperature=1.0)
    for use_cache in (True, False):
        m = _Widest(inner)
        long = mdsample.sample_bd3lm(m, length=32, use_cache=use_cache, **kw)
        assert m.widest <= 12 and long.shape == (1, 32) and not (long == MASK).any()
        if use_cache:
            cached = long
    assert torch.equal(cached, long)
    short = mdsample.sample_bd3lm(inner, length=12, **kw)
    assert torch.equal(cached[:, :12], short)
    with pytest.raises(ValueError, match="shorter than a block"):
        mdsample.sample_bd3lm(Transformer.from_preset("tiny", attention="block_causal", block_size=4, max_seq_len=3),
                              length=8, **kw)


def test_argument_errors():
    m = _model(4)
    with pytest.raises(ValueError):
        mdsample.sample_bd3lm(m, batch_size=1, length=10, block_size=4, mask_id=MASK)
    with pytest.raises(ValueError):
        mdsample.sample_bd3lm(m, batch_size=1, length=16, block_size=8, mask_id=MASK)
    with pytest.raises(ValueError):
        mdsample.sample_bd3lm(m, batch_size=1, length=16, block_size=4, mask_id=MASK, steps_per_block=2,
                              first_hitting=True)
    with pytest.raises(ValueError):
        mdsample.sample_bd3lm(Transformer.from_preset("tiny"), batch_size=1, length=16, block_size=4, mask_id=MASK)
    with pytest.raises(ValueError, match="shifted"):
        mdsample.sample_bd3lm(mdsample.models.shifted(m), batch_size=1, length=16, block_size=4, mask_id=MASK)
