"""`make demo` (the README's first command) runs end to end: a tiny microbenchmark shape keeps it fast."""
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import requires  # noqa: E402
from benchmarks import demo  # noqa: E402


@requires.cpu_backend  # the table's fast row is the compiled backend
def test_demo_runs(capsys):
    assert demo.main(["--rows", "4", "--vocab", "300"]) == 0
    out = capsys.readouterr().out
    assert "sample_mdlm: 4 x 64 tokens" in out
    strips = [line.split()[-1] for line in out.splitlines() if re.fullmatch(r"\s+\d+ [.#|]+", line)]
    assert strips and set(strips[-1]) <= {"#", "|"}  # the denoising ends with every position revealed
    assert strips[0].count("#") < strips[-1].count("#")
    ours = "mdsample[cuda]" if torch.cuda.is_available() else "mdsample[cpu]"  # the demo runs on a GPU if any
    assert ours in out and "mdlm_fp64" in out  # the table has our backend and the baseline
