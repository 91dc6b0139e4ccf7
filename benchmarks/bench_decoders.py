"""dInfer's decoder steps: mdsample.compat.dinfer against dInfer's formulas (benchmarks/naive.py).

One decoding step of a fully masked block, the most rows a step reads: for each decoder
(threshold, hierarchy, credit) at LLaDA's shapes (block 32, V 126464, bf16 logits, batch 1
and 8, temperature 1), the median time of mdsample's decoder, of the naive dInfer step
(float32 softmax and float64 Gumbel noise over ``[B, block, V]``; the credit decoder's dense
``[B, block, V]`` float32 matrix) and of its ``torch.compile`` (unless ``--no-compile``), GB/s of
logits read, and the memory each needs beyond its inputs (GPU: the allocator's peak; CPU: the sum
of allocations, an upper bound).
Writes ``benchmarks/results/<device>-decoders-<date>.json`` and a PNG beside it (time per step, log
scale, both implementations side by side); CPU rows are CPU measurements.

Usage: ``python benchmarks/bench_decoders.py [--quick] [--no-compile] [--vocab 126464] [--batches 1 8] [--runs 20]``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import naive  # noqa: E402
from benchmarks._timing import (  # noqa: E402
    add_results_dir, device_name, extra_memory, median_time, rotating_inputs, write_results)
from mdsample.compat import dinfer  # noqa: E402

MASK, THRESHOLD, LOW_THRESHOLD, TEMPERATURE = 0, 0.9, 0.4, 1.0


def _ours(rule: str):
    kw = dict(temperature=TEMPERATURE, mask_id=MASK, seed=0)
    if rule == "threshold":
        return dinfer.ThresholdParallelDecoder(threshold=THRESHOLD, **kw)
    if rule == "hierarchy":
        return dinfer.HierarchyDecoder(threshold=THRESHOLD, low_threshold=LOW_THRESHOLD, **kw)
    return dinfer.CreditThresholdParallelDecoder(threshold=THRESHOLD, **kw)


def bench(device: torch.device, *, batch: int, block: int, vocab: int, dtype: torch.dtype, runs: int,
          compiled: bool = False) -> list[dict]:
    """Result rows (dicts) of one shape: for each decoder, mdsample's decode, the naive step and, with
    ``compiled``, the naive step under ``torch.compile``; ``runs`` timed calls each (median), on logits
    ``[batch, block, vocab]`` of ``dtype`` on ``device``."""
    g = torch.Generator(device=device).manual_seed(0)
    make = lambda: (torch.randn(batch, block, vocab, generator=g, device=device) * 3).to(dtype)  # noqa: E731
    inputs = rotating_inputs(make, batch * block * vocab * dtype.itemsize, device)
    canvas = torch.full((batch, block), MASK, dtype=torch.int64, device=device)
    masked = canvas == MASK
    read = batch * block * vocab * dtype.itemsize
    rows = []
    for rule in ("threshold", "hierarchy", "credit"):
        decoder = _ours(rule)

        def ours(logits, decoder=decoder):
            decoder.block_init(None, 0)  # each call: a fresh, fully masked block
            decoder.decode(logits, 0, block, canvas.clone())

        dense = torch.zeros(batch, block, vocab, dtype=torch.float32, device=device)

        def upstream(logits, rule=rule, dense=dense):
            if rule == "credit":
                x0, commit = naive.dinfer_credit(logits, masked, dense, THRESHOLD, TEMPERATURE)
            elif rule == "hierarchy":
                x0, commit = naive.dinfer_hierarchy(logits, masked, THRESHOLD, LOW_THRESHOLD, TEMPERATURE)
            else:
                x0, commit = naive.dinfer_threshold(logits, masked, THRESHOLD, TEMPERATURE)
            return torch.where(commit, x0, canvas)

        impls = [("mdsample", ours), ("dinfer_formula", upstream)]
        if compiled:
            impls.append(("dinfer_formula+compile", torch.compile(upstream)))
        first = len(rows)
        for impl, fn in impls:
            t = median_time(fn, inputs, device=device, runs=runs)
            # the CPU profiler does not see the buffers of inductor's generated code: not measured there
            unseen = device.type == "cpu" and impl.endswith("+compile")
            rows.append(dict(decoder=rule, impl=impl, batch=batch, block=block, vocab=vocab, dtype=str(dtype),
                             median_s=t, gbps_logits=read / t / 1e9,
                             extra_memory_bytes=None if unseen else extra_memory(lambda: fn(inputs[0]), device)))
        for r in rows[first + 1:]:
            rows[first][f"speedup_vs_{r['impl']}"] = r["median_s"] / rows[first]["median_s"]
    return rows


def plot(rows: list[dict], title: str, path: Path) -> Path:
    """Bars of each (decoder, batch): mdsample's time beside the dInfer formula's (and its torch.compile, when
    measured), each baseline labelled with its ratio to mdsample."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(r["decoder"], r["batch"]) for r in rows if r["impl"] == "mdsample"]
    time_of = {(r["decoder"], r["batch"], r["impl"]): r["median_s"] * 1e3 for r in rows}
    impls = [(i, label, color) for i, label, color in (
        ("mdsample", "mdsample.compat.dinfer", "tab:blue"), ("dinfer_formula", "dInfer's formula", "tab:gray"),
        ("dinfer_formula+compile", "its torch.compile", "tab:olive")) if any(r["impl"] == i for r in rows)]
    width = 0.8 / len(impls)
    fig, ax = plt.subplots(figsize=(1.3 * len(groups) + 2, 4))
    for k, (impl, label, color) in enumerate(impls):
        xs = [g + (k - (len(impls) - 1) / 2) * width for g in range(len(groups))]
        ys = [time_of[(d, b, impl)] for d, b in groups]
        ax.bar(xs, ys, width=width * 0.95, color=color, label=label)
        if impl != "mdsample":
            for x, y, (d, b) in zip(xs, ys, groups):
                ax.annotate(f"{y / time_of[(d, b, 'mdsample')]:.0f}x", (x, y), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(groups)), [f"{d}\nB {b}" for d, b in groups])
    ax.set_yscale("log")
    ax.set_ylabel("ms per decode step")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="V 32000, batch 1, few runs (a smoke run)")
    ap.add_argument("--vocab", type=int, default=126464)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    ap.add_argument("--no-write", action="store_true", help="print only")
    add_results_dir(ap)
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    vocab, batches, runs = (32000, [1], 3) if args.quick else (args.vocab, args.batches, args.runs)
    compiled = not (args.no_compile or args.quick)
    rows = [r for b in batches for r in bench(device, batch=b, block=args.block, vocab=vocab,
                                              dtype=torch.bfloat16, runs=runs, compiled=compiled)]
    print(f"# {device_name(device)}: one step of a fully masked block, bf16 logits, T {TEMPERATURE}")
    for r in rows:
        extra = "     n/a" if r["extra_memory_bytes"] is None else f"{r['extra_memory_bytes'] / 2**20:8.1f} MiB"
        speed = "".join(f"  x{v:.2f} vs {k[len('speedup_vs_'):]}" for k, v in r.items() if k.startswith("speedup_vs_"))
        print(f"{r['decoder']:9s} {r['impl']:22s} B {r['batch']:2d} V {r['vocab']:6d}  {r['median_s'] * 1e3:9.3f} ms  "
              f"{r['gbps_logits']:7.2f} GB/s  extra {extra}{speed}")
    if not args.no_write:
        path = write_results("decoders", device, rows, extra={
            "note": "one dInfer decoder step on a fully masked block; CPU rows are CPU measurements",
            "runs": runs, "block": args.block, "compile": compiled, "threshold": THRESHOLD,
            "low_threshold": LOW_THRESHOLD, "temperature": TEMPERATURE,
            "extra_memory": "GPU: allocator peak beyond the inputs; CPU: sum of torch allocations (upper bound)"},
            results_dir=args.results_dir)
        print("wrote", path)
        try:
            title = f"{device_name(device)}: one decode step, block {args.block}, V {vocab}, bf16, T {TEMPERATURE}"
            print("wrote", plot(rows, title, path.with_suffix(".png")))
        except ImportError:
            print("matplotlib missing: no plot")
    return 0


if __name__ == "__main__":
    sys.exit(main())
