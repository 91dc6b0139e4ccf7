"""``python -m mdsample info``: versions, loaded backends, CUDA archs, and why a backend is missing."""
from __future__ import annotations

import argparse
import platform
import sys


def info() -> str:
    import torch

    import mdsample
    from mdsample import _backends

    lines = [
        f"mdsample {mdsample.__version__}",
        f"python   {platform.python_version()} ({sys.executable})",
        f"torch    {torch.__version__} (CUDA {torch.version.cuda or 'none'}, GPU available: {torch.cuda.is_available()})",
    ]
    try:
        import triton

        lines.append(f"triton   {triton.__version__}" + (" (interpreter)" if _backends.triton_interpreted() else ""))
    except ImportError:
        lines.append("triton   not installed")
    C = _backends.compiled_module()
    if C is not None:
        lines.append(f"_C       {C.__file__}")
        lines.append(f"         CPU kernels: {C.cpu_isa()} build; CUDA archs compiled in: {C.cuda_archs() or 'none'}")
    lines.append("backends:")
    for b in _backends.BACKENDS:
        where = [d for d in ("cpu", "cuda") if _backends.available(b, d)]
        if where:
            lines.append(f"  {b:<10} loaded, runs on {' and '.join(where)} tensors")
            if b == "triton" and _backends.triton_interpreted() and "cpu" not in where:
                lines.append(f"             not on cpu tensors: {_backends.why_not(b, 'cpu')}")
        else:
            device = "cuda" if b in ("cuda", "triton") else "cpu"
            lines.append(f"  {b:<10} missing: {_backends.why_not(b, device)}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mdsample", description=__doc__)
    parser.add_argument("command", choices=["info"], help="what to print")
    parser.parse_args(argv)
    print(info())
    return 0


if __name__ == "__main__":
    sys.exit(main())
