"""Argument checks shared by the public ops: every error names the argument and what was expected."""
from __future__ import annotations

import math
import numbers
import warnings

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def as_tensor(name: str, value) -> torch.Tensor:
    """``value`` as a dense torch tensor; objects with ``__dlpack__`` (CuPy, JAX) come in without a copy."""
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided:  # a sparse tensor failed later as "must broadcast ...; got shape (4,)"
            raise TypeError(f"{name} must be a dense (strided) tensor; got layout {value.layout}: call .to_dense()")
        return value
    if hasattr(value, "__dlpack__"):
        # torch aborts the process (not an exception) on a DLPack tensor with a negative stride
        strides = getattr(value, "strides", None)
        if strides is not None and any(st < 0 for st in strides):
            raise ValueError(f"{name} has negative strides {tuple(strides)} (a reversed view), which DLPack "
                             "cannot hand to torch: pass a contiguous copy (numpy.ascontiguousarray / "
                             "cupy.ascontiguousarray)")
        try:
            return torch.from_dlpack(value)
        except BufferError:
            # torch < 2.5 speaks unversioned DLPack, which has no read-only flag, so NumPy will not export a
            # read-only array through it; from_numpy shares the memory all the same (the ops never write).
            import numpy

            if not isinstance(value, numpy.ndarray):
                raise
            if not value.dtype.isnative or value.dtype.hasobject:
                raise TypeError(f"{name} has dtype {value.dtype}, which DLPack cannot hand to torch (it takes "
                                "numeric dtypes in native byte order): convert it, e.g. array.astype(numpy.float32)"
                                ) from None
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
                return torch.from_numpy(value)
    raise TypeError(f"{name} must be a torch.Tensor (or a DLPack array); got {type(value).__name__}")


def is_array(value) -> bool:
    """Whether ``value`` is a tensor (torch, or any DLPack array) rather than one Python number."""
    return isinstance(value, torch.Tensor) or hasattr(value, "__dlpack__")


def float_logits(name: str, value) -> torch.Tensor:
    """A ``[..., V]`` float16/bfloat16/float32/float64 tensor with a contiguous last dim."""
    t = as_tensor(name, value)
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64; got {t.dtype}")
    if t.dim() < 1 or t.shape[-1] < 1:
        raise ValueError(f"{name} must have shape [..., V] with V >= 1; got {tuple(t.shape)}")
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name} must have a contiguous last dim (stride 1); got strides {t.stride()}: call .contiguous()")
    return t


