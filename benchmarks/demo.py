"""`make demo`: what mdsample is, in one minute on whatever hardware is here.

1. `python -m mdsample info`: versions and backends;
2. MDLM ancestral sampling, LLaDA-style semi-AR generation (with and without the
   Fast-dLLM dual cache) and Dream's whole-canvas sampler from a small randomly
   initialised transformer (the text is noise; the point is the API);
3. the sampling microbenchmark table (benchmarks/bench_sampling.py) at the
   CPU goal shape, or a GPU shape when a GPU is present.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mdsample  # noqa: E402
from mdsample.__main__ import info  # noqa: E402
from mdsample.models import Transformer, preset  # noqa: E402
from benchmarks import bench_sampling  # noqa: E402


def denoising_strip(x: torch.Tensor, mask_id: int, block: int) -> str:
    """One canvas row (int64 ``[n]``) as text: '.' for a mask, '#' for a token, '|' between blocks."""
    cells = "".join("." if t == mask_id else "#" for t in x.tolist())
    return "|".join(cells[i:i + block] for i in range(0, len(cells), block))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None, help="microbenchmark rows (default: 256 on CPU, 4096 on GPU)")
    parser.add_argument("--vocab", type=int, default=None, help="microbenchmark vocabulary (default: 50257 / 126464)")
    args = parser.parse_args(argv)
    print(info(), "\n")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = preset("tiny", vocab_size=512, mask_id=511, max_seq_len=256)
    model = Transformer(cfg, device=device).eval()

    t0 = time.perf_counter()
    with torch.no_grad():
        x = mdsample.sample_mdlm(model, batch_size=4, length=64, mask_id=cfg.mask_id, steps=64, seed=0)
    print(f"sample_mdlm: 4 x 64 tokens, 64 steps in {time.perf_counter() - t0:.2f} s on {device}")
    print("  first sequence:", x[0, :24].tolist(), "...")

    prompt = torch.randint(0, cfg.mask_id, (2, 8), generator=torch.Generator().manual_seed(0)).to(device)
    canvases = []
    t0 = time.perf_counter()
    with torch.no_grad():
        y = mdsample.generate(model, prompt, steps=32, gen_length=32, block_length=8, mask_id=cfg.mask_id,
                              temperature=0.0, threshold=0.9, on_step=lambda step, x: canvases.append(x[0, 8:]))
    print(f"generate (LLaDA blocks + Fast-dLLM threshold): 2 x 32 new tokens in {time.perf_counter() - t0:.2f} s")
    print("  first answer:", y[0, 8:32].tolist(), "...")
    print(f"  its denoising, from on_step ({len(canvases)} steps; '.' still masked, '#' revealed, '|' block edge):")
    for step, x in enumerate(canvases, 1):
        print(f"  {step:4d} {denoising_strip(x, cfg.mask_id, 8)}")

    t0 = time.perf_counter()
    with torch.no_grad():
        z = mdsample.generate(model, prompt, steps=32, gen_length=32, block_length=8, mask_id=cfg.mask_id,
                              temperature=0.0, cache="dual")
    print(f"generate, cache='dual' (Fast-dLLM's KV cache, fixed-shape sync-free steps): "
          f"{time.perf_counter() - t0:.2f} s")
    print("  first answer:", z[0, 8:32].tolist(), "...")

    t0 = time.perf_counter()
    with torch.no_grad():
        w = mdsample.sample_dream(model, prompt, max_new_tokens=32, steps=32, alg="entropy", temperature=0.2,
                                  top_p=0.95, mask_id=cfg.mask_id, seed=0)
    print(f"sample_dream (Dream's entropy order, T 0.2, top-p 0.95): {time.perf_counter() - t0:.2f} s")
    print("  first answer:", w[0, 8:32].tolist(), "...\n")

    rows, vocab = (256, 50257) if device.type == "cpu" else (4096, 126464)
    rows, vocab = args.rows or rows, args.vocab or vocab
    print(f"sample_categorical microbenchmark, bf16 [{rows}, {vocab}] on {device.type.upper()} "
          f"(median of 7; torch.compile baselines: `make bench`):")
    results = bench_sampling.bench_sampling(rows, vocab, torch.bfloat16, device, compiled=(), runs=7)
    bench_sampling.print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
