"""Every Triton kernel compiles to an sm_90 cubin on this CPU machine (tests/triton_aot.py).

The interpreter runs the kernels' Python semantics; this runs Triton's real CUDA
pipeline (TTIR -> TTGIR -> LLVM -> PTX -> ptxas), which is where unsupported casts,
constexpr misuse and layout errors surface. No GPU is needed, only ptxas (Triton's own).
"""
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU every Triton test compiles the kernels")
def test_every_kernel_compiles_for_sm90():
    pytest.importorskip("triton.backends.nvidia")
    import triton

    from mdsample import _backends

    too_old = _backends.triton_too_old(triton.__version__)
    if too_old:
        pytest.skip(too_old)
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    try:
        import triton_aot
    finally:
        sys.path.pop(0)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the interpreter cannot compile
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "triton_aot.py")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    if "ptxas" in done.stderr and "not found" in done.stderr.lower():
        pytest.skip("no ptxas on this machine")
    lines = [line for line in done.stdout.splitlines() if "[" in line]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert len(lines) == len(triton_aot.CASES) and all(" ok " in line for line in lines), done.stdout
