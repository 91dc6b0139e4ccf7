"""Fixtures of the sampler tests.

The samplers make many small op calls; on a 2-core machine shared with other jobs,
OpenMP's 2-thread parallel regions cost ~20 ms each under contention (versus ~50 us on
one thread), so these tests run torch single-threaded and restore the setting after.
"""
import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
