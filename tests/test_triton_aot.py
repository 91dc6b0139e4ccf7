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
    assert len(lines) == len(triton_aot.CASES) + len(triton_aot.VECTOR_CASES) and all(" ok " in line for line in lines), done.stdout


def test_no_float_literal_that_triton_36_types_as_fp64():
    """Triton 3.6 (the GPU machines') types a Python float literal of magnitude below 2^-126 (FLT_MIN) as fp64, and
    fp64 spreads through the arithmetic it touches (a clamp at 1.17549435e-38 once made every exp of the sampling
    kernel's first pass a float64 one); Triton 3.9, installed here, does not, so the compiled kernels above cannot
    show it. A literal in mdsample/triton must be 0 or at least 2^-126 in magnitude."""
    import ast
    import glob

    tiny = []
    for path in sorted(glob.glob(os.path.join(ROOT, "mdsample", "triton", "*.py"))):
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Constant) and isinstance(node.value, float) and 0 < abs(node.value) < 2.0 ** -126:
                tiny.append(f"{os.path.basename(path)}:{node.lineno}: {node.value!r}")
    assert not tiny, tiny
