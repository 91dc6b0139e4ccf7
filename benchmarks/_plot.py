"""What the results plots share: the title that names the run, and the command line that redraws a JSON."""
from __future__ import annotations

import json
import sys
from pathlib import Path

LINE_STYLES = ["-", "--", ":", "-."]  # one per series within a colour


def save_titled(fig, plt, doc: dict, what: str, path) -> Path:
    """Title ``fig`` with ``what``, the device, commit and date of results ``doc`` (a CPU run marked as one),
    write it to PNG ``path`` and close it."""
    title = f"{what}: {doc['device']} (commit {str(doc.get('commit', ''))[:10]}, {doc['date']})"
    if doc.get("device_type") == "cpu":
        title += " | CPU run: no GPU meaning"
    fig.suptitle(title, fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def replot_main(plot, usage: str, argv=None) -> int:
    """``python <script> RESULTS.json``: redraw with ``plot(doc, png_path)``, the PNG beside the JSON."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(usage)
        return 2
    src = Path(args[0])
    print(plot(json.loads(src.read_text()), src.with_suffix(".png")))
    return 0
