"""The wheels a packager builds: what they hold, their tags, and that they import and sample on their own.

Each test copies the tracked files (what a clean clone has) to a scratch directory, runs
``pip wheel`` there, installs the wheel into another scratch directory with ``pip install
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
print("compiled" if _backends.available("cpu", "cpu") else "pure", mdsample.__version__)
'''


def _tracked_copy(dest):
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)) or dest, exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))


def _build_and_install(tmp_path, env_extra):
    if subprocess.run(["git", "rev-parse"], cwd=ROOT, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: the tracked files are unknown")
    src, wheels, target = tmp_path / "src", tmp_path / "wheels", tmp_path / "site"
    _tracked_copy(src)
    env = {**os.environ, **env_extra}
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w",
                           str(wheels), str(src)], env=env, capture_output=True, text=True, timeout=1200)
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
    """The wheel's Version is the package's ``__version__``; it requires torch and numpy."""
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(_common_contents(names)).decode()
    assert f"\nVersion: {version}\n" in meta
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    assert any(r.startswith("torch") for r in requires) and any(r.startswith("numpy") for r in requires), requires


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
