"""Self-test of tests/sync_guard.py: each guarded call raises inside and works outside."""
import pytest
import torch

from sync_guard import no_host_sync  # tests/ is on sys.path (rootdir conftest)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# name -> call on a small int64 tensor `t` (and bool mask `m` of its shape)
GUARDED = {
    "Tensor.item": lambda t, m: t[0].item(),
    "Tensor.__bool__": lambda t, m: bool(t[0]),
    "if tensor": lambda t, m: 1 if t[0] else 0,
    "Tensor.__int__": lambda t, m: int(t[0]),
    "Tensor.__float__": lambda t, m: float(t[0]),
    "Tensor.__index__": lambda t, m: [10, 20, 30, 40][t[1]],
    "range(tensor)": lambda t, m: range(t[1]),
    "Tensor.tolist": lambda t, m: t.tolist(),
    "Tensor.numpy": lambda t, m: t.cpu().numpy() if t.is_cuda else t.numpy(),
    "Tensor.nonzero": lambda t, m: t.nonzero(),
    "torch.nonzero": lambda t, m: torch.nonzero(t),
    "Tensor.argwhere": lambda t, m: t.argwhere(),
    "torch.argwhere": lambda t, m: torch.argwhere(t),
    "Tensor.masked_select": lambda t, m: t.masked_select(m),
    "torch.masked_select": lambda t, m: torch.masked_select(t, m),
    "torch.unique": lambda t, m: torch.unique(t),
    "Tensor.unique": lambda t, m: t.unique(),
    "torch.unique_consecutive": lambda t, m: torch.unique_consecutive(t),
    "bool-mask __getitem__": lambda t, m: t[m],
    "bool-mask __getitem__ in tuple": lambda t, m: t[(m,)],
    "bool-mask __setitem__": lambda t, m: t.__setitem__(m, 0),
}


def _inputs():
    t = torch.tensor([0, 1, 2, 3], device=DEVICE)
    return t, t > 1


@pytest.mark.parametrize("name", list(GUARDED))
def test_guarded_call_raises_inside_and_works_outside(name):
    call = GUARDED[name]
    t, m = _inputs()
    call(t, m)  # works outside
    t, m = _inputs()  # before the guard: on CUDA, building a tensor from Python data is itself a blocking copy
    with no_host_sync():
        with pytest.raises(RuntimeError, match="host sync"):
            call(t, m)
    t, m = _inputs()
    call(t, m)  # and works again after the block


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_of_cuda_tensor_raises():
    t = torch.arange(4, device="cuda")
    with no_host_sync():
        with pytest.raises(RuntimeError, match="host sync"):
            t.cpu()
    assert t.cpu().tolist() == [0, 1, 2, 3]


def test_non_syncing_calls_still_work_inside():
    """Python-int/slice/int-tensor indexing, torch.where(c, a, b), arithmetic, and
    .cpu() of a CPU tensor are not syncs and must keep working. The index and value tensors are
    built before the guard: on CUDA a tensor from Python data (``torch.tensor(..., device=)``, or
    a Python number written into a tensor) is a blocking host-to-device copy, which the guard's
    sync-debug mode rightly refuses."""
    t, m = _inputs()
    idx30, idx1 = torch.tensor([3, 0], device=DEVICE), torch.tensor([1], device=DEVICE)
    seven, nine = torch.tensor(7, device=DEVICE), torch.tensor([9], device=DEVICE)
    with no_host_sync():
        a = t[1]
        b = t[1:3]
        c = t[idx30]
        d = torch.where(m, t, -t)
        t2 = t.clone()
        t2[0] = seven
        t2[idx1] = nine
        e = t.cpu() if not t.is_cuda else t
        f = t.view(2, 2)[:, 1]
    assert a.tolist() == 1 and b.tolist() == [1, 2] and c.tolist() == [3, 0]
    assert d.tolist() == [0, -1, 2, 3] and t2.tolist() == [7, 9, 2, 3]
    assert e.tolist() == [0, 1, 2, 3] and f.tolist() == [1, 3]


def test_reentrant_and_restored_after_exception():
    t, _ = _inputs()
    with pytest.raises(ValueError):
        with no_host_sync():
            with no_host_sync():
                pass
            with pytest.raises(RuntimeError, match="host sync"):
                t[0].item()  # still guarded after the inner block closed
            raise ValueError("body failed")
    assert t[0].item() == 0
    assert torch.Tensor.item is getattr(torch._C.TensorBase, "item")
