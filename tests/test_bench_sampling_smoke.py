"""Smoke test of the sampling sweep's plumbing (benchmarks/bench_sampling.py --sweep): JSON and PNG.

The tiniest grid, timed runs cut to 2: the numbers mean nothing, only the file layout is checked.
"""
import importlib.util
import json
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytest.importorskip("matplotlib")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sweep_writes_results_and_plot(tmp_path):
    bench = _load("bench_sampling")
    rc = bench.main(["--sweep", "--vocabs", "3000", "5000", "--row-counts", "1", "3", "--runs", "2",
                     "--naive-at", "2", "3000", "--no-compile", "--results-dir", str(tmp_path)])
    assert rc == 0
    (json_path,) = tmp_path.glob("*-sampling-sweep*.json")
    doc = json.loads(json_path.read_text())
    assert doc["device_type"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert doc["cpu_smoke"] == (doc["device_type"] == "cpu") and doc["copy_bandwidth_gbps"] > 0
    assert doc["complete"] is True
    for key in ("device", "torch", "cuda", "commit", "date"):
        assert key in doc
    sweep = [r for r in doc["rows"] if r["series"] == "sweep"]
    impls = {r["impl"] for r in sweep}
    assert impls and {(r["vocab"], r["rows"]) for r in sweep} == {(3000, 1), (3000, 3), (5000, 1), (5000, 3)}
    assert len(sweep) == 4 * len(impls)
    # A CUDA-graph timing that could not be captured records its error instead (GPU only).
    assert all("error" in r or (r["median_s"] > 0 and r["pct_copy"] > 0) for r in doc["rows"])
    assert all(r["gbps"] > 0 for r in sweep)
    assert {"mdlm_fp64", "mdsample[reference]"} <= {r["impl"] for r in doc["rows"] if r["series"] == "naive"}
    unmask = [(r["impl"], r["revealed"]) for r in doc["rows"] if r["series"] == "unmask"]
    assert sorted(unmask) == sorted((impl, frac) for impl in impls for frac in (0.01, 0.1, 1.0))
    png = json_path.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_graph_rows_and_errors(tmp_path):
    """CUDA-graph rows (GPU runs only) are drawn, rows with an error skipped, a file without sweep rows refused."""
    plot = _load("plot_sampling")
    point = dict(impl="mdsample[cuda]", vocab=32000, dtype="bfloat16")
    rows = [dict(series="sweep", rows=n, median_s=1e-5 * n, gbps=6.4, pct_copy=0.2, **point) for n in (1, 4)]
    rows += [dict(series="graph", rows=1, median_s=5e-6, gbps=12.8, **point),
             dict(series="graph", rows=4, error="RuntimeError: capture", **point)]
    doc = dict(rows=rows, device="NVIDIA X", device_type="cuda", date="d", copy_bandwidth_gbps=3000.0)
    assert plot.plot_sweep(doc, tmp_path / "x.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no sweep rows"):
        plot.plot_sweep({**doc, "rows": rows[2:]}, tmp_path / "y.png")


def test_sweep_checkpoints_partial_results():
    """The sweep hands its rows to ``checkpoint`` after each vocabulary and naive point (gpu_check.sh's
    time limit then keeps what was measured), each time a longer prefix of the final rows."""
    bench = _load("bench_sampling")
    seen = []
    rows = bench.sweep(torch.device("cpu"), [3000, 5000], [1, 2], [(2, 3000)], (), dtype=torch.bfloat16, runs=1,
                       max_bytes=2**30, copy_gbps=10.0, graphs=False,
                       checkpoint=lambda r: seen.append([dict(x) for x in r]))
    assert len(seen) >= 3 and [len(s) for s in seen] == sorted(len(s) for s in seen) and seen[-1] == rows
    assert seen[0] and all(r["series"] == "sweep" and r["vocab"] == 3000 for r in seen[0])
    assert all(prefix == rows[:len(prefix)] for prefix in seen)


def test_a_failing_backend_leaves_an_error_row_and_the_sweep_goes_on(monkeypatch):
    """A backend that raises at a shape (a Triton compile error on a fresh GPU) ended the whole sweep step, and
    with it the rows of that vocabulary already measured: it now records an error row and the rest run."""
    bench = _load("bench_sampling")
    real = bench._mdsample
    monkeypatch.setattr(bench, "_backends_for", lambda device: ["cpu", "reference"])

    def flaky(backend):
        if backend == "cpu":
            def fail(logits):
                raise RuntimeError("compile failed")
            return fail
        return real(backend)

    monkeypatch.setattr(bench, "_mdsample", flaky)
    rows = bench.sweep(torch.device("cpu"), [3000], [1, 2], [], (), dtype=torch.bfloat16, runs=1,
                       max_bytes=2**30, copy_gbps=10.0, graphs=False)
    errors = [r for r in rows if "error" in r]
    assert [(r["impl"], r["rows"]) for r in errors] == [("mdsample[cpu]", 1), ("mdsample[cpu]", 2)]
    assert all("compile failed" in r["error"] for r in errors)
    assert sorted(r["rows"] for r in rows if r["impl"] == "mdsample[reference]" and "median_s" in r) == [1, 2]


def test_the_sweep_without_rows_to_plot_still_succeeds(tmp_path):
    """No backend measured a sweep row (every one failed, or a failed build left none): the JSON is written and
    the step exits 0, saying why there is no plot (it exited 1 on plot_sweep's ValueError)."""
    bench = _load("bench_sampling")
    rc = bench.main(["--sweep", "--vocabs", "3000", "--row-counts", "1", "--runs", "1", "--naive-at", "1", "3000",
                     "--no-compile", "--max-gib", "0.000000001", "--results-dir", str(tmp_path)])
    assert rc == 0 and list(tmp_path.glob("*-sampling-sweep*.json"))
