"""benchmarks/cuda_smoke.py, gpu_check.sh's correctness gate, runs on the cpu backend: a broken gate (it once
raised at V = 1, where a revealed row has nothing to draw) must fail here, not in a GPU session's minutes."""
import os
import subprocess
import sys

import pytest

import requires

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@requires.cpu_backend
@pytest.mark.parametrize("mode", ["--small", "--sanitize"])
def test_smoke_script_passes_on_the_cpu_backend(mode):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "cuda_smoke.py"), "--device", "cpu",
                           "--backend", "cpu", mode], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    if mode == "--small":
        assert "cases agree exactly (0 with differing tokens)" in done.stdout
