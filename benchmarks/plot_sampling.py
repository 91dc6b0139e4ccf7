"""Plot of a sampling sweep (benchmarks/bench_sampling.py --sweep): throughput vs rows.

Standalone: ``python benchmarks/plot_sampling.py benchmarks/results/<device>-sampling-sweep-<date>.json``
writes the PNG beside the JSON.

Three panels over rows N (log-x): GB/s of logits read (N x V x bytes per element), the
same as % of the measured copy bandwidth, and microseconds per call (eager calls, and
the decode shapes replayed from CUDA graphs where the sweep has them: marker x); one
line per (V, backend), colour by V, line style by backend. The title names the device;
a CPU run is marked a smoke test.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._plot import LINE_STYLES, replot_main, save_titled  # noqa: E402



def plot_sweep(doc: dict, path: Path) -> Path:
    """Draw the ``sample_categorical`` sweep rows of results ``doc`` (write_results' layout) into PNG ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["rows"] if r.get("series") == "sweep" and "median_s" in r]  # error rows: not drawn
    graphed = [r for r in doc["rows"] if r.get("series") == "graph" and "median_s" in r]
    if not rows:
        raise ValueError("the results hold no sweep rows (run bench_sampling.py --sweep)")
    vocabs = sorted({r["vocab"] for r in rows})
    impls = sorted({r["impl"] for r in rows})
    colours = plt.get_cmap("viridis")
    fig, (ax_gbps, ax_pct, ax_us) = plt.subplots(1, 3, figsize=(18, 5), constrained_layout=True)
    for vi, vocab in enumerate(vocabs):
        colour = colours(vi / max(1, len(vocabs) - 1))
        for bi, impl in enumerate(impls):
            line = sorted((r["rows"], r["gbps"], r.get("pct_copy"), r["median_s"]) for r in rows
                          if r["vocab"] == vocab and r["impl"] == impl)
            if not line:
                continue
            n, gbps, pct, secs = zip(*line)
            style = dict(color=colour, linestyle=LINE_STYLES[bi % len(LINE_STYLES)], marker="o", markersize=3,
                         label=f"V={vocab} {impl}")
            ax_gbps.plot(n, gbps, **style)
            if all(p is not None for p in pct):
                ax_pct.plot(n, pct, **style)
            ax_us.plot(n, [t * 1e6 for t in secs], **style)
            graph = sorted((r["rows"], r["median_s"]) for r in graphed if r["vocab"] == vocab and r["impl"] == impl)
            if graph:
                ax_us.plot([g[0] for g in graph], [g[1] * 1e6 for g in graph], **{**style, "marker": "x",
                                                                                  "label": f"V={vocab} {impl} graph"})
    copy = doc.get("copy_bandwidth_gbps")
    if copy:
        ax_gbps.axhline(copy, color="grey", linewidth=0.8)
        ax_gbps.text(1, copy, " measured copy bandwidth (read + write)", color="grey", va="bottom", fontsize=8)
    ax_gbps.set_yscale("log")  # decode shapes sit orders of magnitude below the large ones
    ax_us.set_yscale("log")
    for ax, label in ((ax_gbps, "GB/s of logits read"), (ax_pct, "% of measured copy bandwidth"),
                      (ax_us, "us per call (x: CUDA-graph replay)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("rows N (B x L)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_pct.legend(fontsize=7, ncol=2)
    dtype = rows[0]["dtype"]
    return save_titled(fig, plt, doc, f"sample_categorical, {dtype}", path)


def main(argv=None) -> int:
    return replot_main(plot_sweep, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
