"""The built extension: no libtorch, static cudart, and device code for the archs asked for (DESIGN.md §8)."""
import os
import re
import struct
import subprocess

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
