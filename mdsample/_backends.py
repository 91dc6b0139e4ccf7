"""Which backends loaded in this process, and why the others did not (DESIGN.md §2)."""
from __future__ import annotations

import os
import re

BACKENDS = ("cuda", "triton", "cpu", "reference")

_reasons: dict[str, str] = {}
_interpreter_reason = None  # set below when Triton's CPU interpreter cannot run the kernels

try:
    from . import _C  # type: ignore[attr-defined]
except ImportError as exc:  # pure-Python install (MDSAMPLE_NO_EXT=1) or a failed build
    _C = None
    import importlib.machinery

    _here = os.path.dirname(os.path.abspath(__file__))
    if any(os.path.exists(os.path.join(_here, "_C" + sfx)) for sfx in importlib.machinery.EXTENSION_SUFFIXES):
        _reasons["cpu"] = _reasons["cuda"] = f"mdsample._C did not import: {exc}"
    else:  # Python's own message would blame a circular import
        _reasons["cpu"] = _reasons["cuda"] = ("mdsample._C is not in this install (a pure-Python build, "
                                              "MDSAMPLE_NO_EXT=1: the reference and Triton backends only); "
                                              "reinstall without MDSAMPLE_NO_EXT, with a C++ compiler and CMake")
else:
    _isa = os.environ.get("MDSAMPLE_CPU_ISA")
    if _isa and _isa not in ("base", "avx2", "avx512"):  # the C++ side takes an unknown name as "the best"
        import warnings

        warnings.warn(f"MDSAMPLE_CPU_ISA={_isa!r} is not one of base, avx2, avx512: ignored, the cpu backend uses "
                      f"{_C.cpu_isa()}", RuntimeWarning, stacklevel=2)
    if not _C.has_cuda():
        _reasons["cuda"] = ("mdsample._C was built without CUDA kernels (no nvcc found at build time, or "
                            "MDSAMPLE_NO_CUDA=1): rebuild with nvcc on PATH (or CUDACXX set) and "
                            "MDSAMPLE_NO_CUDA unset")

# The oldest Triton the kernels are verified on: 3.4, 3.5, 3.6 and 3.9 pass the Triton tests under the
# interpreter (3.6 and 3.9 also compile every kernel for sm_90). 3.0 - 3.3 fail them there (3.0 returns
# wrong Philox words; 3.3's interpreter lacks an op they use), and 3.3 and older lack autotune's
# cache_results. Untested means unpromised: older releases are refused, not tried.
TRITON_MIN = (3, 4)


def _release(version: str) -> tuple:
    """``"3.6.0+git1234"`` -> ``(3, 6)``; ``(0, 0)`` when it does not start with major.minor."""
    found = re.match(r"(\d+)\.(\d+)", version)
    return (int(found[1]), int(found[2])) if found else (0, 0)


def triton_too_old(version: str):
    """Why a Triton of ``version`` (e.g. ``"3.6.0+git1234"``) is refused, or None when it is recent enough."""
    if _release(version) >= TRITON_MIN:
        return None
    least = ".".join(map(str, TRITON_MIN))
    return (f"triton {version} is older than {least}, the oldest release mdsample's Triton kernels are tested on "
            f"(pip install 'triton>={least}', or use the cuda backend)")


def interpreter_broken(triton_version: str, numpy_version: str):
    """Why Triton's CPU interpreter cannot run the kernels with these versions, or None. Triton 3.4 - 3.6 turn a
    scalar argument into a 1-element array and take ``int()`` of it, which numpy 2.4 refuses (a TypeError in
    every kernel; numpy 2.3 still warns); Triton 3.7 squeezes the array first. Measured with 3.6; 3.4 and 3.5
    have the same line."""
    if _release(triton_version) >= (3, 7) or _release(numpy_version) < (2, 4):
        return None
    return (f"triton {triton_version}'s interpreter (TRITON_INTERPRET=1) fails with numpy {numpy_version}: "
            "pip install 'numpy<2.4' or 'triton>=3.7' to run the Triton kernels on the CPU")


