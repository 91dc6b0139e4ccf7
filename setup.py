"""Build of mdsample: setup.py drives CMake for mdsample._C (pybind11's cmake_example pattern).

Environment:
  MDSAMPLE_NO_EXT=1        pure-Python install (reference + Triton backends)
  MDSAMPLE_CUDA_ARCHS      CUDA archs, default "80;90" (PTX for the newest)
  MDSAMPLE_NO_CUDA=1       skip CUDA even when nvcc is present
  MDSAMPLE_BUILD_JOBS      parallel compile jobs (default: CPU count)
"""
import os
import subprocess
import sys
from pathlib import Path

import setuptools
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        config = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DMDSAMPLE_CUDA_ARCHS={os.environ.get('MDSAMPLE_CUDA_ARCHS', '80;90')}",
            f"-DMDSAMPLE_NO_CUDA={'ON' if os.environ.get('MDSAMPLE_NO_CUDA') == '1' else 'OFF'}",
        ]
        jobs = os.environ.get("MDSAMPLE_BUILD_JOBS", str(os.cpu_count() or 1))
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), *config], check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--parallel", jobs], check=True)


ext_modules = [] if os.environ.get("MDSAMPLE_NO_EXT") == "1" else [CMakeExtension("mdsample._C")]

CLASSIFIERS = [
    "Programming Language :: Python :: 3",
    "Programming Language :: C++",
    "Operating System :: POSIX :: Linux",
    "Environment :: GPU :: NVIDIA CUDA",
    "Topic :: Scientific/Engineering :: Artificial Intelligence",
]
# setuptools >= 77 refuses a license classifier beside the SPDX expression; older ones know only the text field.
if int(setuptools.__version__.split(".")[0]) >= 77:
    LICENSE = {"license_expression": "Apache-2.0"}
else:
    LICENSE = {"license": "Apache-2.0"}
    CLASSIFIERS.append("License :: OSI Approved :: Apache Software License")

setup(ext_modules=ext_modules, cmdclass={"build_ext": CMakeBuild}, classifiers=CLASSIFIERS, **LICENSE)
