"""Static KV cache: the cached forward equals the uncached forward (fp32, ~1e-5).

block_causal is exact by construction (a block sees only finished blocks), so the cached
block calls of a BD3-LM-style loop must match the full forward of the same canvas. For the
bidirectional model the prefix/dual cache is an approximation; it is exact when nothing
outside the fed chunk changed since the cache was filled, which is what is checked here.
"""
import pytest
import torch

from mdsample.models import KVCache, Transformer, preset

TOL = dict(rtol=1e-5, atol=1e-5)


def model_for(attention, block_size=4, **kw):
    return Transformer(preset("tiny", attention=attention, block_size=block_size, **kw), seed=3)


def tokens(b, n, seed=0, vocab=127):
    return torch.randint(0, vocab, (b, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("block_size", [4, 8, 16])
@torch.no_grad()
def test_block_causal_cached_blocks_equal_uncached(block_size, no_host_sync):
    """BD3-LM pattern: noisy steps on the current block against cached finished blocks, then
    the clean block's K/V written and committed; every cached logit equals the full forward."""
    model = model_for("block_causal", block_size)
    mask_id = model.config.mask_id
    b, nblocks = 2, 4
    x = tokens(b, block_size * nblocks, seed=block_size)
    cache = model.new_cache(b, block_size * nblocks)
    storage = cache.kv.data_ptr()
    gen = torch.Generator().manual_seed(7)
    for k in range(nblocks):
        s, e = k * block_size, (k + 1) * block_size
        for step in range(3):  # denoising steps: a partly masked block
            noisy = x[:, s:e].clone()
            noisy[torch.rand(noisy.shape, generator=gen) < 0.5] = mask_id
            with no_host_sync():
                got = cache.forward_block(noisy, s)
            want = model(torch.cat([x[:, :s], noisy], dim=1))[:, s:e]
            torch.testing.assert_close(got, want, **TOL)
        got = cache.forward_block(x[:, s:e], s)  # the finished block: its K/V become the prefix
        torch.testing.assert_close(got, model(x[:, :e])[:, s:e], **TOL)
        cache.commit(s, block_size)
    assert cache.length == x.shape[1] and cache.kv.data_ptr() == storage


@pytest.mark.parametrize("block_size", [4, 8, 16])
@torch.no_grad()
def test_block_causal_clean_block_fused_with_next_block(block_size):
    """Feeding [finished block | next noisy block] in one call writes the clean K/V and gives
    the next block's first-step logits: the block-causal mask keeps the two apart."""
    model = model_for("block_causal", block_size)
    b = 3
    x = tokens(b, block_size * 3, seed=11)
    prompt_len = block_size + block_size // 2  # a prompt ending mid-block
    cache = model.new_cache(b, x.shape[1])
    h = cache.prefill(x[:, :prompt_len])
    full = model(x)
    torch.testing.assert_close(model.head(h), model(x[:, :prompt_len]), **TOL)
    # The prompt's partial block is not final (its K/V must see the whole block): only block 0 is committed.
    assert cache.length == block_size
    # finish block 1 (prompt tail + generated tokens) fused with block 2's first step
    noisy = x[:, 2 * block_size:].clone()
    noisy[:, ::2] = model.config.mask_id
    chunk = torch.cat([x[:, block_size:2 * block_size], noisy], dim=1)
    got = cache.forward_block(chunk, block_size)
    want = model(torch.cat([x[:, :2 * block_size], noisy], dim=1))[:, block_size:]
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(got[:, :block_size], full[:, block_size:2 * block_size], **TOL)
    with pytest.raises(ValueError, match="inside a block"):
        cache.commit(block_size, block_size // 2)
    cache.commit(block_size, block_size)
    got = cache.forward_block(x[:, 2 * block_size:], 2 * block_size)
    torch.testing.assert_close(got, full[:, 2 * block_size:], **TOL)


@pytest.mark.parametrize("attention", ["block_causal", "causal", "bidirectional"])
@torch.no_grad()
def test_static_tensor_start_path_equals_eager(attention, no_host_sync):
    """The graph-safe path (start as a device tensor, attention over all slots with a mask)
    gives the eager path's logits and K/V, without host reads."""
    model = model_for(attention, 4)
    x = tokens(2, 16, seed=5)
    eager, static = model.new_cache(2, 24), model.new_cache(2, 24)
    eager.prefill(x[:, :8])
    static.prefill(x[:, :8])
    for s in (8, 12):
        want = eager.forward_block(x[:, s:s + 4], s)
        eager.commit(s, 4)
        with no_host_sync():
            got = static.forward_block(x[:, s:s + 4], torch.tensor(s))
        torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(static.kv[..., :16, :], eager.kv[..., :16, :], **TOL)


@torch.no_grad()
def test_causal_incremental_decoding_equals_uncached(no_host_sync):
    model = model_for("causal")
    x = tokens(2, 20, seed=9)
    full = model(x)
    cache = model.new_cache(2, 20)
    torch.testing.assert_close(model.head(cache.prefill(x[:, :6])), full[:, :6], **TOL)
    for t in range(6, 20):
        with no_host_sync():
            got = cache.forward_block(x[:, t:t + 1], t)
        torch.testing.assert_close(got, full[:, t:t + 1], **TOL)
        cache.commit(t, 1)
    # several tokens at once (speculative-style chunk) need the in-chunk causal mask
    cache.commit(0, 12)
    torch.testing.assert_close(cache.forward_block(x[:, 12:], 12), full[:, 12:], **TOL)


@pytest.mark.parametrize("block_size", [4, 8])
@torch.no_grad()
def test_bidirectional_prefix_and_dual_cache_exact_when_unchanged(block_size):
    """Fast-dLLM patterns on an unchanged canvas: prefix cache (feed block + suffix) and dual
    cache (feed the block only, suffix K/V from the refresh) equal the full forward."""
    model = model_for("bidirectional")
    L = 4 * block_size
    x = tokens(2, L, seed=13)
    x[:, 2 * block_size:] = model.config.mask_id  # the undecoded suffix
    full = model(x)
    cache = model.new_cache(2, L)
    for s in range(0, L, block_size):
        refreshed = cache.forward_block(x, 0)  # the block's first step: full forward, all K/V stored
        torch.testing.assert_close(refreshed, full, **TOL)
        cache.commit(0, s)
        prefix = cache.forward_block(x[:, s:], s)  # prefix cache: block + suffix
        torch.testing.assert_close(prefix, full[:, s:], **TOL)
        cache.forward_block(x, 0)  # refresh again (the prefix call rewrote the block+suffix rows identically)
        cache.commit(0, s)
        dual = cache.forward_block(x[:, s:s + block_size], s, kv_len=L)  # dual cache: block only
        torch.testing.assert_close(dual, full[:, s:s + block_size], **TOL)


@torch.no_grad()
def test_dual_cache_keeps_suffix_frozen_and_overwrites_block():
    """A changed block in dual-cache mode: its rows are rewritten, the suffix rows stay as refreshed."""
    model = model_for("bidirectional")
    x = tokens(1, 16, seed=17)
    cache = model.new_cache(1, 16)
    cache.forward_block(x, 0)
    cache.commit(0, 4)
    before = cache.kv.clone()
    y = x.clone()
    y[:, 4:8] = model.config.mask_id
    cache.forward_block(y[:, 4:8], 4, kv_len=16)
    assert torch.equal(cache.kv[..., :4, :], before[..., :4, :])
    assert torch.equal(cache.kv[..., 8:, :], before[..., 8:, :])
    assert not torch.equal(cache.kv[..., 4:8, :], before[..., 4:8, :])


def test_bookkeeping_errors():
    model = model_for("block_causal")
    cache = model.new_cache(2, 16)
    x = tokens(2, 16)
    with torch.no_grad():
        cache.prefill(x[:, :4])
        with pytest.raises(ValueError, match="committed prefix"):
            cache.forward_block(x[:, 8:12], 8)  # skips block 4..7
        with pytest.raises(ValueError, match="kv_len"):
            cache.forward_block(x[:, 4:8], 4, kv_len=12)  # reads slots never written
        with pytest.raises(ValueError, match="batch"):
            cache.forward_block(x[:1, 4:8], 4)
        with pytest.raises(ValueError, match="fit"):
            cache.forward_block(tokens(2, 16), 4)
        with pytest.raises(ValueError, match="gap"):
            cache.commit(8, 4)
        with pytest.raises(ValueError, match="never written"):
            cache.commit(4, 4)
        cache.forward_block(x[:, 4:8])  # default start = committed length
        cache.commit(4, 4)
        assert cache.length == 8
        cache.commit(0, 4)  # rollback
        assert cache.length == 4
    with pytest.raises(ValueError, match="max_len"):
        model.new_cache(1, 1000)
    assert isinstance(cache, KVCache)
    assert cache.kv.shape == (2, 2, 2, 2, 16, 16)  # [layers, 2, B, kv_heads, max_len, head_dim]


@pytest.mark.parametrize("bad", [-1, 128])
@torch.no_grad()
def test_token_ids_outside_the_vocabulary_are_named(bad):
    """An id outside [0, vocab) gave the embedding's bare IndexError; now a ValueError names x and the id, in
    the uncached and the cached forward, and the cache writes nothing."""
    model = model_for("causal")
    x = tokens(2, 6)
    x[1, 3] = bad
    with pytest.raises(ValueError, match=f"x holds token id {bad}, outside the model's vocabulary of size 128"):
        model(x)
    cache = model.new_cache(2, 8)
    with pytest.raises(ValueError, match=f"token id {bad}"):
        cache.forward_block(x, 0)
    assert cache.filled == 0 and not cache.kv.any()


def test_positions_and_sizes_must_be_ints():
    """int(start) read 5.9 as 5 and True as 1, and KVCache(model, True) made a batch-1 cache: a position or
    size that is not an int is now a TypeError naming it; a negative length names its range."""
    model = model_for("block_causal")
    cache = model.new_cache(2, 16)
    x = tokens(2, 4)
    with torch.no_grad():
        cache.forward_block(x, 0)
        for name, kw in (("start", dict(start=0.0)), ("start", dict(start=True)),
                         ("kv_len", dict(start=0, kv_len=4.0))):
            with pytest.raises(TypeError, match=f"{name} must be an int"):
                cache.forward_block(x, **kw)
        with pytest.raises(TypeError, match="kv_len may be a tensor only with a tensor start"):
            cache.forward_block(x, 0, kv_len=torch.tensor(4))
    with pytest.raises(ValueError, match=r"length must be an int in \[0, inf\]; got -1"):
        cache.commit(0, -1)
    with pytest.raises(TypeError, match="start must be an int"):
        cache.commit(0.5, 4)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        KVCache(model, True, 4)
    with pytest.raises(TypeError, match="max_len"):
        KVCache(model, 2, 4.0)
    with pytest.raises(TypeError, match="attention_mask must be a torch.Tensor"):
        cache.set_key_mask([[1, 1], [1, 1]])


def _padding(b, n, lens):
    am = torch.zeros(b, n, dtype=torch.long)
    for j, k in enumerate(lens):
        am[j, n - k:] = 1  # left padding
    return am


@pytest.mark.parametrize("attention", ["bidirectional", "block_causal", "causal"])
@torch.no_grad()
def test_padding_keys_are_hidden(attention):
    """Real positions do not see padding: their outputs do not depend on the pad tokens; an all-ones mask
    is no mask; the cached calls (eager and tensor-start) apply the same mask as the uncached forward."""
    model = model_for(attention)
    x = tokens(3, 12, seed=4)
    am = _padding(3, 12, [12, 8, 4] if attention == "block_causal" else [12, 7, 3])  # cache: whole blocks
    torch.testing.assert_close(model.hidden(x, torch.ones_like(x)), model.hidden(x), **TOL)
    h = model.hidden(x, am)
    other = torch.where(am.bool(), x, (x + 5) % 127)  # different pad tokens
    real = am.bool()
    torch.testing.assert_close(model.hidden(other, am)[real], h[real], **TOL)
    assert not torch.allclose(model.hidden(x)[real], h[real], **TOL)  # the mask does something
    for start in (8, torch.tensor(8)):  # eager, then the graph-safe path
        cache = model.new_cache(3, 16, attention_mask=am)
        full = cache.hidden_block(x, 0)  # writes every slot (the prefix / dual cache's refresh)
        torch.testing.assert_close(full[real], h[real], **TOL)
        cache.commit(0, 8)
        got = cache.hidden_block(x[:, 8:], start, kv_len=12)
        torch.testing.assert_close(got[real[:, 8:]], h[:, 8:][real[:, 8:]], **TOL)
    with pytest.raises(ValueError, match="attention_mask"):
        model.hidden(x, am[:2])


@pytest.mark.parametrize("attention", ["bidirectional", "block_causal", "causal"])
@torch.no_grad()
def test_a_padded_row_computes_its_prompt_alone(attention):
    """RoPE attention depends on relative positions only, and the causal order and block grid count from a
    row's first real token: with its padding hidden, a left-padded row gives what its tokens give alone (so
    absolute positions equal Hugging Face's / Dream's real-token count). Padding of 3, 4 and 5 positions
    (block 4): at absolute positions, block_causal grouped the 3- and 5-padded rows' tokens into other blocks
    (1.5 off). The cache keeps absolute blocks, so there padding is whole blocks (the refusal is tested below)."""
    model = model_for(attention)
    x = tokens(2, 10, seed=6)
    for pad in (3, 4, 5):
        am = _padding(2, 10, [10, 10 - pad])
        torch.testing.assert_close(model.hidden(x, am)[1, pad:], model.hidden(x[1:, pad:])[0], **TOL)
    am = _padding(2, 10, [10, 6])
    cache = model.new_cache(2, 12, attention_mask=am)
    cache.hidden_block(x, 0)
    cache.commit(0, 8)
    alone = model.new_cache(1, 12)
    alone.hidden_block(x[1:, 4:], 0)
    alone.commit(0, 4)
    torch.testing.assert_close(cache.hidden_block(x[:, 8:], 8, kv_len=10)[1],
                               alone.hidden_block(x[1:, 8:], 4, kv_len=6)[0], **TOL)


def test_a_block_causal_cache_takes_padding_by_whole_blocks():
    """The cache's blocks lie at absolute positions: padding of 3 (block 4) would regroup the row's tokens,
    so set_key_mask names the row; whole blocks, no padding and a bidirectional cache pass."""
    model = model_for("block_causal")
    with pytest.raises(ValueError, match="row 1 has 3 padding positions.*block_size=4"):
        model.new_cache(2, 12, attention_mask=_padding(2, 10, [10, 7]))
    model.new_cache(2, 12, attention_mask=_padding(2, 10, [10, 6]))
    model.new_cache(2, 12, attention_mask=torch.ones(2, 10, dtype=torch.long))
    model_for("bidirectional").new_cache(2, 12, attention_mask=_padding(2, 10, [10, 7]))


@torch.no_grad()
def test_a_shorter_key_mask_replaces_a_longer_one():
    """set_key_mask again with fewer columns: the slots past it are real, not the earlier mask's padding."""
    model = model_for("bidirectional")
    x = tokens(2, 8, seed=7)
    cache = model.new_cache(2, 12, attention_mask=torch.tensor([[1] * 12, [1] * 4 + [0] * 8]))
    cache.set_key_mask(torch.ones(2, 6, dtype=torch.long))
    fresh = model.new_cache(2, 12, attention_mask=torch.ones(2, 6, dtype=torch.long))
    torch.testing.assert_close(cache.hidden_block(x, 0), fresh.hidden_block(x, 0), **TOL)
    torch.testing.assert_close(fresh.hidden_block(x, 0), model.hidden(x), **TOL)


def test_a_cache_in_another_dtype_or_device_is_refused():
    """Attention reads the cache beside the queries: a bf16 cache of an fp32 model failed deep in SDPA."""
    m = Transformer.from_preset("tiny")
    m.new_cache(2, 8, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="dtype must be the model's"):
        m.new_cache(2, 8, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="device must be the model's"):
        m.new_cache(2, 8, device="meta")
