"""DLPack inputs (DESIGN.md §2): NumPy arrays on the CPU, CuPy arrays on the GPU.

Any tensor argument of sample_categorical / unmask_step may be an object with
``__dlpack__``; it is read in place and the results are torch tensors on its device.
The tokens must be those of the same call with torch tensors, and the arrays must
come back unchanged.
"""
import numpy as np
import pytest
import torch

import mdsample
from mdsample import _backends

B, L, V = 3, 5, 2100  # two chunks of the two-level draw
MASK = 11


def _host_arrays(dtype):
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((B, L, V)) * 2).astype(dtype)
    x = rng.integers(0, V, (B, L), dtype=np.int64)
    x[:, ::2] = MASK
    return logits, x


def _keys(xp):
    """Per-row arguments as arrays of the module ``xp`` (numpy or cupy)."""
    return dict(
        temperature=xp.full((B, 1), 0.8, dtype=xp.float32),
        positions=xp.arange(B * L, dtype=xp.int64).reshape(B, L) + 40,
        offset=xp.asarray([[2], [3], [4]], dtype=xp.int64),
        seed=9,
    )


def _as_torch(kw, device):
    return {k: torch.from_dlpack(v).to(device) if hasattr(v, "__dlpack__") else v for k, v in kw.items()}


def _assert_unchanged(before, after_arrays):
    for b, a in zip(before, after_arrays):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["contiguous", "strided-rows"])
def test_numpy_arrays_match_torch(backend, dtype, layout):
    if not _backends.available(backend, "cpu"):
        pytest.skip(_backends.why_not(backend, "cpu"))
    logits, x = _host_arrays(dtype)
    if layout == "strided-rows":  # every other row of a wider array, read in place
        wide = np.repeat(logits, 2, axis=1)
        logits, x = wide[:, ::2], np.repeat(x, 2, axis=1)[:, ::2]
        assert not logits.flags.c_contiguous
    kw = _keys(np)
    reveal = np.full((B, 1), 0.6)
    inputs = [logits, x, reveal, *(v for v in kw.values() if isinstance(v, np.ndarray))]
    before = [a.copy() for a in inputs]
    logits.flags.writeable = False  # a read-only array is accepted: nothing writes to it

    tokens = mdsample.sample_categorical(logits, exclude=MASK, backend=backend, **kw)
    stats = mdsample.sample_categorical(logits, return_stats=True, backend=backend, **kw)
    step, revealed = mdsample.unmask_step(logits, x, mask_id=MASK, reveal_prob=reveal, return_revealed=True,
                                          backend=backend, **kw)

    t_logits, t_x, t_reveal = (torch.from_dlpack(a.copy()) for a in (logits, x, reveal))
    t_kw = _as_torch(kw, "cpu")
    assert isinstance(tokens, torch.Tensor) and tokens.dtype == torch.int64 and tokens.shape == (B, L)
    assert torch.equal(tokens, mdsample.sample_categorical(t_logits, exclude=MASK, backend=backend, **t_kw))
    want = mdsample.sample_categorical(t_logits, return_stats=True, backend=backend, **t_kw)
    for got_f, want_f in zip(stats, want):
        torch.testing.assert_close(got_f, want_f, rtol=0, atol=0)
    want_step, want_revealed = mdsample.unmask_step(t_logits, t_x, mask_id=MASK, reveal_prob=t_reveal,
                                                    return_revealed=True, backend=backend, **t_kw)
    assert torch.equal(step, want_step) and torch.equal(revealed, want_revealed)
    assert bool(revealed.any()), "the comparison must include revealed positions"
    _assert_unchanged(before, inputs)


