"""CPU smoke test of the end-to-end benchmark scripts (tiniest settings; no numbers checked)."""
import importlib.util
import os
from pathlib import Path

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _package_module(name):
    """``benchmarks.<name>`` imported as a package module (it imports its siblings relative to the root)."""
    import importlib
    import sys

    sys.path.insert(0, ROOT)
    try:
        return importlib.import_module(f"benchmarks.{name}")
    finally:
        sys.path.pop(0)


@pytest.fixture(autouse=True)
def _one_thread():
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


def test_e2e_mdlm_smoke():
    before = torch.get_num_threads()
    torch.set_num_threads(before + 1)  # not 1: the run's own CPU setting, which must not outlive it
    try:
        out = _load("e2e_mdlm").main(["--device", "cpu", "--batch", "1", "--length", "8", "--steps", "4",
                                      "--no-write"])
        assert torch.get_num_threads() == before + 1
    finally:
        torch.set_num_threads(before)
    assert out["cpu_smoke"] and len(out["rows"]) == 2
    assert all(r["forwards"] > 0 and r["tokens_per_s"] > 0 for r in out["rows"])


def test_e2e_llada_smoke(tmp_path):
    """The run writes its JSON, and its plot beside it, into --results-dir and nowhere else."""
    import json

    results = _package_module("_timing").RESULTS
    before = {p: p.stat().st_mtime_ns for p in results.iterdir()} if results.is_dir() else {}
    out = _load("e2e_llada").main(["--device", "cpu", "--prompt", "4", "--gen", "8", "--block", "4", "--tps", "2",
                                   "--no-hf", "--results-dir", str(tmp_path)])
    methods = {r["method"] for r in out["rows"]}
    assert {"mdsample cache=prefix", "mdsample cache=dual", "reference LLaDA loop",
            "AR twin (mdsample KV cache)"} <= methods
    assert out["cpu_smoke"]
    (path,) = tmp_path.glob("cpu-e2e-llada-*.json")
    assert path == Path(out["path"]) and json.loads(path.read_text())["complete"] is True
    if out["plot"] is not None:
        assert Path(out["plot"]).parent == tmp_path
    after = {p: p.stat().st_mtime_ns for p in results.iterdir()} if results.is_dir() else {}
    assert after == before


def test_e2e_dream_smoke():
    out = _load("e2e_dream").main(["--device", "cpu", "--prompt", "4", "--gen", "8", "--steps", "4", "--no-write"])
    methods = [r["method"] for r in out["rows"]]
    assert methods[0] == "mdsample.sample_dream (entropy)" and methods[-1] == "reference Dream loop (entropy)"
    assert len(methods) == 4 and out["cpu_smoke"]
    assert all(r["forwards"] > 0 for r in out["rows"])


def test_rows_are_written_as_they_arrive(tmp_path):
    """A run cut short (a time limit, an error) leaves the rows measured so far, marked incomplete."""
    import json
    import types

    e2e = _package_module("_e2e")

    def run(args):
        yield {"method": "first", "x": 1}
        raise RuntimeError("cut short")

    args = types.SimpleNamespace(device="cpu", no_write=False, results_dir=tmp_path)
    with pytest.raises(RuntimeError, match="cut short"):
        e2e.run_and_report(args, run, "partial", lambda r: r["method"])
    (path,) = tmp_path.glob("*-partial-*.json")  # and no half-written temporary beside it
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    doc = json.loads(path.read_text())
    assert doc["complete"] is False and [r["method"] for r in doc["rows"]] == ["first"]

    def whole(args):
        yield {"method": "a"}
        yield {"method": "b"}

    out = e2e.run_and_report(args, whole, "partial", lambda r: r["method"])
    doc = json.loads(open(out["path"]).read())
    assert doc["complete"] is True and [r["method"] for r in doc["rows"]] == ["a", "b"]


def test_commit_stamp_without_git(monkeypatch):
    """The GPU machine runs a copy of the tree without .git: the commit comes from MDSAMPLE_COMMIT there."""
    timing = _package_module("_timing")

    def no_git(*a, **k):
        raise OSError("git: not found")

    monkeypatch.setattr(timing.subprocess, "run", no_git)
    monkeypatch.setenv("MDSAMPLE_COMMIT", "abc123")
    assert timing.git_commit() == "abc123"
    monkeypatch.delenv("MDSAMPLE_COMMIT")
    assert timing.git_commit("fallback") == "fallback"


