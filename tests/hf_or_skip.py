"""Hugging Face ``transformers`` for the tests that build its models, or a skip that says why not.

Installed is not enough: a release newer than the installed torch supports imports, then refuses to
build any model ("requires the PyTorch library but it was not found"); those tests then skip.
"""
import pytest
import torch


def transformers():
    """The ``transformers`` module, if it is installed and works with this torch; else skip."""
    mod = pytest.importorskip("transformers")
    if not mod.utils.is_torch_available():
        pytest.skip(f"transformers {mod.__version__} does not work with torch {torch.__version__}",
                    allow_module_level=True)
    return mod