def _interpret_env() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Read before ``import triton``: Triton makes its own jit functions (tl.max, tl.sum, ...) interpreted or compiled
# as it loads, so a TRITON_INTERPRET set later gives kernels that fail deep inside Triton on either device.
_INTERPRETED = _interpret_env()

try:
    import triton  # noqa: F401
    import triton.language  # noqa: F401
except ImportError as exc:
    triton = None
    _reasons["triton"] = f"triton did not import: {exc} (pip install 'triton>=3.4', or mdsample[triton])"
else:
    _too_old = triton_too_old(triton.__version__)
    if _too_old:
        _reasons["triton"] = _too_old
    import numpy

    _interpreter_reason = interpreter_broken(triton.__version__, numpy.__version__)


def triton_interpreted() -> bool:
    """True when Triton kernels run on the CPU through ``TRITON_INTERPRET=1`` (as set when mdsample loaded)."""
    return _INTERPRETED


def _interpreter_switched():
    """Why the Triton backend is off because TRITON_INTERPRET changed since mdsample loaded, or None."""
    if _interpret_env() == _INTERPRETED:
        return None
    then, now = ("set", "unset") if _INTERPRETED else ("unset", "set")
    return (f"TRITON_INTERPRET was {then} when mdsample imported triton and is {now} now; Triton chooses between "
            "its interpreter and its compiler as it loads, so set it before `import mdsample` (and triton)")


def available(backend: str, device_type: str) -> bool:
    """Whether ``backend`` can run on tensors of ``device_type`` ("cpu" or "cuda")."""
    if backend in _reasons:
        return False
    if backend == "cpu":
        return device_type == "cpu"
    if backend == "cuda":
        return device_type == "cuda"
    if backend == "triton":
        if _interpreter_switched():
            return False
        return device_type == "cuda" or (triton_interpreted() and _interpreter_reason is None)
    return backend == "reference"


def why_not(backend: str, device_type: str) -> str:
    """A sentence saying why ``backend`` cannot run on ``device_type`` tensors."""
    if backend in _reasons:
        return _reasons[backend]
    if backend == "triton" and (switched := _interpreter_switched()):
        return switched
    if backend == "triton" and device_type == "cpu":
        if triton_interpreted() and _interpreter_reason is not None:
            return _interpreter_reason
        return "triton runs CPU tensors only under TRITON_INTERPRET=1"
    hint = {"cpu": ": move them to a CUDA device",
            "cuda": ": 'cuda' and 'triton' run CUDA tensors"}.get(device_type, "")
    return f"backend {backend!r} does not run on {device_type} tensors{hint}"


def resolve(backend: str, device_type: str) -> str:
    """The backend to run: ``auto`` picks cuda -> triton -> reference on GPU, cpu -> reference on CPU."""
    if backend == "auto":
        order = ("cuda", "triton", "reference") if device_type == "cuda" else ("cpu", "reference")
        return next(b for b in order if available(b, device_type))
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of 'auto', {', '.join(map(repr, BACKENDS))}; got {backend!r}")
    if not available(backend, device_type):
        raise ValueError(f"backend {backend!r} cannot run here: {why_not(backend, device_type)} (backend='auto' "
                         "takes the first that can)")
    return backend


def cuda_stream(device) -> int:
    """The raw ``cudaStream_t`` of the current stream of CUDA ``device`` (a ``torch.device``), as an int.

    torch's raw getter skips building a ``torch.cuda.Stream`` object on every launch (a few us of
    host time per call); the public API is the fallback where a torch version lacks it.
    """
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    return raw(index) if raw is not None else torch.cuda.current_stream(index).cuda_stream


def compiled_module():
    """The loaded ``mdsample._C`` (None in a pure-Python install)."""
    return _C
