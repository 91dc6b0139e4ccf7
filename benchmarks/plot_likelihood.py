"""Plot of a likelihood benchmark (benchmarks/bench_likelihood.py): one panel per kind of row it holds.

Standalone: ``python benchmarks/plot_likelihood.py benchmarks/results/<device>-likelihood-<date>.json``
writes the PNG beside the JSON.

- ``masked_nll``: GB/s over the masked rows' logits, and extra memory per call (log), against the masked
  fraction; one line per (dtype, V, implementation).
- ``variance_reduction``: the estimator's variance at equal forward passes relative to iid draws of the
  same masking, per timestep mode, one bar group per model; the issue's goal (0.5x) as a line.
- ``likelihood_end_to_end`` / ``chain_rule_likelihood``: seconds per evaluation of each implementation (log).
The title names the device; a CPU run says so.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._plot import LINE_STYLES, replot_main, save_titled  # noqa: E402

_TIMED = ("likelihood_end_to_end", "chain_rule_likelihood")


def _masked_nll(ax_gbps, ax_mem, rows, plt):
    keys = sorted({(r["dtype"], r["vocab"]) for r in rows})
    impls = sorted({r["impl"] for r in rows})
    colours = plt.get_cmap("tab10")
    for ii, impl in enumerate(impls):
        for ki, (dtype, vocab) in enumerate(keys):
            line = sorted((r["mask_frac"], r["gbps_masked_rows"], r.get("extra_memory_bytes")) for r in rows
                          if r["impl"] == impl and (r["dtype"], r["vocab"]) == (dtype, vocab))
            if not line:
                continue
            frac, gbps, mem = zip(*line)
            style = dict(color=colours(ii % 10), linestyle=LINE_STYLES[ki % len(LINE_STYLES)], marker="o",
                         markersize=3, label=f"{impl} {dtype} V={vocab}")
            ax_gbps.plot(frac, gbps, **style)
            if all(m is not None for m in mem):
                ax_mem.plot(frac, [max(m, 1) / 2**20 for m in mem], **style)
    for ax, label in ((ax_gbps, "GB/s of the masked rows' logits"), (ax_mem, "extra memory per call (MiB)")):
        ax.set_xlabel("masked fraction of the rows")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    ax_gbps.set_title("masked_nll", fontsize=9)
    ax_gbps.legend(fontsize=6)


def _variance(ax, rows):
    modes = sorted({m for r in rows for m in r["modes"]})
    width = 0.8 / max(1, len(rows))
    for ri, r in enumerate(rows):
        ratios = [r["modes"].get(m, {}).get("variance_vs_same_masking_iid", float("nan")) for m in modes]
        ax.bar([i + ri * width for i in range(len(modes))], ratios, width=width, label=r["model"])
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--", label="goal: 0.5x")
    ax.set_xticks([i + width * (len(rows) - 1) / 2 for i in range(len(modes))])
    ax.set_xticklabels(modes, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("variance / iid variance (same masking, equal passes)")
    ax.set_title("variance reduction", fontsize=9)
    ax.legend(fontsize=6)


def _timed(ax, rows):
    labels = [r["impl"] for r in rows]
    ax.barh(range(len(rows)), [r["median_s"] for r in rows], color="tab:blue")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=6)
    ax.set_xscale("log")
    ax.set_xlabel("seconds per evaluation")
    ax.set_title("end to end", fontsize=9)


def plot_likelihood(doc: dict, path: Path) -> Path:
    """Draw the rows of likelihood results ``doc`` (write_results' layout) into PNG ``path``; ValueError when
    it holds none of the kinds above."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nll = [r for r in doc["rows"] if r.get("op") == "masked_nll"]
    var = [r for r in doc["rows"] if r.get("op") == "variance_reduction" and r.get("modes")]
    timed = [r for r in doc["rows"] if r.get("op") in _TIMED and "median_s" in r]
    panels = 2 * bool(nll) + bool(var) + bool(timed)
    if not panels:
        raise ValueError("the results hold no masked_nll, variance_reduction or end-to-end rows")
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 5), constrained_layout=True, squeeze=False)
    axes = list(axes[0])
    if nll:
        _masked_nll(axes.pop(0), axes.pop(0), nll, plt)
    if var:
        _variance(axes.pop(0), var)
    if timed:
        _timed(axes.pop(0), timed)
    return save_titled(fig, plt, doc, "likelihood", path)


def main(argv=None) -> int:
    return replot_main(plot_likelihood, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
