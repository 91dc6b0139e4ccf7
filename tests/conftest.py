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


def _backend_params(include_reference: bool) -> list:
    """Every compiled/Triton backend meant for the test device, as pytest params.

    One that did not load stays in the list as a skipped case carrying the reason, so
    that a GPU run whose cuda backend failed to build says so in ``-rs`` instead of
    silently testing only triton. With none loaded, the reference stands in.
    """
    meant = ("cuda", "triton") if DEVICE == "cuda" else ("triton", "cpu")
    params = [
        pytest.param(b, marks=() if _backends.available(b, DEVICE)
                     else pytest.mark.skip(reason=f"{b}: {_backends.why_not(b, DEVICE)}"))
        for b in meant
    ]
    if include_reference or not backends_here(include_reference=False):
        params.append("reference")
    return params


@pytest.fixture(params=_backend_params(include_reference=True))
def backend(request):
    """Every backend meant for this device, reference included (unloaded ones skip, saying why)."""
    return request.param


@pytest.fixture(params=_backend_params(include_reference=False))
def fast_backend(request):
    """Every compiled/Triton backend meant for this device (unloaded ones skip; reference when none loaded)."""
    return request.param


@pytest.fixture
def device():
    return DEVICE