def test_bench_samplers_quick_counts():
    """The sampler benchmark's hardware-independent counts: shortcuts taken, tokens as published."""
    bench = _load("bench_samplers")
    threads = torch.get_num_threads()
    r = bench.run(quick=True, threads=threads + 1)
    # run in this process: it must leave autograd and the thread count as it found them (a leak once turned
    # autograd off for every later test)
    assert torch.is_grad_enabled() and torch.get_num_threads() == threads
    assert r["llada"]["same_tokens_as_published"]
    assert r["mdlm"]["goal_met"]
    for alg in ("entropy", "origin"):
        assert r[f"dream_{alg}"]["ratios"]["logits_rows_vs_published"] < 1.0
    assert r["dream_origin"]["ratios"]["sequence_forwards_vs_published"] < 1.0
    for alg in ("greedy", "origin"):  # masked rows only, against full logits of the doubled batch
        assert r[f"smdm_{alg}"]["ratios"]["logits_rows_vs_published"] < 0.5
    bd3 = r["bd3lm"]  # one forward per token either way; the cache feeds the block, not the prefix
    assert bd3["mdsample_cached"]["forwards"] == bd3["published_uncached"]["forwards"]
    assert bd3["mdsample_uncached"]["positions_fed"] == bd3["published_uncached"]["positions_fed"]
    assert bd3["ratios"]["positions_fed_vs_published"] < 0.5


def test_published_bd3lm_loop_draws_the_joint():
    """The benchmark's published BD3-LM loop is first-hitting BD3-LM: on an oracle of exact conditionals its
    samples follow the joint (chi-square, P(false alarm) = 1e-3, fixed seed)."""
    import sys

    sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "samplers")]
    try:
        from benchmarks._e2e import reference_bd3lm
        from sampler_oracles import JointOracle, PrefixOracle, chi_square_pvalue, count_rows, random_joint
    finally:
        del sys.path[:2]
    oracle = JointOracle(random_joint(3, 4, seed=11))
    torch.manual_seed(0)
    out = reference_bd3lm(PrefixOracle(oracle), 20000, 4, 2, oracle.mask_id)
    assert chi_square_pvalue(count_rows(out), oracle.joint_probs()) > 1e-3


def test_published_dream_loop_is_dreams_algorithm():
    """At T = 0 without truncation, the benchmark's published Dream loop and sample_dream agree token for token
    on a model that never predicts the mask (so that mdsample's exclusion of it changes nothing)."""
    import mdsample

    reference_dream = _package_module("_e2e").reference_dream
    bench = _load("bench_samplers")
    model = bench.TinyDiffusionLM(64, max_len=24, head_scale=8.0, seed=2, mask_id=63).eval()
    prompt = torch.randint(0, 63, (3, 8), generator=torch.Generator().manual_seed(1))
    shifted = lambda x, **kw: torch.cat([model(x)[:, :1], model(x)[:, :-1]], 1)  # noqa: E731
    shifted.vocab_size = 64
    grad_seen = []
    model.register_forward_hook(lambda *_: grad_seen.append(torch.is_grad_enabled()))
    want = reference_dream(model, prompt, 16, 8, 63, alg="entropy")
    assert grad_seen and not any(grad_seen)  # as upstream: a baseline building autograd graphs would be slower
    with torch.no_grad():
        got = mdsample.sample_dream(shifted, prompt, max_new_tokens=16, steps=8, alg="entropy", mask_id=63)
    assert torch.equal(got, want)


@pytest.mark.parametrize("cfg_scale", [0.0, 2.0])
def test_published_smdm_loop_is_smdms_algorithm(cfg_scale):
    """At T = 0 and batch 1 (where upstream's batch-pooled top-k is per sequence), the benchmark's published
    SMDM greedy loop and sample_smdm agree token for token, on a model that never predicts the mask."""
    import mdsample

    reference_smdm = _package_module("_e2e").reference_smdm
    bench = _load("bench_samplers")
    model = bench.TinyDiffusionLM(64, max_len=24, head_scale=8.0, seed=2, mask_id=63).eval()
    prompt = torch.randint(0, 63, (1, 8), generator=torch.Generator().manual_seed(1))
    kw = dict(alg="greedy", temperature=0.0, cfg_scale=cfg_scale)
    with torch.no_grad():
        want = reference_smdm(model, prompt, 24, 8, 63, **kw)
        got = mdsample.sample_smdm(model, prompt, length=24, steps=8, mask_id=63, **kw)
    assert torch.equal(got, want)
    assert not torch.equal(want, reference_smdm(model, prompt, 24, 8, 63, **{**kw, "cfg_scale": 2.0 - cfg_scale}))


