"""Microbenchmark of sample_categorical and unmask_step against the formulas users run today.

One shape:  python benchmarks/bench_sampling.py [--rows 256 --vocab 50257 --dtype bf16] [--no-compile]
Sweep:      python benchmarks/bench_sampling.py --sweep [--quick] [--vocabs ...] [--row-counts ...]
pytest:     pytest benchmarks/bench_sampling.py --benchmark-only

One shape: in one run, on whatever device is present, each available mdsample backend,
the naive formulas of benchmarks/naive.py (MDLM fp32/fp64, LLaDA fp64, vLLM fp32)
and their torch.compile versions. Reports median time, GB/s of logits read
(N x V x bytes per element, the floor any sampler must pay) and speedup over the
MDLM fp64 formula; writes benchmarks/results/<device>-sampling-<date>.json.

Sweep (GPU): V in {32000, 50257, 126464, 151936, 262144} x rows in {1 .. 4096}, bf16,
for each mdsample GPU backend (cuda, triton), skipping inputs over --max-gib; GB/s and
% of the copy bandwidth measured in the same run; at a few sizes the naive formulas,
their torch.compile versions and unmask_step by revealed fraction. Writes
<device>-sampling-sweep-<date>.json and a PNG beside it (benchmarks/plot_sampling.py).
``--quick`` is a smaller grid that fits in about 90 s. On a CPU the sweep runs the cpu
backend on a tiny grid: a smoke run of the plumbing, labelled CPU, no GPU meaning.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mdsample  # noqa: E402
from mdsample import _backends  # noqa: E402
from benchmarks import naive  # noqa: E402
from benchmarks._timing import (  # noqa: E402
    add_results_dir, copy_bandwidth, graph_time, median_time, rotating_inputs, write_results)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# Sweep grids: (vocabularies, row counts, (rows, vocab) points for the naive formulas and
# unmask_step, naive formulas also run under torch.compile there).
# Row counts up to GRAPH_ROWS are also timed as CUDA-graph replays (GPU time without the host).
GRAPH_ROWS = 64
SWEEPS = {
    "full": ((32000, 50257, 126464, 151936, 262144), (1, 4, 16, 64, 256, 1024, 4096),
             ((16, 126464), (256, 50257), (1024, 126464)), tuple(naive.FORMULAS)),
    "quick": ((32000, 126464, 262144), (1, 16, 256, 4096), ((256, 126464),), ("mdlm_fp64",)),
    "cpu": ((32000, 126464), (1, 4, 16), ((16, 32000),), ()),
}


def _backends_for(device: torch.device) -> list[str]:
    return [b for b in ("cuda", "triton", "cpu") if _backends.available(b, device.type)]


def _mdsample(backend: str):
    """sample_categorical on ``backend``: logits ``[N, V]`` -> tokens ``[N]``."""
    return lambda x: mdsample.sample_categorical(x, seed=1, check=False, backend=backend)


def candidates(device: torch.device, compiled: tuple[str, ...]) -> dict:
    """name -> callable(logits [N, V]) -> tokens [N]; the naive formulas named in ``compiled`` also compiled."""
    out = {f"mdsample[{b}]": _mdsample(b) for b in _backends_for(device) + ["reference"]}
    for name, fn in naive.FORMULAS.items():
        out[name] = fn
        if name in compiled:
            out[f"{name}+compile"] = torch.compile(fn)
    return out


def _logits_bytes(rows: int, vocab: int, dtype: torch.dtype) -> int:
    return rows * vocab * torch.finfo(dtype).bits // 8


def bench_sampling(rows: int, vocab: int, dtype: torch.dtype, device: torch.device, compiled: tuple[str, ...],
                   runs: int) -> list[dict]:
    """Every candidate on one shape: rows with median_s, gbps and speedup_vs_mdlm_fp64."""
    nbytes = _logits_bytes(rows, vocab, dtype)
    inputs = rotating_inputs(lambda: (torch.randn(rows, vocab, device=device) * 3).to(dtype), nbytes, device)
    results = []
    for name, fn in candidates(device, compiled).items():
        t = median_time(fn, inputs, device=device, runs=runs)
        results.append({"op": "sample_categorical", "impl": name, "rows": rows, "vocab": vocab,
                        "dtype": str(dtype).split(".")[-1], "median_s": t, "gbps": nbytes / t / 1e9})
    base = next(r["median_s"] for r in results if r["impl"] == "mdlm_fp64")
    for r in results:
        r["speedup_vs_mdlm_fp64"] = base / r["median_s"]
    return results


def bench_unmask(rows: int, vocab: int, dtype: torch.dtype, device: torch.device, runs: int,
                 backends: list[str] | None = None) -> list[dict]:
    """unmask_step time vs the fraction of positions revealed (all positions masked), per backend
    (default: every one available on ``device``, else the reference)."""
    nbytes = _logits_bytes(rows, vocab, dtype)
    inputs = rotating_inputs(lambda: (torch.randn(1, rows, vocab, device=device) * 3).to(dtype), nbytes, device)
    x = torch.zeros((1, rows), dtype=torch.int64, device=device)
    results = []
    for backend in backends or _backends_for(device) or ["reference"]:
        for frac in (0.01, 0.1, 1.0):
            t = median_time(lambda l: mdsample.unmask_step(l, x, mask_id=0, reveal_prob=frac, check=False, backend=backend),
                            inputs, device=device, runs=runs)
            results.append({"op": "unmask_step", "impl": f"mdsample[{backend}]", "rows": rows, "vocab": vocab,
                            "dtype": str(dtype).split(".")[-1], "revealed": frac, "median_s": t,
                            "gbps_revealed": frac * nbytes / t / 1e9})
    return results


def print_table(results: list[dict]) -> None:
    print(f"{'op':<19}{'impl':<24}{'shape':>18}{'revealed':>9}{'median ms':>11}{'GB/s':>8}{'vs mdlm_fp64':>13}")
    for r in results:
        shape = f"{r['rows']}x{r['vocab']} {r['dtype']}"
        gbps = r.get("gbps", r.get("gbps_revealed"))
        speed = f"{r['speedup_vs_mdlm_fp64']:.1f}x" if "speedup_vs_mdlm_fp64" in r else ""
        rev = f"{r['revealed']:.0%}" if "revealed" in r else ""
        print(f"{r['op']:<19}{r['impl']:<24}{shape:>18}{rev:>9}{r['median_s'] * 1e3:>11.2f}{gbps:>8.2f}{speed:>13}")


def sweep(device: torch.device, vocabs, row_counts, naive_points, compiled, *, dtype: torch.dtype, runs: int,
          max_bytes: int, copy_gbps: float, graphs: bool, checkpoint=None) -> list[dict]:
    """The sweep: each mdsample backend of ``device`` over ``vocabs`` x ``row_counts`` (series "sweep",
    inputs over ``max_bytes`` skipped), then (``graphs``, GPU) the sweep's decode shapes as CUDA-graph
    replays (series "graph"), then the naive formulas (series "naive") and unmask_step at ``naive_points``:
    the issue's goals first, the cold torch.compile of the naive baselines last. Every row has median_s, gbps
    and pct_copy (% of ``copy_gbps``), or an ``error`` where a backend failed (the others go on).
    ``checkpoint(rows)``, if given, receives the rows so far after each vocabulary, graph shape and naive
    point (to save partial results)."""
    backends = [b for b in _backends_for(device) if b != "triton" or device.type == "cuda"]  # not the interpreter
    results = []

    def progress():
        for r in results:
            if "median_s" in r:
                r["pct_copy"] = 100 * r.get("gbps", r.get("gbps_revealed")) / copy_gbps
        if checkpoint is not None:
            checkpoint(results)

    for vocab in vocabs:
        for rows in row_counts:
            nbytes = _logits_bytes(rows, vocab, dtype)
            if nbytes > max_bytes:
                print(f"skip {rows}x{vocab}: {nbytes / 2**30:.2f} GiB > --max-gib", flush=True)
                continue
            inputs = rotating_inputs(lambda: (torch.randn(rows, vocab, device=device) * 3).to(dtype), nbytes, device)
            for backend in backends:
                row = {"op": "sample_categorical", "series": "sweep", "impl": f"mdsample[{backend}]", "rows": rows,
                       "vocab": vocab, "dtype": str(dtype).split(".")[-1]}
                try:
                    t = median_time(_mdsample(backend), inputs, device=device, runs=runs)
                except Exception as exc:  # noqa: BLE001  (reported in the results: one backend must not end the sweep)
                    results.append({**row, "error": f"{type(exc).__name__}: {exc}"[:300]})
                    print(f"{row['impl']} {rows}x{vocab}: {results[-1]['error']}", flush=True)
                    continue
                row.update(median_s=t, gbps=nbytes / t / 1e9)
                if backend == "triton" and device.type == "cuda":
                    from mdsample.triton.sampling import _sm_count, use_split

                    row["triton_path"] = "split" if use_split(rows, vocab, _sm_count(device)) else "rows"
                results.append(row)
                print(f"{row['impl']:<18}{rows:>6} x {vocab:<7}{t * 1e6:>10.1f} us{row['gbps']:>9.1f} GB/s", flush=True)
            del inputs
        progress()
    if graphs and device.type == "cuda":
        sweep_rows = [r for r in results if r["series"] == "sweep" and "error" not in r]
        for shape_rows in _graph_series(device, backends, sweep_rows, dtype, runs):
            results += shape_rows
            progress()
    for rows, vocab in naive_points:
        for r in bench_sampling(rows, vocab, dtype, device, compiled, runs):
            results.append({**r, "series": "naive"})
        results += [{**r, "series": "unmask"} for r in bench_unmask(rows, vocab, dtype, device, runs, backends)]
        progress()
    progress()
    return results


def _graph_series(device, backends, sweep_rows, dtype, runs):
    """The decode shapes (rows <= GRAPH_ROWS) of the sweep again, replayed from a CUDA graph: yields each
    shape's rows (one per backend). A backend that cannot be captured records its error and the others go on.
    """
    for vocab, rows in sorted({(r["vocab"], r["rows"]) for r in sweep_rows if r["rows"] <= GRAPH_ROWS}):
        out = []
        nbytes = _logits_bytes(rows, vocab, dtype)
        inputs = rotating_inputs(lambda: (torch.randn(rows, vocab, device=device) * 3).to(dtype), nbytes, device)
        for backend in backends:
            row = {"op": "sample_categorical", "series": "graph", "impl": f"mdsample[{backend}]", "rows": rows,
                   "vocab": vocab, "dtype": str(dtype).split(".")[-1]}
            try:
                t = graph_time(_mdsample(backend), inputs, device=device, runs=runs)
            except Exception as exc:  # noqa: BLE001  (reported in the results, not fatal)
                out.append({**row, "error": f"{type(exc).__name__}: {exc}"[:300]})
                print(f"graph {row['impl']} {rows}x{vocab}: {out[-1]['error']}", flush=True)
                continue
            out.append({**row, "median_s": t, "gbps": nbytes / t / 1e9})
            print(f"graph {row['impl']:<12}{rows:>6} x {vocab:<7}{t * 1e6:>10.1f} us", flush=True)
        del inputs
        yield out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per point (15; sweep on CPU: 3)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    parser.add_argument("--no-save", action="store_true", help="print only; write no results file")
    parser.add_argument("--sweep", action="store_true", help="the vocab x rows sweep with its plot")
    parser.add_argument("--quick", action="store_true", help="the sweep on a smaller grid (~90 s on a GPU)")
    parser.add_argument("--vocabs", type=int, nargs="+", help="sweep vocabularies instead of the grid's")
    parser.add_argument("--row-counts", type=int, nargs="+", help="sweep row counts instead of the grid's")
    parser.add_argument("--naive-at", type=int, nargs=2, metavar=("ROWS", "VOCAB"),
                        help="run the naive formulas and unmask_step at this one shape instead of the grid's")
    parser.add_argument("--no-graph", action="store_true", help="sweep: skip the CUDA-graph decode timings")
    parser.add_argument("--max-gib", type=float, default=2.0, help="skip sweep inputs larger than this")
    add_results_dir(parser)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[args.dtype]
    if not (args.sweep or args.quick):
        results = bench_sampling(args.rows, args.vocab, dtype, device,
                                 () if args.no_compile else tuple(naive.FORMULAS), args.runs or 15)
        results += bench_unmask(args.rows * 4, args.vocab, dtype, device, args.runs or 15)
        print_table(results)
        if not args.no_save:
            path = write_results("sampling", device, results, {"copy_bandwidth_gbps": copy_bandwidth(device)},
                                 results_dir=args.results_dir)
            print(f"results: {path}")
        return 0

    grid = "cpu" if device.type == "cpu" else "quick" if args.quick else "full"
    vocabs, row_counts, naive_points, compiled = SWEEPS[grid]
    if args.no_compile:
        compiled = ()
    copy_gbps = copy_bandwidth(device)
    print(f"[{grid} sweep] copy bandwidth {copy_gbps:.1f} GB/s" + (" (CPU smoke run: no GPU meaning)"
                                                                   if device.type == "cpu" else ""), flush=True)
    if args.naive_at:
        naive_points = (tuple(args.naive_at),)
    extra = {"copy_bandwidth_gbps": copy_gbps, "grid": grid, "cpu_smoke": device.type == "cpu"}

    def save(rows, complete=False):  # rewritten as the sweep goes: a time limit keeps what was measured
        return write_results("sampling-sweep" + ("-quick" if grid == "quick" else ""), device, rows,
                             {**extra, "complete": complete}, results_dir=args.results_dir)

    results = sweep(device, args.vocabs or vocabs, args.row_counts or row_counts, naive_points, compiled,
                    dtype=dtype, runs=args.runs or (3 if device.type == "cpu" else 15),
                    max_bytes=int(args.max_gib * 2**30), copy_gbps=copy_gbps, graphs=not args.no_graph,
                    checkpoint=None if args.no_save else save)
    print_table([r for r in results if r["series"] in ("naive", "unmask")])
    if not args.no_save:
        from benchmarks.plot_sampling import plot_sweep

        path = save(results, complete=True)
        try:
            png = plot_sweep(json.loads(path.read_text()), path.with_suffix(".png"))
        except ImportError:  # the GPU machine may lack matplotlib: the JSON is what counts, plot it elsewhere
            png = f"not drawn (no matplotlib): python benchmarks/plot_sampling.py {path}"
        except ValueError as exc:  # nothing to plot (no backend measured a sweep row): the JSON says why
            png = f"not drawn: {exc}"
        print(f"results: {path}\nplot: {png}")
    return 0


# pytest-benchmark entry points: the CPU goal shape (bf16 [256, 50257]).
def _bench_logits():
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return (torch.randn(256, 50257, device=device) * 3).to(torch.bfloat16)


def test_bench_mdsample_auto(benchmark):
    logits = _bench_logits()
    benchmark(lambda: mdsample.sample_categorical(logits, seed=1, check=False))


def test_bench_mdlm_fp64(benchmark):
    logits = _bench_logits()
    benchmark(lambda: naive.mdlm_fp64(logits))


if __name__ == "__main__":
    sys.exit(main())
