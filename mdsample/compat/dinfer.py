"""Drop-ins for dInfer's parallel decoders (``dinfer.decoding.parallel_strategy``).

A dInfer decoder turns the logits of the current block into commits:
``decoder.decode(logits, block_start, block_end, x)`` with ``logits`` ``[B, block, V]`` (the
block's rows) writes the committed tokens into the canvas ``x`` in place; dInfer's iteration
loops call ``decoder.block_init(block, block_id)`` at each block start and read
``decoder.mask_id`` / ``eos_id``. The classes here take upstream's constructor arguments and
keep that interface, so a dInfer pipeline swaps the import. Upstream builds a float32 (or
float64) softmax and a float64 Gumbel tensor over ``[B, block, V]`` per call (the credit
decoder also a dense ``[B, block, V]`` matrix); here each masked row is read once by
:func:`mdsample.sample_categorical` (token and ``log p(x0)``), unmasked rows are not read (the
credit decoder copies the block's rows to float32 to fuse them), and every batch size works (upstream's hierarchy
decoder takes batch 1). With ``check=True`` (the default) a masked row whose logits hold NaN or +inf,
or no finite logit but the mask's, raises ``ValueError`` naming it (one host sync per call); with
``check=False`` nothing syncs the host (but a CUDA tensor passed as ``iter_threshold``) and such a
row commits nothing, so a loop decoding until no mask is left would not end.

Rules (samplers/remasking.py states them exactly): ``ThresholdParallelDecoder`` commits the
masked positions with ``p(x0) >= min(threshold, max p(x0) - 1e-5)``; ``HierarchyDecoder``
the most confident positions (all tied) of each run of adjacent masked positions if above
``low_threshold``, every one above ``threshold``, and the top-1;
``CreditThresholdParallelDecoder`` the threshold rule on logits fused with a decaying credit of
the tokens each position kept predicting (samplers/credit.py).

Randomness (``temperature > 0``): ``seed=None`` draws a Philox key from torch's global RNG at each
call (upstream consumes that RNG too, so ``torch.manual_seed`` reproduces a run); an int key makes
the n-th call of a decoder use Philox offset n. Position ``(b, p)`` of the canvas is draw
``b * 2**32 + p``.

Confidences are upstream's: ``p(x0)`` under the softmax over all V tokens, the mask included
(recovered from the op's ``log p(x0)`` and two gathered logits), in float32 for the threshold and
credit decoders and in the logits' dtype for the hierarchy decoder (upstream's ``log_softmax`` /
``exp`` of bf16 logits round to bf16: here the float32 log p is rounded once, as a float32-accumulating
kernel does; torch's CPU bf16 ``log_softmax`` rounds twice and can land a bf16 step away), compared with thresholds rounded to that dtype, as torch's
comparison with a Python float does. ``use_float64=True`` asks for upstream's float64 softmax: it
is computed as upstream does, over the block's rows (a ``[B, block, V]`` float64 temporary, the
price of that option), so the threshold decisions are exactly upstream's.

Differences from upstream, deliberate: the mask token is never drawn (upstream drops a position
whose draw is the mask from this call's candidates; here it draws its best other token);
``remasking`` must be ``"low_confidence"``, the only rule upstream's decoders compute (they
ignore the argument).
"""
from __future__ import annotations

import math
import struct
from typing import Optional

import torch

from ..ops.sampling import sample_categorical
from ..samplers import _checks as C
from ..samplers.credit import Credit, credit_settings
from ..samplers.remasking import logprob_with, select
from ._seed import call_key

__all__ = ["ThresholdParallelDecoder", "HierarchyDecoder", "CreditThresholdParallelDecoder"]

LLADA_MASK_ID, LLADA_EOS_ID = 126336, 126081
_NEAR_TOP = 1e-5  # dInfer's cutoff: min(threshold, max confidence - 1e-5)
_ROW_STRIDE = 2 ** 32  # Philox position of canvas position (b, p): b * 2**32 + p