def check_device(name: str, t: torch.Tensor, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the logits are on {device}: put them on the same device")


def per_row(name: str, value, lead_shape: torch.Size, device: torch.device, dtype: torch.dtype, *, kind: str,
            scalar_ok: bool = False):
    """A Python number or tensor broadcast over the leading dims, as a contiguous ``[N]`` tensor.

    ``kind`` is "float", "int" or "bool": the accepted input dtypes. With ``scalar_ok`` a number
    stays one Python value instead (float, or an int in the signed 64-bit range: unsigned seeds
    keep their bits) for kernels that take it by value, so no ``[N]`` tensor is built.
    """
    n = math.prod(lead_shape)
    if scalar_ok and type(value) is (int if kind == "int" else float) and (kind != "int" or 0 <= value < 2**63):
        return value  # the common case of a plain Python number, before the general checks below
    if isinstance(value, bool) and kind != "bool":
        raise TypeError(f"{name} must be a number or tensor, not bool")
    if kind == "bool" and isinstance(value, numbers.Number) and not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool or bool tensor; got {type(value).__name__}")  # 0.5 read as True
    if isinstance(value, numbers.Number) and not isinstance(value, torch.Tensor):
        if kind == "int" and not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int or int64 tensor; got {type(value).__name__}")
        value = int64_bits(name, value) if kind == "int" else {"float": float, "bool": bool}[kind](value)
        return value if scalar_ok else torch.full((n,), value, dtype=dtype, device=device)
    t = as_tensor(name, value)
    ok = {
        "float": t.dtype.is_floating_point,
        "int": t.dtype in INT_DTYPES,
        "bool": t.dtype == torch.bool,
    }[kind]
    if not ok:
        expected = {"float": "a float", "int": "an integer", "bool": "a bool"}[kind]
        raise TypeError(f"{name} must be {expected} tensor; got {t.dtype}")
    check_device(name, t, device)
    try:
        t = t.expand(lead_shape)
    except RuntimeError:
        raise ValueError(
            f"{name} must broadcast to the leading dims {tuple(lead_shape)}; got shape {tuple(t.shape)}"
        ) from None
    return t.reshape(n).to(dtype).contiguous()


def full_rows(value, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``value`` (a number, or a ``[N]`` tensor returned as is) as an ``[N]`` tensor: for the slow paths."""
    if isinstance(value, torch.Tensor):
        return value
    return torch.full((n,), value, dtype=dtype, device=device)


def row_offsets(t: torch.Tensor) -> torch.Tensor:
    """Element offset of each row of ``[..., V]`` from ``t.data_ptr()``, as int64 ``[N]``.

    Works for any strides of the leading dims (an ``expand``ed row is read in place, not copied).
    """
    offs = torch.zeros((), dtype=torch.int64, device=t.device)
    for size, stride in zip(t.shape[:-1], t.stride()[:-1]):
        offs = offs.unsqueeze(-1) + torch.arange(size, device=t.device, dtype=torch.int64) * stride
    return offs.reshape(-1).contiguous()


def uniform_row_stride(t: torch.Tensor) -> int | None:
    """``s`` such that flat row ``r`` of ``[..., V]`` starts at element ``r * s``, or None when no one stride does.

    Contiguous, row-sliced (``[:, 1:]``) and fully expanded (stride 0) leading dims have one;
    e.g. ``[B, 1, V]`` expanded to ``[B, L, V]`` has not (its rows need :func:`row_offsets`).
    """
    unit, inner = None, 1  # unit: stride of the innermost leading dim of size > 1
    for size, stride in zip(reversed(t.shape[:-1]), reversed(t.stride()[:-1])):
        if size == 1:
            continue
        if unit is None:
            unit = stride
        elif stride != unit * inner:
            return None
        inner *= size
    return 0 if unit is None else unit


def row_layout(t: torch.Tensor) -> tuple[torch.Tensor | None, int]:
    """Rows of ``[..., V]`` as (None, one stride) when a stride describes them, else (offsets ``[N]`` int64, 0).

    The stride form builds no tensor (on a GPU, no helper kernels before the op's own).
    """
    stride = uniform_row_stride(t)
    return (row_offsets(t), 0) if stride is None else (None, stride)


def tokens_in_vocab(name: str, tokens: torch.Tensor, vocab: int | None, pending: list | None = None) -> None:
    """Every id of ``tokens`` (integer) must be a token of the model, in ``[0, vocab)`` (``vocab`` None:
    unknown, not checked); outside it the model's embedding raises a bare IndexError (on CUDA a device-side
    assert). One host read, or with ``pending`` none: the check is deferred (:func:`defer`)."""
    if vocab is None or not tokens.numel():
        return
    bad = (tokens < 0) | (tokens >= vocab)
    message = lambda: (f"{name} holds token id {int(tokens[bad][0])}, outside the model's "  # noqa: E731
                       f"vocabulary of size {vocab}")
    if pending is not None:
        defer(pending, bad.any(), message)
    elif bool(bad.any()):
        raise ValueError(message())


def guidance_input(guidance, guidance_scale, logits: torch.Tensor):
    """Validated CFG inputs: (unconditional logits or None, scale w)."""
    if guidance is None:
        if guidance_scale != 0.0:
            raise ValueError("guidance_scale needs guidance (the unconditional logits)")
        return None, 0.0
    guidance = float_logits("guidance", guidance)
    check_device("guidance", guidance, logits.device)
    if guidance.shape != logits.shape or guidance.dtype != logits.dtype:
        raise ValueError(
            f"guidance must match logits in shape and dtype ({tuple(logits.shape)}, {logits.dtype}); "
            f"got {tuple(guidance.shape)}, {guidance.dtype}"
        )
    return guidance, finite_number("guidance_scale", guidance_scale, fp32=True)


def guidance_rows(guidance, guidance_scale, logits: torch.Tensor):
    """Validated CFG inputs: (unconditional logits or None, their row offsets ``[N]`` or None, scale w)."""
    guidance, scale = guidance_input(guidance, guidance_scale, logits)
    return guidance, None if guidance is None else row_offsets(guidance), scale


FP32_MAX = float(torch.finfo(torch.float32).max)


def finite_number(name: str, value, *, low: float | None = None, low_inclusive: bool = True,
                  fp32: bool = False) -> float:
    """A real number as float; ``fp32``: also within float32's range (a kernel parameter: beyond it, inf)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite; got {value}")
    if low is not None and (v < low or (v == low and not low_inclusive)):
        raise ValueError(f"{name} must be {'>=' if low_inclusive else '>'} {low}; got {value}")
    if fp32 and abs(v) > FP32_MAX:
        raise ValueError(f"{name} must lie within float32's range (|{name}| <= {FP32_MAX:.6g}: the kernels compute "
                         f"in float32); got {value}")
    return v


def token_id(name: str, value, vocab: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int token id; got {type(value).__name__}")
    if not 0 <= int(value) < vocab:
        raise ValueError(f"{name} must be a token id in [0, {vocab}); got {value}")
    return int(value)


def unravel(flat_index: int, shape) -> tuple[int, ...]:
    """Flat row index -> index tuple over the leading dims (for error messages)."""
    out = []
    for size in reversed(tuple(shape)):
        out.append(flat_index % size)
        flat_index //= size
    return tuple(reversed(out))


def int_number(name: str, value, *, low: int | None = None, high: int | None = None) -> int:
    """A Python int (not bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{name} must be an int in [{lo}, {hi}]; got {value}")
    return v


def flag(name: str, value) -> bool:
    """A bool (``check="no"`` read as true before)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool; got {type(value).__name__}")
    return value


def choice(name: str, value, options) -> str:
    """One of the strings ``options``."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}")
    return value


def int_tokens(name: str, value, *, min_dim: int = 1) -> torch.Tensor:
    """An integer tensor of token ids with at least ``min_dim`` dims, as int64 (a copy only if needed)."""
    t = as_tensor(name, value)
    if t.dtype not in INT_DTYPES:
        raise TypeError(f"{name} must be an integer tensor of token ids; got {t.dtype}")
    if t.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dim(s); got shape {tuple(t.shape)}")
    return t.to(torch.int64)


def int64_bits(name: str, value) -> int:
    """A 64-bit Python int (signed, or unsigned with its bits kept) as a signed int64 value."""
    v = int_number(name, value, low=-(2**63), high=2**64 - 1)
    return v - 2**64 if v >= 2**63 else v


def defer(pending: list, bad: torch.Tensor, message) -> None:
    """Queue a value check of a call: ``bad`` a 0-d bool tensor (True = the check failed), ``message`` the
    ValueError's text or a function giving it. The checks are read together after the kernel, with one host
    sync instead of one each; what they guard (per-row temperatures, positions, ids copied through) can
    only spoil draws, never memory, so running the kernel first is safe."""
    pending.append((bad, message))


def raise_pending(pending, rows_bad: torch.Tensor | None = None) -> bool:
    """One host read for ``pending`` (from :func:`defer`) and ``rows_bad`` (bool ``[N]``, or None): raises the first
    failed check's ValueError; else returns whether ``rows_bad`` has a True (the caller names that row)."""
    flags = [bad.reshape(()) for bad, _ in pending] + ([] if rows_bad is None else [rows_bad.any()])
    if not flags or not bool(torch.stack(flags).any()):
        return False
    for bad, message in pending:
        if bool(bad):
            raise ValueError(message() if callable(message) else message)
    return True
