"""Philox4x32-10 against Random123's published known-answer vectors, on every implementation.

The C++ header (host and, with a GPU, device), the PyTorch reference and
Triton's ``tl.philox`` must all give the published words; then the three agree
on mdsample's counter layout too.
"""
import pytest
import torch

from mdsample import _backends
from mdsample.reference.philox import draw_words, philox4x32_10, uniform52

# Random123 kat_vectors, "philox4x32 10": counter words, key words, expected output.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


def _as_u32_tensor(rows, device="cpu"):
    return torch.tensor([[v - (1 << 32) if v >= 1 << 31 else v for v in r] for r in rows], dtype=torch.int32, device=device)


def _words(t):
    return [[int(v) & 0xFFFFFFFF for v in row] for row in t.tolist()]


@pytest.mark.parametrize("ctr,key,want", KAT)
def test_reference_matches_random123(ctr, key, want):
    assert tuple(int(w) for w in philox4x32_10(*ctr, *key)) == want


def test_compiled_host_matches_random123():
    C = _backends.compiled_module()
    if C is None:
        pytest.skip("mdsample._C not built")
    counters = _as_u32_tensor([k[0] for k in KAT])
    keys = _as_u32_tensor([k[1] for k in KAT])
    out = torch.empty((len(KAT), 4), dtype=torch.int32)
    C.philox_host(out.data_ptr(), len(KAT), counters.data_ptr(), keys.data_ptr())
    assert _words(out) == [list(k[2]) for k in KAT]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_device_matches_random123():
    C = _backends.compiled_module()
    if C is None or not C.has_cuda():
        pytest.skip("mdsample._C built without CUDA")
    counters = _as_u32_tensor([k[0] for k in KAT], "cuda")
    keys = _as_u32_tensor([k[1] for k in KAT], "cuda")
    out = torch.empty((len(KAT), 4), dtype=torch.int32, device="cuda")
    C.philox_cuda(out.data_ptr(), len(KAT), counters.data_ptr(), keys.data_ptr(), torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    assert _words(out.cpu()) == [list(k[2]) for k in KAT]


def test_triton_philox_matches_random123():
    if not (_backends.available("triton", "cpu") or _backends.available("triton", "cuda")):
        pytest.skip("triton not available here")
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(c_ptr, k_ptr, out_ptr):
        i = tl.program_id(0)
        c0 = tl.load(c_ptr + 4 * i).to(tl.uint32, bitcast=True)
        c1 = tl.load(c_ptr + 4 * i + 1).to(tl.uint32, bitcast=True)
        c2 = tl.load(c_ptr + 4 * i + 2).to(tl.uint32, bitcast=True)
        c3 = tl.load(c_ptr + 4 * i + 3).to(tl.uint32, bitcast=True)
        k0 = tl.load(k_ptr + 2 * i).to(tl.uint32, bitcast=True).to(tl.uint64)
        k1 = tl.load(k_ptr + 2 * i + 1).to(tl.uint32, bitcast=True).to(tl.uint64)
        w0, w1, w2, w3 = tl.philox(k0 | (k1 << 32), c0, c1, c2, c3)
        tl.store(out_ptr + 4 * i, w0.to(tl.int32, bitcast=True))
        tl.store(out_ptr + 4 * i + 1, w1.to(tl.int32, bitcast=True))
        tl.store(out_ptr + 4 * i + 2, w2.to(tl.int32, bitcast=True))
        tl.store(out_ptr + 4 * i + 3, w3.to(tl.int32, bitcast=True))

    device = "cuda" if torch.cuda.is_available() else "cpu"
    counters = _as_u32_tensor([k[0] for k in KAT], device)
    keys = _as_u32_tensor([k[1] for k in KAT], device)
    out = torch.empty((len(KAT), 4), dtype=torch.int32, device=device)
    kernel[(len(KAT),)](counters, keys, out)
    assert _words(out.cpu()) == [list(k[2]) for k in KAT]


def test_counter_layout_separates_every_field():
    base = [int(w) for w in draw_words(7, 3, 5, 0)]
    changed = [
        draw_words(8, 3, 5, 0),                # seed
        draw_words(7, 4, 5, 0),                # offset
        draw_words(7, 3 + (1 << 32), 5, 0),    # offset high word
        draw_words(7, 3, 6, 0),                # position
        draw_words(7, 3, 5 + (1 << 32), 0),    # position high bits
        draw_words(7, 3, 5, 1),                # domain
        draw_words(7 + (1 << 32), 3, 5, 0),    # seed high word
    ]
    for words in changed:
        assert [int(w) for w in words] != base


def test_uniform52_is_centred_and_open():
    lo = uniform52(torch.tensor(0), torch.tensor(0))
    hi = uniform52(torch.tensor(0xFFFFFFFF), torch.tensor(0xFFFFFFFF))
    assert float(lo) == 0.5 * 2.0**-52
    assert float(hi) == 1.0 - 0.5 * 2.0**-52
    assert 0.0 < float(lo) and float(hi) < 1.0
