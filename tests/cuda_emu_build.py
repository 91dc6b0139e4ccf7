"""Builds a tests/cuda_emu library: unmodified csrc/*.cu compiled by g++ against the CUDA emulator.

``emulator_library(name, sources)`` compiles every source in parallel (``.cu`` files as C++,
with the flags the cpu backend's shared math is built with, so the two round alike), links a
shared library in the temp dir and loads it with ctypes. The library is cached under a hash
of the compiler, the flags and every input (the sources, the emulator's headers, csrc's
headers), and written atomically so concurrent sessions see all of it or nothing. Without a
C++ compiler the calling test is skipped.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EMU = ROOT / "tests" / "cuda_emu"
CXX = os.environ.get("CXX", "g++")
# -ffp-contract=off as the cpu backend is built (CMakeLists.txt), so the shared header math rounds alike.
FLAGS = ["-std=c++17", "-O2", "-fPIC", "-ffp-contract=off", "-DMDSAMPLE_CUDA_EMULATION",
         f"-I{EMU}", f"-I{ROOT / 'csrc' / 'include'}", f"-I{ROOT / 'csrc'}"]


def _build(sources, out: Path) -> None:
    objs = [out.with_name(f"{out.stem}.{i}.o") for i in range(len(sources))]
    jobs = [subprocess.Popen([CXX, *FLAGS, "-x", "c++" if s.suffix == ".cu" else "none", "-c", str(s), "-o", str(o)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for s, o in zip(sources, objs)]
    for job, src in zip(jobs, sources):
        log = job.communicate()[0].decode()
        if job.returncode:
            raise RuntimeError(f"{CXX} failed on {src}:\n{log}")
    subprocess.run([CXX, "-shared", "-o", str(out), *map(str, objs)], check=True)
    for o in objs:
        o.unlink()


def emulator_library(name: str, sources: list[Path]) -> ctypes.CDLL:
    """The emulated library ``name`` built from ``sources`` (cached by a hash of every input)."""
    if not (EMU / "cuda_emu.h").exists():
        pytest.skip("tests/cuda_emu (the CUDA emulator) is not in this checkout")
    if shutil.which(CXX) is None:
        pytest.skip(f"the CUDA emulator needs a C++ compiler ({CXX} not found)")
    inputs = [*sources, *sorted(EMU.glob("*.h")), *sorted((ROOT / "csrc" / "include" / "mdsample").glob("*.h")),
              *sorted((ROOT / "csrc").glob("*.h"))]
    key = hashlib.sha256()
    key.update(subprocess.run([CXX, "--version"], capture_output=True).stdout + " ".join(FLAGS).encode())
    for path in inputs:
        key.update(path.read_bytes())
    lib = Path(tempfile.gettempdir()) / "mdsample-cuda-emu" / f"{name}-{key.hexdigest()[:24]}.so"
    if not lib.exists():
        lib.parent.mkdir(parents=True, exist_ok=True)
        partial = lib.with_name(f"build-{os.getpid()}-{lib.name}")
        _build(sources, partial)
        os.replace(partial, lib)  # atomic: a concurrent session sees all of it or nothing
    return ctypes.CDLL(str(lib))
