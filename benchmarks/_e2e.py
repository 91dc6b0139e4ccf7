"""Shared pieces of the end-to-end benchmarks (benchmarks/e2e_*.py): forward counting,
timing with a device sync, and peak memory. CPU numbers are smoke-test numbers only."""
from __future__ import annotations

import resource
import time

import torch


class CountingCache:
    """Delegates to a KV cache, counting block calls and the sequence-positions fed."""

    def __init__(self, cache, owner):
        self._cache, self._owner = cache, owner

    def __getattr__(self, name):
        return getattr(self._cache, name)

    def hidden_block(self, x, start=None, **kw):
        self._owner.forwards += 1
        self._owner.positions += x.numel()
        return self._cache.hidden_block(x, start, **kw)

    def forward_block(self, x, start=None, **kw):
        self._owner.forwards += 1
        self._owner.positions += x.numel()
        return self._cache.forward_block(x, start, **kw)


class Counting(torch.nn.Module):
    """Delegates the backbone protocol to ``inner`` and counts forwards (model calls, cache
    block calls included) and token positions fed through the layer stack."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.forwards = 0
        self.positions = 0

    def reset(self):
        self.forwards = self.positions = 0

    @property
    def max_length(self):
        return self.inner.max_length

    @property
    def vocab_size(self):
        return self.inner.config.vocab_size

    @property
    def device(self):
        return self.inner.device

    def forward(self, x):
        return self.head(self.hidden(x))

    def hidden(self, x, **kw):
        self.forwards += 1
        self.positions += x.numel()
        return self.inner.hidden(x)

    def head(self, h):
        return self.inner.head(h)

    def new_cache(self, batch_size, max_len=None):
        return CountingCache(self.inner.new_cache(batch_size, max_len), self)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, device, *, tokens: int, counter=None, repeats: int = 1) -> dict:
    """Run ``fn`` once to warm up, then ``repeats`` times: median wall seconds (device-synced),
    tokens/s, forwards per run and peak memory (CUDA: max allocated; CPU: process max RSS)."""
    fn()
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(repeats):
        if counter is not None:
            counter.reset()
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    sec = times[len(times) // 2]
    row = {"seconds": sec, "tokens": tokens, "tokens_per_s": tokens / sec if sec > 0 else None,
           "forwards": None if counter is None else counter.forwards,
           "positions_fed": None if counter is None else counter.positions}
    if device.type == "cuda":
        row["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def pick_device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
