"""The samplers' Philox uniforms (mdsample/ops/uniforms.py): one kernel, the reference's bits.

Every fast backend of this device against the reference's int64 tensor Philox, bitwise,
over seeds and offsets given as ints (signed and unsigned 64-bit) and as one-element
device tensors, positions up to 2^48 - 1 in any layout, and every domain; the call with
tensor keys makes no host sync; the fast path is one op where the reference is hundreds.
"""
import pytest
import torch

from mdsample.ops.uniforms import philox_uniforms
from mdsample.reference.philox import DOMAIN_FORWARD_MASK, DOMAIN_REVEAL, DOMAIN_TIMESTEP, DOMAIN_TOKEN
import requires
from sync_guard import no_host_sync  # tests/ is on sys.path (rootdir conftest)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _positions():
    g = torch.Generator().manual_seed(0)
    pos = torch.randint(0, 2**48, (37, 29), generator=g)
    pos[0, :4] = torch.tensor([0, 1, 2**32 - 1, 2**48 - 1])
    return pos.to(DEVICE)


KEYS = [(0, 0), (123, 7), (-1, 2**40 + 3), (2**64 - 5, 2**63 - 1), (2**63, -(2**63))]


@pytest.mark.parametrize("seed,offset", KEYS)
@pytest.mark.parametrize("domain", [DOMAIN_TOKEN, DOMAIN_REVEAL, DOMAIN_TIMESTEP, DOMAIN_FORWARD_MASK])
def test_fast_backends_give_the_reference_bits(fast_backend, seed, offset, domain):
    pos = _positions()
    want = philox_uniforms(pos, seed=seed, offset=offset, domain=domain, backend="reference")
    for keys in (dict(seed=seed, offset=offset),
                 dict(seed=torch.tensor(seed - 2**64 if seed >= 2**63 else seed, device=DEVICE),
                      offset=torch.tensor([offset], device=DEVICE))):
        got = philox_uniforms(pos, domain=domain, backend=fast_backend, **keys)
        for a, b in zip(got, want):
            assert a.dtype == torch.float64 and a.shape == pos.shape
            assert torch.equal(a, b)
        assert ((got[0] > 0) & (got[0] < 1)).all() and not torch.equal(got[0], got[1])


def test_layouts_and_empty(fast_backend):
    pos = _positions()
    for view in (pos.t(), pos[:, ::3], pos[5], pos[:0]):
        got = philox_uniforms(view, seed=9, offset=4, domain=DOMAIN_REVEAL, backend=fast_backend)
        want = philox_uniforms(view.contiguous(), seed=9, offset=4, domain=DOMAIN_REVEAL, backend="reference")
        assert got[0].shape == view.shape and torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_tensor_keys_make_no_host_sync(fast_backend):
    pos = _positions()
    seed, offset = torch.tensor(5, device=DEVICE), torch.tensor(11, device=DEVICE)
    with no_host_sync():
        got = philox_uniforms(pos, seed=seed, offset=offset, domain=DOMAIN_REVEAL, backend=fast_backend)
    assert torch.equal(got[0], philox_uniforms(pos, seed=5, offset=11, domain=DOMAIN_REVEAL, backend="reference")[0])


@requires.cpu_backend
def test_one_op_instead_of_hundreds():
    from torch.profiler import profile

    pos = _positions().cpu()

    def aten_ops(backend):
        with profile() as prof:
            philox_uniforms(pos, seed=3, offset=1, domain=DOMAIN_REVEAL, backend=backend)
        return sum(e.name.startswith("aten::") for e in prof.events())

    assert aten_ops("reference") > 300
    assert aten_ops("cpu") <= 12  # empty and views (reshape, select, view): nothing per Philox round


def test_bad_arguments():
    pos = _positions()
    with pytest.raises(TypeError, match="positions"):
        philox_uniforms(pos.float(), seed=0, offset=0, domain=0)
    with pytest.raises(TypeError, match="seed"):
        philox_uniforms(pos, seed=1.5, offset=0, domain=0)
    with pytest.raises(ValueError, match="offset"):
        philox_uniforms(pos, seed=0, offset=torch.tensor([1, 2], device=DEVICE), domain=0)
    with pytest.raises(ValueError, match=r"seed must be an int in \[-9223372036854775808, 18446744073709551615\]"):
        philox_uniforms(pos, seed=2**64, offset=0, domain=0)