class _BlockDecoder:
    """What the three decoders share: arguments, the draw of a block's masked rows, the commit."""

    conf_dtype = torch.float32  # the dtype upstream computes the confidences in (None: the logits')

    def __init__(self, temperature, remasking, mask_id, eos_id, seed, backend, check):
        self.temperature = C.real("temperature", temperature, low=0.0)
        self.remasking = C.choice("remasking", remasking, ("low_confidence",))
        self.mask_id = C.integer("mask_id", mask_id, low=0)
        self.eos_id = None if eos_id is None else C.integer("eos_id", eos_id, low=0)
        self.seed = None if seed is None else C.integer("seed", seed, low=0)
        self.backend = backend
        self.check = C.flag("check", check)
        self.calls = 0

    def block_init(self, block_x, block_id) -> None:
        """dInfer's hook at each block start: ``block_x`` the block's int64 tokens ``[B, block]``,
        ``block_id`` its index. The rules here keep no per-block state, so it does nothing."""

    def decode(self, logits: torch.Tensor, block_start: int, block_end: int, x, iter_threshold=None) -> None:
        """Commit tokens of the block ``[block_start, block_end)`` of ``x`` in place.

        Args:
            logits: ``[B, block_end - block_start, V]`` float16/bfloat16/float32/float64, the block's rows.
            block_start, block_end: the block's positions in ``x``.
            x: int64 ``[B, L]`` canvas (or anything indexable as ``x[:, a:b]``, such as dInfer's
                ``TokenArray``); masked positions hold ``mask_id``.
            iter_threshold: this call's threshold instead of the decoder's (dInfer's schedules): a float, or
                a 0-d tensor (read to the host: one sync for a CUDA tensor).
        """
        logits = C.V.float_logits("logits", logits)
        block_start = C.integer("block_start", block_start, low=0)
        block_end = C.integer("block_end", block_end, low=block_start)
        block = x[:, block_start:block_end]
        b, width = block.shape
        if width != block_end - block_start:
            raise ValueError(f"block [{block_start}, {block_end}) must lie inside x: x[:, {block_start}:{block_end}] "
                             f"has {width} columns")
        if logits.dim() != 3 or tuple(logits.shape[:2]) != (b, width):
            raise ValueError(f"logits must be [B, block_end - block_start, V] = [{b}, {width}, V]; "
                             f"got {tuple(logits.shape)}")
        if not self.mask_id < logits.shape[-1]:
            raise ValueError(f"mask_id ({self.mask_id}) must be a token of the logits' vocabulary [0, {logits.shape[-1]})")
        if width == 0:
            return
        masked = block == self.mask_id
        if iter_threshold is None:
            threshold = self.threshold
        else:  # dInfer's schedules pass floats or 0-d tensors
            if torch.is_tensor(iter_threshold) and iter_threshold.numel() != 1:
                raise ValueError(f"iter_threshold must be a float or a one-element tensor (one threshold per "
                                 f"call, as dInfer); got shape {tuple(iter_threshold.shape)}")
            threshold = C.real("iter_threshold", float(iter_threshold) if torch.is_tensor(iter_threshold)
                               else iter_threshold)
        dtype = self.conf_dtype or logits.dtype
        logits = self._fuse(logits, masked, block_start, block_end)
        positions = (torch.arange(b, device=block.device).unsqueeze(1) * _ROW_STRIDE
                     + torch.arange(block_start, block_end, device=block.device))
        res = sample_categorical(logits, temperature=self.temperature, seed=call_key(self.seed, self.temperature > 0),
                                 offset=self.calls if self.seed is not None else 0, positions=positions,
                                 exclude=self.mask_id, active=masked, return_stats=True, stats_temperature=1.0,
                                 check=self.check, backend=self.backend)
        self.calls += 1
        conf = _upstream_confidence(logits, res, self.mask_id, dtype)
        chosen = self._choose(conf, masked & (res.tokens >= 0), _rounded(threshold, dtype), dtype)
        self._committed(chosen)
        x[:, block_start:block_end] = torch.where(chosen, res.tokens, block)

    def _fuse(self, logits, masked, block_start, block_end):
        return logits

    def _committed(self, chosen) -> None:
        pass


class ThresholdParallelDecoder(_BlockDecoder):
    """dInfer's threshold decoder: commits every masked position with ``p(x0) >= min(threshold,
    max p(x0) - 1e-5)`` (so at least the most confident); module docstring for the rest.

    Args: upstream's (``temperature``, ``threshold``, ``remasking``, ``mask_id``, ``eos_id``,
    ``use_float64``), plus keyword-only ``seed`` (None or int Philox key), ``backend`` and ``check``
    (module docstring).
    """

    def __init__(self, temperature, threshold, remasking='low_confidence', mask_id=LLADA_MASK_ID,
                 eos_id=LLADA_EOS_ID, use_float64=False, *, seed=None, backend="auto", check=True):
        super().__init__(temperature, remasking, mask_id, eos_id, seed, backend, check)
        self.threshold = C.real("threshold", threshold)
        self.use_float64 = C.flag("use_float64", use_float64)
        if use_float64:  # upstream's float64 softmax (module docstring)
            self.conf_dtype = torch.float64

    def _choose(self, conf, cand, threshold, dtype):
        return select(conf, cand, threshold=threshold, near_top=_NEAR_TOP)


