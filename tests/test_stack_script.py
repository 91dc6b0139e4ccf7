"""`.ci/stack` (the README's tested stacks are rerun with it): it parses, and without its two arguments it
prints its usage and exits 2 before cloning or downloading anything."""
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_without_arguments_it_prints_its_usage():
    script = os.path.join(ROOT, ".ci", "stack")
    assert subprocess.run(["bash", "-n", script], capture_output=True).returncode == 0
    done = subprocess.run(["bash", script, "python3"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "STACK_DIR": "/nonexistent/never-created"})
    assert done.returncode == 2
    assert "bash .ci/stack PYTHON TORCH [TRITON]" in done.stdout and "MDSAMPLE_NO_EXT" in done.stdout
    assert not os.path.exists("/nonexistent/never-created")