def test_bad_dlpack_input_names_the_argument():
    logits, _ = _host_arrays(np.float32)
    with pytest.raises(TypeError, match="logits must be float16"):
        mdsample.sample_categorical(logits.astype(np.int32))
    with pytest.raises(TypeError, match="temperature must be a float tensor"):
        mdsample.sample_categorical(logits, temperature=np.ones((B, L), dtype=np.int64))
    with pytest.raises(ValueError, match="positions must broadcast"):
        mdsample.sample_categorical(logits, positions=np.arange(7))
    # torch's from_dlpack aborts the process on negative strides: refused before it is called
    with pytest.raises(ValueError, match="logits has negative strides"):
        mdsample.sample_categorical(logits[::-1])
    with pytest.raises(ValueError, match="temperature has negative strides"):
        mdsample.sample_categorical(logits, temperature=np.ones(logits.shape[:-1], dtype=np.float32)[:, ::-1])
    # DLPack's BufferError (torch's "native byte order" text) named no argument; a sparse per-row tensor failed
    # as "must broadcast to (4,); got shape (4,)"
    with pytest.raises(TypeError, match=r"logits has dtype >f4, which DLPack cannot hand to torch"):
        mdsample.sample_categorical(logits.astype(">f4"))
    with pytest.raises(TypeError, match="logits has dtype object"):
        mdsample.sample_categorical(logits.astype(object))
    with pytest.raises(TypeError, match="temperature must be a dense"):
        mdsample.sample_categorical(torch.zeros(4, 3), temperature=torch.ones(4).to_sparse())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CuPy arrays need a GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_cupy_arrays_match_torch(backend, dtype):
    cp = pytest.importorskip("cupy")
    if not _backends.available(backend, "cuda"):
        pytest.skip(f"{backend}: {_backends.why_not(backend, 'cuda')}")
    host_logits, host_x = _host_arrays(np.float32)
    logits, x = cp.asarray(host_logits.astype(dtype)), cp.asarray(host_x)
    reveal = cp.full((B, 1), 0.6)
    kw = _keys(cp)

    tokens = mdsample.sample_categorical(logits, exclude=MASK, backend=backend, **kw)
    step = mdsample.unmask_step(logits, x, mask_id=MASK, reveal_prob=reveal, backend=backend, **kw)

    t_logits = torch.from_numpy(host_logits.astype(dtype)).cuda()
    t_x, t_reveal = torch.from_numpy(host_x).cuda(), torch.full((B, 1), 0.6, dtype=torch.float64, device="cuda")
    t_kw = _as_torch(kw, "cuda")
    assert isinstance(tokens, torch.Tensor) and tokens.is_cuda and tokens.dtype == torch.int64
    assert torch.equal(tokens, mdsample.sample_categorical(t_logits, exclude=MASK, backend=backend, **t_kw))
    assert torch.equal(step, mdsample.unmask_step(t_logits, t_x, mask_id=MASK, reveal_prob=t_reveal,
                                                  backend=backend, **t_kw))
    np.testing.assert_array_equal(cp.asnumpy(logits), host_logits.astype(dtype))
    np.testing.assert_array_equal(cp.asnumpy(x), host_x)


def test_read_only_numpy_array_where_dlpack_refuses_it(monkeypatch):
    """torch < 2.5 speaks unversioned DLPack, through which NumPy refuses to export a read-only array
    (BufferError). Stood in for here: the array then comes in through from_numpy, still without a copy,
    and samples as its torch twin does; a non-NumPy array's BufferError is not swallowed."""
    from mdsample.ops import _validate

    logits, _ = _host_arrays(np.float32)
    logits.flags.writeable = False
    real = torch.from_dlpack

    def old_torch(value):
        if isinstance(value, np.ndarray) and not value.flags.writeable:
            raise BufferError("Cannot export readonly array since signalling readonly is unsupported by DLPack")
        return real(value)

    monkeypatch.setattr(torch, "from_dlpack", old_torch)
    t = _validate.as_tensor("logits", logits)
    assert t.data_ptr() == logits.ctypes.data and torch.equal(t, torch.tensor(logits))
    kw = dict(exclude=MASK, seed=4, backend="reference")
    assert torch.equal(mdsample.sample_categorical(logits, **kw), mdsample.sample_categorical(torch.tensor(logits), **kw))

    class Foreign:
        def __dlpack__(self, *a, **k):
            raise BufferError("not exportable")

    monkeypatch.setattr(torch, "from_dlpack", lambda v: v.__dlpack__())
    with pytest.raises(BufferError):
        _validate.as_tensor("logits", Foreign())
