"""The built extension: no libtorch, static cudart, and device code for the archs asked for (DESIGN.md §8)."""
import os
import re
import struct
import subprocess
import sys

import pytest

from mdsample import _backends

C = _backends.compiled_module()
pytestmark = pytest.mark.skipif(C is None, reason="pure-Python install (MDSAMPLE_NO_EXT=1)")


def _needed_libraries(path):
    out = subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", out)


def _cubin_archs(path):
    """SM versions of the CUDA ELF images (e_machine 190) embedded in the module's fatbinary."""
    data = open(path, "rb").read()
    archs = set()
    for m in re.finditer(rb"\x7fELF", data):
        start = m.start()
        if start and struct.unpack_from("<H", data, start + 18)[0] == 190:
            archs.add((struct.unpack_from("<I", data, start + 48)[0] >> 8) & 0xFF)
    return archs


def test_no_torch_or_shared_cudart_dependency():
    try:
        needed = _needed_libraries(C.__file__)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("readelf not available")
    assert not [n for n in needed if re.match(r"lib(torch|c10|cudart)", n)], needed


def test_cuda_archs_compiled_in():
    if not C.has_cuda():
        pytest.skip("built without nvcc")
    wanted = [int(a) for a in os.environ.get("MDSAMPLE_CUDA_ARCHS", "80;90").split(";")]
    assert C.cuda_archs() == ",".join(map(str, wanted))
    assert set(wanted) <= _cubin_archs(C.__file__)


def test_cpu_kernels_report_their_instruction_set():
    assert C.cpu_isa() in ("avx512", "avx2", "base")


def test_sample_fields_are_the_struct_fields_in_order():
    """The positional launcher order (bindings.cpp's MDS_SAMPLE_FIELDS, exported as SAMPLE_FIELDS) is
    mdsample::SampleArgs' declaration order in csrc/sampling.h, and mdsample/ops/_rows.py's."""
    from mdsample.ops._rows import SAMPLE_FIELDS

    header = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc", "sampling.h")).read()
    body = re.search(r"struct SampleArgs \{(.*?)\};", header, re.S).group(1)
    declared = tuple(re.findall(r"(\w+);", re.sub(r"//[^\n]*", "", body)))
    assert declared == tuple(C.SAMPLE_FIELDS) == SAMPLE_FIELDS
    with pytest.raises(TypeError, match="positional arguments"):
        C.sample_cpu(*SAMPLE_FIELDS[:-1])
    # The GPU launcher takes the stream and the tensors' device index after the fields (the device is
    # not asked of the stream: cudaStreamGetDevice may invalidate a graph capture); not the stream alone.
    with pytest.raises(TypeError, match="SAMPLE_FIELDS, stream, device"):
        C.sample_cuda(*SAMPLE_FIELDS, 0)


def test_only_the_isa_builds_hold_avx_code():
    """Every exported function outside ``mdsample::avx2`` / ``mdsample::avx512`` is baseline x86-64 code:
    a shared inline or template function whose AVX copy the linker kept would crash (SIGILL) on a CPU
    without AVX as soon as any op called it. (Hidden functions have no name here; the link order in
    CMakeLists.txt keeps the baseline copies.)"""
    if struct.calcsize("P") != 8 or os.uname().machine not in ("x86_64", "AMD64"):
        pytest.skip("x86-64 only")
    path = C.__file__
    syms = subprocess.run(["nm", "-D", "-C", "-S", "--defined-only", path], capture_output=True, text=True,
                          check=True).stdout
    vex = re.compile(r"\tv[a-z0-9]+\s.*%[xyz]mm")
    checked, leaks = 0, []
    for line in syms.splitlines():
        parts = line.split(None, 3)
        if len(parts) < 4 or parts[2] not in "TW" or re.search(r"mdsample::avx(2|512)::", parts[3]):
            continue
        start, size = int(parts[0], 16), int(parts[1], 16)
        asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--start-address={start}",
                              f"--stop-address={start + size}", path], capture_output=True, text=True).stdout
        checked += 1
        if vex.search(asm):
            leaks.append(parts[3])
    assert checked > 10 and not leaks, leaks[:10]


def test_triton_older_than_the_tested_releases_is_refused():
    """Triton 3.0 - 3.3 fail the Triton tests (the gate's comment says how): such an install gets a reason that
    names its version and the fix, rather than kernels nobody has checked. Versions compare as numbers."""
    for ok in ("3.4.0", "3.6.0", "3.6.0+git1a2b3c", "3.10.1", "4.0"):
        assert _backends.triton_too_old(ok) is None, ok
    for old in ("3.3.1", "3.0.0", "2.3.1", "3.1+git12ab", "3.3rc1", "nightly"):
        why = _backends.triton_too_old(old)
        assert why is not None and old in why and "triton>=3.4" in why


def test_triton_interpreter_with_a_numpy_it_cannot_run_is_refused():
    """Triton 3.4 - 3.6's interpreter breaks on numpy 2.4+ (every kernel raised a TypeError from deep inside
    Triton): the backend is then off on CPU tensors with a reason that names both versions and the fixes."""
    for triton_version, numpy_version in (("3.6.0", "2.3.5"), ("3.6.0", "2.2.6"), ("3.7.0", "2.5.5"), ("3.9.0", "2.4.6")):
        assert _backends.interpreter_broken(triton_version, numpy_version) is None
    why = _backends.interpreter_broken("3.6.0", "2.4.6")
    assert why is not None and "3.6.0" in why and "2.4.6" in why and "numpy<2.4" in why and "triton>=3.7" in why


def test_a_broken_interpreter_turns_triton_off_on_cpu_and_info_says_why(monkeypatch):
    from mdsample.__main__ import info

    if "triton" in _backends._reasons:
        pytest.skip(_backends._reasons["triton"])
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(_backends, "_INTERPRETED", True)
    monkeypatch.setattr(_backends, "_interpreter_reason", "the interpreter cannot run here")
    assert not _backends.available("triton", "cpu") and _backends.available("triton", "cuda")
    assert _backends.why_not("triton", "cpu") == "the interpreter cannot run here"
    assert "not on cpu tensors: the interpreter cannot run here" in info()
    with pytest.raises(ValueError, match="the interpreter cannot run here"):
        _backends.resolve("triton", "cpu")


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_triton_interpret_changed_after_import_turns_triton_off_with_the_fix(monkeypatch, device_type):
    """Triton fixes interpreter-or-compiler as it loads; flipping TRITON_INTERPRET later made kernels that raised
    an InterpreterError from inside Triton. Now the backend is off on both devices, and the reason says when to
    set it."""
    if "triton" in _backends._reasons:
        pytest.skip(_backends._reasons["triton"])
    monkeypatch.setenv("TRITON_INTERPRET", "0" if _backends.triton_interpreted() else "1")
    assert not _backends.available("triton", device_type)
    with pytest.raises(ValueError, match=r"TRITON_INTERPRET was (un)?set when mdsample imported triton.*"
                                         r"before `import mdsample`"):
        _backends.resolve("triton", device_type)


def test_triton_interpret_set_after_import_is_refused_before_any_kernel_runs():
    if "triton" in _backends._reasons:
        pytest.skip(_backends._reasons["triton"])
    script = ("import os, torch, mdsample\n"
              "os.environ['TRITON_INTERPRET'] = '1'\n"
              "try:\n"
              "    mdsample.sample_categorical(torch.randn(2, 50), seed=1, backend='triton')\n"
              "except ValueError as exc:\n"
              "    print(exc)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "TRITON_INTERPRET was unset when mdsample imported triton and is set now" in out.stdout
