"""Shared fixtures: which backends the tests run on this machine.

Without a GPU, Triton kernels run under its interpreter (TRITON_INTERPRET=1),
which must be set before triton is imported, hence here at collection time.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from mdsample import _backends  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def backends_here(include_reference: bool = True) -> list[str]:
    """Backends that run on this machine's test device, fastest first."""
    names = [b for b in ("cuda", "triton", "cpu") if _backends.available(b, DEVICE)]
    return names + (["reference"] if include_reference else [])


@pytest.fixture(params=backends_here())
def backend(request):
    """Every backend available here, reference included."""
    return request.param


@pytest.fixture(params=backends_here(include_reference=False) or ["reference"])
def fast_backend(request):
    """Every compiled/Triton backend available here (reference when none is)."""
    return request.param


@pytest.fixture
def device():
    return DEVICE