class HierarchyDecoder(_BlockDecoder):
    """dInfer's hierarchy decoder: per run of adjacent masked positions its most confident if
    ``p(x0) > low_threshold``, every position with ``p(x0) > threshold`` (when not None), and the
    most confident of the block.

    Args: upstream's (``temperature``, ``remasking``, ``mask_id``, ``eos_id``, ``threshold``,
    ``low_threshold``), plus keyword-only ``seed``, ``backend`` and ``check``.
    """

    conf_dtype = None  # upstream: log_softmax and exp in the logits' dtype

    def __init__(self, temperature, remasking='low_confidence', mask_id=LLADA_MASK_ID, eos_id=LLADA_EOS_ID,
                 threshold=None, low_threshold=0.4, *, seed=None, backend="auto", check=True):
        super().__init__(temperature, remasking, mask_id, eos_id, seed, backend, check)
        self.threshold = None if threshold is None else C.real("threshold", threshold)
        self.low_threshold = None if low_threshold is None else C.real("low_threshold", low_threshold)

    def _choose(self, conf, cand, threshold, dtype):
        low = -torch.inf if self.low_threshold is None else _rounded(self.low_threshold, dtype)
        return select(conf, cand, low_threshold=low, threshold=threshold)


class CreditThresholdParallelDecoder(ThresholdParallelDecoder):
    """dInfer's credit decoder: the threshold rule on ``logits + credit_alpha * log(1 + credit)``,
    where each masked position's credit of its argmax token grows by ``p1 ** boost_gamma`` per call
    and every credit decays by ``decay_beta`` (samplers/credit.py; kept sparse, not ``[B, block, V]``).

    Args: ``credit_alpha``, ``boost_gamma``, ``decay_beta`` and the threshold decoder's (keywords).
    Each block (``block_start``, ``block_end``, batch) has its own credit, as upstream (so two canvases
    decoded interleaved need a decoder each); a committed
    position's credit is dropped, so a finished block leaves none behind (upstream drops all once
    the canvas has no mask, which needs a host sync), and ``block_init`` drops all (upstream keeps
    the credit of a block left unfinished, e.g. by an early stop, for the next generation).
    """

    def __init__(self, credit_alpha=0.7, boost_gamma=0.2, decay_beta=0.8, **kwargs):
        super().__init__(**kwargs)
        self.credit_alpha, self.boost_gamma, self.decay_beta = credit_settings(
            {"alpha": credit_alpha, "gamma": boost_gamma, "beta": decay_beta})
        self._states: dict = {}
        self._state: Optional[Credit] = None  # the block of the current call

    def block_init(self, block_x, block_id) -> None:
        """dInfer's hook at each block start (arguments as the base class's): the credit of earlier blocks
        is dropped."""
        self._states.clear()

    def _fuse(self, logits, masked, block_start, block_end):
        b, width, _ = logits.shape
        key = (block_start, block_end, b, logits.device)
        if key not in self._states:
            self._states[key] = Credit(b, width, (self.credit_alpha, self.boost_gamma, self.decay_beta), logits.device)
        self._state = self._states[key]
        return self._state.step(logits, exclude=self.mask_id, active=masked, mask_in_softmax=True,
                                check=self.check, backend=self.backend)

    def _committed(self, chosen) -> None:
        self._state.forget(chosen)


def _upstream_confidence(logits, res, mask_id: int, dtype: torch.dtype) -> torch.Tensor:
    """float64 ``[B, block]``: ``p(x0)`` under the softmax over all V (the op's excludes the mask), as upstream
    computes it in ``dtype`` (float32: ``softmax(l.float())``; bf16 / fp16: ``log_softmax(l).exp()`` in it)."""
    if dtype == torch.float64:
        # use_float64: upstream's very softmax over all V in float64 ([B, block, V], as upstream holds it), since
        # exp(l - logsumexp l), the same value otherwise, parts from it by an ulp (on some CPUs), enough to move a
        # threshold decision.
        p = torch.softmax(logits.double(), -1)
        return p.gather(-1, res.tokens.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    logp = logprob_with(logits, res.tokens, res.logprob, mask_id)
    conf = logp.exp() if dtype == torch.float32 else logp.to(dtype).exp()
    return conf.to(torch.float64)


def _rounded(threshold, dtype: torch.dtype):
    """``threshold`` as torch compares a ``dtype`` tensor with a Python float: rounded to ``dtype`` (to nearest,
    ties to even), computed on the host without a tensor."""
    if threshold is None or dtype == torch.float64 or not math.isfinite(threshold):
        return threshold
    if dtype == torch.float16:
        return struct.unpack("<e", struct.pack("<e", threshold))[0]
    single = struct.unpack("<f", struct.pack("<f", threshold))[0]
    if dtype != torch.bfloat16:
        return single
    bits = struct.unpack("<I", struct.pack("<f", single))[0]
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return struct.unpack("<f", struct.pack("<I", bits))[0]
