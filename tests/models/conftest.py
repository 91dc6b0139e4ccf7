"""Fixtures of the backbone tests: one CPU thread, and a guard against host syncs."""
import contextlib

import pytest
import torch


@pytest.fixture(autouse=True)
def one_cpu_thread():
    """The tiny preset's matmuls are microseconds long: intra-op threads only add fork/join
    overhead, which grows 20x when the CPU cores are shared with other jobs."""
    if torch.cuda.is_available():
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@pytest.fixture
def no_host_sync():
    """A context manager that fails on any device-to-host read of a tensor value: the calls
    (.item(), .nonzero(), bool(t), ...) a step loop must not make. Printing a tensor reads it too."""
    names = ("item", "tolist", "nonzero", "__bool__", "__int__", "__float__")

    @contextlib.contextmanager
    def guard():
        saved = {n: getattr(torch.Tensor, n) for n in names}

        def refuse(name):
            def f(*args, **kwargs):
                raise AssertionError(f"host sync: Tensor.{name} called in the step path")
            return f

        for n in names:
            setattr(torch.Tensor, n, refuse(n))
        try:
            yield
        finally:
            for n, f in saved.items():
                setattr(torch.Tensor, n, f)

    return guard
