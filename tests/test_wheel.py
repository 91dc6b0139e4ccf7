"""The wheels a packager builds: what they hold, their tags, and that they import and sample on their own.

Each test copies the tracked files (what a clean clone has) to a scratch directory, builds the
sdist there (PEP 517's ``build_sdist``, what ``python -m build --sdist`` calls) and checks that it
holds what a build and the tests need, runs ``pip wheel`` on the unpacked sdist (so the wheel is
the one a user building from the sdist gets), installs the wheel into another scratch directory with ``pip install
--target`` and imports it in a fresh interpreter started with ``-S`` (no site processing, so
the checkout's editable install cannot shadow the wheel; torch comes from this environment's
site-packages, added by path). The compiled wheel is built with ``MDSAMPLE_NO_CUDA=1``: its
packaging is the same with or without device code, and test_build.py checks the device code.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in the wheel's interpreter: imports from the install only, samples on the CPU, and
# compares with the float64 reference computed in the same process.
_PROBE = r'''
import sys
target, site = sys.argv[1], sys.argv[2]
sys.path[:0] = [target, site]
import torch
import mdsample
assert mdsample.__file__.startswith(target), mdsample.__file__
from mdsample import _backends
logits = torch.randn(64, 1000, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
got = mdsample.sample_categorical(logits, seed=3, offset=1)
want = mdsample.sample_categorical(logits, seed=3, offset=1, backend="reference")
assert torch.equal(got, want), "wheel's auto backend disagrees with the reference"
compiled = _backends.available("cpu", "cpu")
assert compiled or "pure-Python" in _backends.why_not("cpu", "cpu"), _backends.why_not("cpu", "cpu")
print("compiled" if compiled else "pure", mdsample.__version__)
'''


def _tracked_copy(dest):
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)) or dest, exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))


# What the sdist must carry: the extension's build (CMake, sources, headers), the license, and the
# tests with the helpers and benchmarks they import.
_SDIST_NEEDS = ("CMakeLists.txt", "setup.py", "pyproject.toml", "LICENSE", "csrc/sampling.cu", "csrc/bindings.cpp",
                "csrc/include/mdsample/philox.h", "tests/test_wheel.py", "tests/likelihood_oracles.py",
                "tests/stats/__init__.py", "tests/cuda_emu/cuda_runtime.h", "benchmarks/_e2e.py",
                "mdsample/ops/sampling.py")


def _sdist(src, out, env):
    """Builds the sdist of ``src`` into ``out``, checks its contents, and returns the unpacked tree."""
    hook = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    done = subprocess.run([sys.executable, "-c", hook, str(out)], cwd=src, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    archive = out / done.stdout.split()[-1]
    with tarfile.open(archive) as tar:
        top = tar.getnames()[0].split("/")[0]
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        missing = [n for n in _SDIST_NEEDS if n not in names]
        assert not missing, f"the sdist lacks {missing}"
        assert not [n for n in names if n.endswith((".so", ".pyc"))], "build products in the sdist"
        tar.extractall(out)
    return out / top


def _build_and_install(tmp_path, env_extra):
    if subprocess.run(["git", "rev-parse"], cwd=ROOT, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: the tracked files are unknown")
    src, wheels, target = tmp_path / "src", tmp_path / "wheels", tmp_path / "site"
    _tracked_copy(src)
    env = {**os.environ, **env_extra}
    env.pop("TRITON_INTERPRET", None)
    unpacked = _sdist(src, tmp_path / "sdist", env)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w",
                           str(wheels), str(unpacked)], env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = wheels.glob("mdsample-*.whl")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--target",
                           str(target), str(wheel)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    probe = subprocess.run([sys.executable, "-S", "-c", _PROBE, str(target), sysconfig.get_paths()["purelib"]],
                           cwd=tmp_path, capture_output=True, text=True, timeout=600,
                           env={k: v for k, v in env.items() if k != "PYTHONPATH"})
    assert probe.returncode == 0, probe.stdout[-3000:] + probe.stderr[-3000:]
    return wheel, zipfile.ZipFile(wheel).namelist(), probe.stdout.split()


def _common_contents(names):
    for module in ("mdsample/__init__.py", "mdsample/ops/sampling.py", "mdsample/triton/sampling.py",
                   "mdsample/samplers/llada.py", "mdsample/models/transformer.py", "mdsample/compat/llada.py",
                   "mdsample/reference/philox.py"):
        assert module in names, module
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "csrc/"))], "sources leaked into the wheel"
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    return metadata


def _check_metadata(wheel, names, version):
    """The wheel's Version is the package's ``__version__``; it requires torch and numpy and declares its license."""
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(_common_contents(names)).decode()
    assert f"\nVersion: {version}\n" in meta
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    assert any(r.startswith("torch") for r in requires) and any(r.startswith("numpy") for r in requires), requires
    assert [n for n in names if ".dist-info/" in n and n.endswith("LICENSE")], "no license file in the wheel"
    # setup.py declares it the way the building setuptools reads it (SPDX from 77 on, the text field before)
    assert "\nLicense-Expression: Apache-2.0\n" in meta or "\nLicense: Apache-2.0\n" in meta, meta[:600]
    assert "\nClassifier: Environment :: GPU :: NVIDIA CUDA\n" in meta


def test_pure_python_wheel(tmp_path):
    """``MDSAMPLE_NO_EXT=1``: a py3-none-any wheel without the extension that still samples (reference)."""
    wheel, names, (kind, version) = _build_and_install(tmp_path, {"MDSAMPLE_NO_EXT": "1"})
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
    _check_metadata(wheel, names, version)
    assert not [n for n in names if n.endswith(".so")]
    assert kind == "pure" and version


def test_compiled_wheel(tmp_path):
    """The default wheel: platform-tagged, the extension inside, no libtorch dependency, samples on the cpu backend."""
    wheel, names, (kind, version) = _build_and_install(tmp_path, {"MDSAMPLE_NO_CUDA": "1"})
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert f"-{tag}-{tag}-" in wheel.name and "linux" in wheel.name, wheel.name
    _check_metadata(wheel, names, version)
    (ext,) = [n for n in names if n.startswith("mdsample/_C") and n.endswith(".so")]
    with zipfile.ZipFile(wheel) as z:
        z.extract(ext, tmp_path / "x")
    needed = subprocess.run(["readelf", "-d", str(tmp_path / "x" / ext)], capture_output=True, text=True).stdout
    assert "libtorch" not in needed and "libc10" not in needed
    assert kind == "compiled" and version
