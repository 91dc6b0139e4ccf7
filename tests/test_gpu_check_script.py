"""benchmarks/gpu_check.sh runs only on a lent GPU machine: its plumbing is checked here.

With ``GPU_CHECK_STEPS=info`` the script runs its preamble, the ``info`` step and nothing else:
every other step must report itself as not selected, in the documented order, and the
summary must record the one that ran. A shell error anywhere in the script (the build step
once never ran because of one) fails this test before it costs device time.
"""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.sh")
STEPS = ["build", "info", "smoke", "sweep", "e2e-llada", "e2e-mdlm", "likelihood", "tests-ops", "tests-likelihood",
         "sanitizer-memcheck", "sanitizer-racecheck", "tests-rest", "e2e-dream", "decoders"]


def test_script_parses():
    done = subprocess.run(["bash", "-n", SCRIPT], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_only_the_selected_step_runs(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "GPU_CHECK_STEPS": "info", "PYTHON": sys.executable,
           "GPU_CHECK_BUDGET": "120"}
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run(["bash", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (tmp_path / "summary.txt").read_text()
    assert re.search(r"^info: rc=0, \d+s, log info.log$", summary, re.M), summary
    assert "backend" in (tmp_path / "info.log").read_text()
    seen = re.findall(r"^([\w-]+): (?:rc=|not selected|compute-sanitizer not found|SKIPPED|TIMEOUT)", summary, re.M)
    assert seen == STEPS, seen  # every step accounted for, in the documented order
    for name in STEPS:
        if name != "info":
            assert re.search(rf"^{name}: (not selected|compute-sanitizer not found)", summary, re.M), name
    assert "gpu_check: done" in summary
