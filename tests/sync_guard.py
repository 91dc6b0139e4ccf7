"""`no_host_sync()`: make host-syncing tensor operations raise while it is active.

On a CUDA tensor, `.item()`, `bool(t)`, `t.tolist()`, `nonzero`, boolean-mask
indexing and friends copy to the host and wait for the stream: they break CUDA-graph
capture and stall the pipeline. On CPU tensors they are not real syncs, but the same
Python code on CUDA tensors would sync, so patching them makes a CPU-only CI catch
the regression. On CUDA the guard also sets `torch.cuda.set_sync_debug_mode("error")`,
which catches syncs inside C++ ops the patches cannot see.

Every guarded call raises `RuntimeError("host sync: <what>")`. Indexing with Python
ints, slices, or integer tensors stays allowed (those are gathers, not syncs); only
boolean-mask indexing, whose result shape depends on the data, is refused.

    from sync_guard import no_host_sync  # tests/ is on sys.path (rootdir conftest)

    with no_host_sync():
        tokens = mdsample.sample_categorical(logits, seed=seed_t, offset=off_t, check=False)
"""
from __future__ import annotations

import contextlib
import threading

import torch

_active = threading.local()


def _is_active() -> bool:
    return getattr(_active, "depth", 0) > 0


def _raise(what: str):
    raise RuntimeError(f"host sync: {what}")


def _has_bool_mask(index) -> bool:
    """True when an index (or any element of an index tuple) is a bool tensor."""
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _guard_method(orig, what):
    def wrapped(*args, **kwargs):
        if _is_active():
            _raise(what)
        return orig(*args, **kwargs)

    wrapped.__wrapped__ = orig
    return wrapped


def _guard_index(orig, what):
    def wrapped(self, index, *rest):
        if _is_active() and _has_bool_mask(index):
            _raise(what)
        return orig(self, index, *rest)

    wrapped.__wrapped__ = orig
    return wrapped


def _guard_cpu(orig):
    def wrapped(self, *args, **kwargs):
        if _is_active() and self.device.type != "cpu":
            _raise("Tensor.cpu() of a non-CPU tensor")
        return orig(self, *args, **kwargs)

    wrapped.__wrapped__ = orig
    return wrapped


def _guard_unique(orig):
    # torch.unique's result size depends on the data, so it syncs on CUDA.
    def wrapped(*args, **kwargs):
        if _is_active():
            _raise("torch.unique")
        return orig(*args, **kwargs)

    wrapped.__wrapped__ = orig
    return wrapped


_TENSOR_METHODS = (
    ("item", "Tensor.item"),
    ("__bool__", "Tensor.__bool__ (python branching on a tensor value)"),
    ("__int__", "Tensor.__int__"),
    ("__float__", "Tensor.__float__"),
    ("__index__", "Tensor.__index__ (a tensor used as a python int)"),
    ("tolist", "Tensor.tolist"),
    ("numpy", "Tensor.numpy"),
    ("nonzero", "Tensor.nonzero"),
    ("argwhere", "Tensor.argwhere"),
    ("masked_select", "Tensor.masked_select"),
    ("unique", "Tensor.unique"),
    ("unique_consecutive", "Tensor.unique_consecutive"),
)
_TORCH_FUNCS = (
    ("nonzero", "torch.nonzero"),
    ("argwhere", "torch.argwhere"),
    ("masked_select", "torch.masked_select"),
    ("unique_consecutive", "torch.unique_consecutive"),
)


def _patches():
    """(owner, name, replacement) for every guarded entry point."""
    out = []
    for name, what in _TENSOR_METHODS:
        out.append((torch.Tensor, name, _guard_method(getattr(torch.Tensor, name), what)))
    for name, what in _TORCH_FUNCS:
        out.append((torch, name, _guard_method(getattr(torch, name), what)))
    out.append((torch, "unique", _guard_unique(torch.unique)))
    out.append((torch.Tensor, "__getitem__",
                _guard_index(torch.Tensor.__getitem__, "boolean-mask Tensor.__getitem__")))
    out.append((torch.Tensor, "__setitem__",
                _guard_index(torch.Tensor.__setitem__, "boolean-mask Tensor.__setitem__")))
    out.append((torch.Tensor, "cpu", _guard_cpu(torch.Tensor.cpu)))
    return out


_install_lock = threading.Lock()
_saved: list = []  # (owner, name, original) while any thread is inside the guard
_installs = 0


@contextlib.contextmanager
def no_host_sync():
    """Raise `RuntimeError("host sync: ...")` on host-syncing tensor calls inside.

    Re-entrant. The patches live on `torch.Tensor`/`torch` while any block is open
    and are removed when the last one exits, even when the body raises; only the
    threads inside a block see them raise.
    """
    global _installs
    with _install_lock:
        if _installs == 0:
            for owner, name, repl in _patches():
                _saved.append((owner, name, getattr(owner, name)))
                setattr(owner, name, repl)
        _installs += 1
    outermost = getattr(_active, "depth", 0) == 0
    _active.depth = getattr(_active, "depth", 0) + 1
    cuda_mode = None
    if outermost and torch.cuda.is_available():
        cuda_mode = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        _active.depth -= 1
        if cuda_mode is not None:
            torch.cuda.set_sync_debug_mode(cuda_mode)
        with _install_lock:
            _installs -= 1
            if _installs == 0:
                for owner, name, orig in reversed(_saved):
                    setattr(owner, name, orig)
                _saved.clear()
