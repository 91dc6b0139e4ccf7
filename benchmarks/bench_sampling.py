"""Microbenchmark of sample_categorical and unmask_step against the formulas users run today.

Standalone:   python benchmarks/bench_sampling.py [--rows 256 --vocab 50257 --dtype bf16] [--no-compile]
pytest:       pytest benchmarks/bench_sampling.py --benchmark-only

In one run, on whatever device is present: each available mdsample backend, the
naive formulas of benchmarks/naive.py (MDLM fp32/fp64, LLaDA fp64, vLLM fp32)
and their torch.compile versions. Reports median time, GB/s of logits read
(N x V x bytes per element, the floor any sampler must pay) and speedup over the
MDLM fp64 formula; writes benchmarks/results/<device>-sampling-<date>.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mdsample  # noqa: E402
from mdsample import _backends  # noqa: E402
from benchmarks import naive  # noqa: E402
from benchmarks._timing import copy_bandwidth, median_time, rotating_inputs, write_results  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _backends_for(device: torch.device) -> list[str]:
    return [b for b in ("cuda", "triton", "cpu") if _backends.available(b, device.type)]


def candidates(device: torch.device, compile_naive: bool) -> dict:
    """name -> callable(logits [N, V]) -> tokens [N]."""
    out = {f"mdsample[{b}]": (lambda b: lambda x: mdsample.sample_categorical(x, seed=1, check=False, backend=b))(b)
           for b in _backends_for(device)}
    out["mdsample[reference]"] = lambda x: mdsample.sample_categorical(x, seed=1, check=False, backend="reference")
    for name, fn in naive.FORMULAS.items():
        out[name] = fn
        if compile_naive:
            out[f"{name}+compile"] = torch.compile(fn)
    return out


def bench_sampling(rows: int, vocab: int, dtype: torch.dtype, device: torch.device, compile_naive: bool, runs: int) -> list[dict]:
    nbytes = rows * vocab * torch.finfo(dtype).bits // 8
    inputs = rotating_inputs(lambda: (torch.randn(rows, vocab, device=device) * 3).to(dtype), nbytes, device)
    results = []
    for name, fn in candidates(device, compile_naive).items():
        t = median_time(fn, inputs, device=device, runs=runs)
        results.append({"op": "sample_categorical", "impl": name, "rows": rows, "vocab": vocab,
                        "dtype": str(dtype).split(".")[-1], "median_s": t, "gbps": nbytes / t / 1e9})
    base = next(r["median_s"] for r in results if r["impl"] == "mdlm_fp64")
    for r in results:
        r["speedup_vs_mdlm_fp64"] = base / r["median_s"]
    return results


def bench_unmask(rows: int, vocab: int, dtype: torch.dtype, device: torch.device, runs: int) -> list[dict]:
    """unmask_step time vs the fraction of positions revealed (all positions masked)."""
    nbytes = rows * vocab * torch.finfo(dtype).bits // 8
    inputs = rotating_inputs(lambda: (torch.randn(1, rows, vocab, device=device) * 3).to(dtype), nbytes, device)
    x = torch.zeros((1, rows), dtype=torch.int64, device=device)
    results = []
    for backend in _backends_for(device) or ["reference"]:
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    parser.add_argument("--no-save", action="store_true", help="print only; write no results file")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[args.dtype]
    results = bench_sampling(args.rows, args.vocab, dtype, device, not args.no_compile, args.runs)
    results += bench_unmask(args.rows * 4, args.vocab, dtype, device, args.runs)
    print_table(results)
    if not args.no_save:
        bw = copy_bandwidth(device)
        path = write_results("sampling", device, results, {"copy_bandwidth_gbps": bw})
        print(f"results: {path}")
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
