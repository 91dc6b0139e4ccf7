"""Timing and result files shared by the benchmarks (DESIGN.md §7).

GPU: CUDA events after warm-up, median of many runs, inputs rotated through a
set larger than L2 so every run reads from HBM. CPU: wall clock, median.
Results name the device they ran on; a CPU time is never labelled as a GPU one.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

RESULTS = Path(__file__).resolve().parent / "results"


def add_results_dir(ap: argparse.ArgumentParser) -> None:
    """Give a benchmark's parser ``--results-dir``, where its JSON and PNG go (default ``benchmarks/results/``,
    whose files are the committed record: a trial run elsewhere leaves them alone)."""
    ap.add_argument("--results-dir", type=Path, default=RESULTS,
                    help="directory for the results JSON and plot (default benchmarks/results/)")


@contextlib.contextmanager
def cpu_threads(n: int):
    """torch's intra-op thread count set to ``n`` inside, the caller's restored after (the smoke tests call
    the benchmarks in the test process: a leaked setting would slow every later test)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo, or None where it cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def git_commit(fallback: str = "") -> str:
    """The checked-out commit of this repository; where git cannot tell (the GPU machine gets a copy of the
    working tree without ``.git``), ``$MDSAMPLE_COMMIT`` (gpu_check.sh's caller passes it), else ``fallback``."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=RESULTS.parent).stdout.strip()
    except OSError:
        commit = ""
    return commit or os.environ.get("MDSAMPLE_COMMIT", "") or fallback


def device_name(device: torch.device) -> str:
    """Human-readable name of the device the numbers come from."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = cpu_model()
    if model is None:
        model = platform.processor() or platform.machine()
    return f"CPU {model} x{torch.get_num_threads()} threads"


def rotating_inputs(make, nbytes_each: int, device: torch.device, min_total: int = 256 << 20) -> list:
    """Enough copies of ``make()`` (``min_total`` bytes, 5x an H100's 50 MB L2) that cycling through them defeats
    the L2 cache on a GPU. Sized by bytes: a cap of 64 copies left a decode row's set (64 x 64 KB at
    1 x 32000 bf16) inside L2, so its GB/s were L2's."""
    if device.type != "cuda":
        return [make()]
    count = max(2, -(-min_total // max(1, nbytes_each)))
    return [make() for _ in range(count)]


def median_time(fn, inputs: list, *, device: torch.device, warmup: int = 3, runs: int = 20) -> float:
    """Median seconds of ``fn(x)`` cycling over ``inputs``."""
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for i in range(runs):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(inputs[i % len(inputs)])
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop) / 1e3)
    else:
        for i in range(runs):
            t0 = time.perf_counter()
            fn(inputs[i % len(inputs)])
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def graph_time(fn, inputs: list, *, device: torch.device, runs: int = 20) -> float:
    """Median seconds per call of ``fn(x)`` replayed from a CUDA graph: the GPU time without the host's
    launch overhead. One graph holds a call on every input in turn (a set past L2: :func:`rotating_inputs`),
    so its replay runs them back to back; each sample is one replay's time over the calls. Timing one replay
    of one call between events (as before) added the host's graph-launch latency to every sample."""
    for x in inputs:  # compile, autotune and allocate outside capture
        fn(x)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for x in inputs:
            fn(x)
    return median_time(lambda g: g.replay(), [graph], device=device, runs=runs) / len(inputs)


def allocated_bytes(fn) -> int:
    """Bytes torch allocates while ``fn`` runs (sum of allocations: >= the peak extra memory)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return int(sum(max(e.self_cpu_memory_usage, 0) for e in prof.events()))


def extra_memory(fn, device) -> int:
    """Memory ``fn`` needs beyond its inputs: on a GPU the allocator's peak over what was allocated
    before the call; on the CPU :func:`allocated_bytes` (an upper bound)."""
    if device.type != "cuda":
        return allocated_bytes(fn)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def copy_bandwidth(device: torch.device, nbytes: int | None = None) -> float:
    """Measured copy bandwidth of ``device`` in GB/s (bytes read + written per second).

    GPU: device-to-device copy of 1 GiB (CUDA events). CPU: memory copy of 256 MiB by
    torch's threads (wall clock), only to give CPU smoke runs a reference line.
    """
    nbytes = nbytes or ((1 << 30) if device.type == "cuda" else (256 << 20))
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    t = median_time(lambda s: dst.copy_(s), [src], device=device, runs=30 if device.type == "cuda" else 5)
    return 2 * nbytes / t / 1e9


def _cpu_isa() -> str | None:
    """The instruction-set build the CPU kernels ran (``mdsample._C.cpu_isa()``), None without them."""
    from mdsample import _backends

    C = _backends.compiled_module()
    return None if C is None else C.cpu_isa()


def write_results(kind: str, device: torch.device, rows: list[dict], extra: dict | None = None,
                  results_dir: Path = RESULTS) -> Path:
    """Write ``<results_dir>/<device>-<kind>-<date>.json`` (default ``benchmarks/results/``) with the
    environment stamped in: device name, torch, CUDA, commit, date."""
    commit = git_commit()
    stamp = datetime.date.today().isoformat()
    name = device_name(device)
    slug = "cpu" if device.type == "cpu" else name.replace("NVIDIA ", "").replace(" ", "_").lower()
    doc = {
        "device": name,
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "commit": commit,
        "date": stamp,
        **({"cpu_isa": _cpu_isa()} if device.type == "cpu" else {}),
        "rows": rows,
        **(extra or {}),
    }
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{slug}-{kind}-{stamp}.json"
    # Written whole, then renamed: the benchmarks rewrite their file after every row, and a time limit's
    # SIGTERM mid-write must leave the previous version, not a truncated one.
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(doc, indent=1))
    os.replace(partial, path)
    return path
