"""What some tests need beyond the core install, or a skip that says why it is missing.

- ``transformers()``: Hugging Face ``transformers``. Installed is not enough: a release newer than the
  installed torch supports imports, then refuses to build any model ("requires the PyTorch library but
  it was not found"); those tests then skip.
- ``cpu_backend``: a mark for tests that compare against (or time) the compiled cpu backend, which a
  pure-Python install (``MDSAMPLE_NO_EXT=1``) does not have.
"""
import pytest
import torch

from mdsample import _backends

cpu_backend = pytest.mark.skipif(not _backends.available("cpu", "cpu"), reason=_backends.why_not("cpu", "cpu"))


def transformers():
    """The ``transformers`` module, if it is installed and works with this torch; else skip."""
    mod = pytest.importorskip("transformers")
    if not mod.utils.is_torch_available():
        pytest.skip(f"transformers {mod.__version__} does not work with torch {torch.__version__}",
                    allow_module_level=True)
    return mod
