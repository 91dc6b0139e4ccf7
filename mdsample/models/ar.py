"""The autoregressive twin: KV-cache incremental decoding of a ``"causal"`` :class:`Transformer`.

This is the baseline masked-diffusion samplers race against (issue 5): same model shape,
attention causal, one token per forward, the prefix K/V cached in a static
:class:`~mdsample.models.kv_cache.KVCache`. Tokens are drawn with
:func:`mdsample.sample_categorical` (exact; temperature 0 = argmax, lowest index on ties).

Randomness: the token at absolute position ``t`` of row ``b`` uses Philox counter
``(seed, offset=t, position=b)`` (DESIGN.md §3), so a row's text depends on its seed, its
row index and its prompt only, and the cached and uncached loops draw identical tokens.
"""
from __future__ import annotations

import torch

from ..ops import _validate as V
from ..ops.sampling import sample_categorical
from .transformer import Transformer


def _check(model: Transformer, prompt: torch.Tensor, max_new_tokens: int) -> int:
    """The checked arguments of an AR decode; returns ``max_new_tokens`` as an int."""
    if model.config.attention != "causal":
        raise ValueError(f"AR decoding needs a model with attention='causal'; got {model.config.attention!r}")
    if not isinstance(prompt, torch.Tensor) or prompt.dtype != torch.int64 or prompt.dim() != 2 or prompt.shape[1] == 0:
        raise TypeError("prompt must be a non-empty int64 LongTensor [B, P]")
    max_new_tokens = V.int_number("max_new_tokens", max_new_tokens, low=0)
    if prompt.shape[1] + max_new_tokens > model.config.max_seq_len:
        raise ValueError(f"prompt ({prompt.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds "
                         f"max_seq_len ({model.config.max_seq_len})")
    V.tokens_in_vocab("prompt", prompt, model.config.vocab_size)  # one host read, before the loop
    return max_new_tokens


def _draw(logits, temperature, seed, t, rows, backend):
    # check=False: no host sync per token; a row with no valid draw (NaN logits) returns -1,
    # which is reported once after the loop.
    return sample_categorical(logits, temperature=temperature, seed=seed, offset=t, positions=rows,
                              check=False, backend=backend)


def _finish(out: torch.Tensor) -> torch.Tensor:
    if bool((out < 0).any()):
        row = int((out < 0).any(dim=1).nonzero()[0, 0])
        raise ValueError(f"row {row}: the model produced logits with nothing to sample (NaN or no finite logit)")
    return out


@torch.no_grad()
def generate_ar(model: Transformer, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                seed: int = 0, *, backend: str = "auto") -> torch.Tensor:
    """KV-cache AR generation: prompt ``[B, P]`` -> ``[B, P + max_new_tokens]``.

    One prefill forward over the prompt, then one single-token forward per new token against
    a static cache of ``P + max_new_tokens`` slots; logits are computed only for the last
    position. No early stop (an EOS check would need a host sync per token).

    Args:
        model: a :class:`Transformer` with ``attention="causal"``.
        prompt: int64 ``[B, P]``, ``P >= 1``.
        max_new_tokens: tokens to append.
        temperature: >= 0; 0 = greedy.
        seed: Philox key of the draws.
        backend: backend of :func:`mdsample.sample_categorical`.
    """
    max_new_tokens = _check(model, prompt, max_new_tokens)
    b, p = prompt.shape
    out = torch.empty(b, p + max_new_tokens, dtype=torch.int64, device=prompt.device)
    out[:, :p] = prompt
    if max_new_tokens == 0:
        return out
    rows = torch.arange(b, device=prompt.device)
    cache = model.new_cache(b, p + max_new_tokens)
    h_last = cache.prefill(prompt)[:, -1]  # [B, D]
    for t in range(p, p + max_new_tokens):
        tok = _draw(model.head(h_last), temperature, seed, t, rows, backend)  # [B]
        out[:, t] = tok
        if t + 1 < p + max_new_tokens:
            # clamp: a -1 (bad row) must not index the embedding; _finish reports it.
            h_last = cache.hidden_block(tok.clamp_min(0)[:, None], t)[:, 0]
            cache.commit(t, 1)
    return _finish(out)


@torch.no_grad()
def generate_ar_uncached(model: Transformer, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                         seed: int = 0, *, backend: str = "auto") -> torch.Tensor:
    """The naive AR loop: a full uncached forward over the whole sequence for every new token.

    Same draws as :func:`generate_ar` (same counters): the reference it is tested against and
    the no-cache baseline of the benchmarks. Shapes as in :func:`generate_ar`.
    """
    max_new_tokens = _check(model, prompt, max_new_tokens)
    b, p = prompt.shape
    out = torch.empty(b, p + max_new_tokens, dtype=torch.int64, device=prompt.device)
    out[:, :p] = prompt
    rows = torch.arange(b, device=prompt.device)
    for t in range(p, p + max_new_tokens):
        h_last = model.hidden(out[:, :t].clamp_min(0))[:, -1]
        out[:, t] = _draw(model.head(h_last), temperature, seed, t, rows, backend)
    return _finish(out)