def test_bench_likelihood_chain_rule_part():
    """The chain-rule benchmark's two loops agree (its row counts are the formula of each method; the head
    rows mdsample computes are counted in tests/test_chain_rule_likelihood.py)."""
    rows = _package_module("bench_likelihood").bench_chain_rule(torch.device("cpu"), batch=1, length=24, prompt_len=8,
                                                                 vocab=256, batch_size=8, runs=1)
    ups, ours = rows
    assert ours["max_abs_diff_vs_upstream_nats"] < 1e-3 and ups["max_abs_diff_vs_upstream_nats"] == 0


def test_bench_decoders_baselines_are_the_decoders_rules(tmp_path):
    """At T = 0 the benchmark's dInfer formulas (dense, float32 softmax) commit what mdsample's decoders
    commit, step after step on a block that the decoder fills; then one tiny benchmark shape runs."""
    from mdsample.compat import dinfer

    naive = _package_module("naive")
    g = torch.Generator().manual_seed(0)
    for rule, tau in (("threshold", 0.5), ("hierarchy", 0.5), ("credit", 0.99)):
        kw = dict(temperature=0.0, threshold=tau, mask_id=0)
        dec = {"threshold": lambda: dinfer.ThresholdParallelDecoder(**kw),
               "hierarchy": lambda: dinfer.HierarchyDecoder(low_threshold=0.3, **kw),
               "credit": lambda: dinfer.CreditThresholdParallelDecoder(credit_alpha=2.0, **kw)}[rule]()
        ours, ref = torch.zeros(2, 8, dtype=torch.int64), torch.zeros(2, 8, dtype=torch.int64)
        dense = torch.zeros(2, 8, 50)
        base = torch.randn(2, 8, 50, generator=g) * 2
        while bool((ours == 0).any()):
            logits = base + torch.randn(2, 8, 50, generator=g) * 1.5  # a model whose guesses drift step by step
            logits[..., 0] = -torch.inf  # the mask token: never drawn by either
            masked = ref == 0
            if rule == "credit":
                x0, commit = naive.dinfer_credit(logits, masked, dense, tau, 0.0, alpha=2.0)
            elif rule == "hierarchy":
                x0, commit = naive.dinfer_hierarchy(logits, masked, tau, 0.3, 0.0)
            else:
                x0, commit = naive.dinfer_threshold(logits, masked, tau, 0.0)
            ref = torch.where(commit, x0, ref)
            dec.decode(logits, 0, 8, ours)
            assert torch.equal(ours, ref), rule
    bench = _package_module("bench_decoders")
    rows = bench.bench(torch.device("cpu"), batch=1, block=4, vocab=64, dtype=torch.bfloat16, runs=1)
    assert [(r["decoder"], r["impl"]) for r in rows] == [
        (d, i) for d in ("threshold", "hierarchy", "credit") for i in ("mdsample", "dinfer_formula")]
    assert all(r["median_s"] > 0 for r in rows)
    pytest.importorskip("matplotlib")
    png = bench.plot(rows, "smoke", tmp_path / "decoders.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_likelihood_plot_draws_each_kind_of_row(tmp_path):
    """The plot of a committed full run (masked_nll, end to end, variance) draws, and one with nothing to draw
    says so rather than writing an empty figure."""
    pytest.importorskip("matplotlib")
    import json

    plot = _package_module("plot_likelihood").plot_likelihood
    doc = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "results" /
                      "cpu-likelihood-2026-11-22.json").read_text())
    assert {r["op"] for r in doc["rows"]} >= {"masked_nll", "variance_reduction", "likelihood_end_to_end"}
    assert plot(doc, tmp_path / "l.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no masked_nll"):
        plot({**doc, "rows": [{"op": "other"}]}, tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


@pytest.mark.parametrize("script, argv", [
    ("bench_decoders", ["--quick"]),
    ("bench_likelihood", ["--quick", "--parts", "variance"]),
])
def test_results_dir_option(script, argv, tmp_path, monkeypatch):
    """--results-dir takes the run's files; benchmarks/results/ (the committed record) is left alone."""
    bench = _package_module(script)
    written = []
    monkeypatch.setattr(bench, "write_results", lambda *a, **k: written.append(k.get("results_dir")) or
                        _package_module("_timing").write_results(*a, **k))
    if script == "bench_likelihood":  # the variance part at its smallest: the option, not the estimator, is tested
        monkeypatch.setattr(bench, "bench_variance", lambda *a, **k: {
            "op": "variance_reduction", "model": "m", "modes": {"count/iid": {"variance_vs_same_masking_iid": 1.0,
                                                                    "variance_vs_bernoulli_iid": 1.0}}})
    bench.main(argv + ["--results-dir", str(tmp_path)])
    (path,) = tmp_path.glob("cpu-*.json")
    assert written == [tmp_path]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the plot beside it
