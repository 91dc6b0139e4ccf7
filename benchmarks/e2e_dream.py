"""End-to-end Dream sampling: ``mdsample.sample_dream`` and Fast-dLLM-style cached blocks vs Dream's loop.

The reference is Dream's ``diffusion_generate`` as published (``benchmarks/_e2e.py::reference_dream``:
a full forward of the whole batch every step, logits shifted by one, the masked rows sorted for
top-p, float32 softmax and ``Categorical``). mdsample runs the same random-init model, wrapped
next-token-aligned (``mdsample.models.shifted``), as

- ``sample_dream``: Dream's algorithm (entropy order, Dream's demo T 0.2 / top-p 0.95);
- ``generate(..., cache="dual", threshold=0.9)``: Fast-dLLM's block decoding on Dream with the
  dual cache (a different schedule: tokens per step set by the threshold), with and without
  CUDA graphs (``StepGraphs``: the warm-up call captures, the timed call replays).

Defaults: on CUDA the Dream-7B shape (``dream_7b`` preset: Qwen2.5-7B, bf16), batch 1, prompt 64,
256 new tokens, 256 steps; on CPU the ``tiny`` preset (a smoke test: CPU numbers mean nothing for a GPU).

Usage: ``python benchmarks/e2e_dream.py [--preset P] [--batch B] [--prompt P] [--gen G] [--steps S]``.
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mdsample  # noqa: E402
from mdsample.models import shifted  # noqa: E402

from benchmarks._e2e import (  # noqa: E402
    Counting, build_model, describe_speed, e2e_parser, measure, parse_with_defaults, pick_device, reference_dream,
    run_and_report)

GPU_DEFAULTS = dict(preset="dream_7b", batch=1, prompt=64, gen=256, steps=256, dtype="bfloat16")
CPU_DEFAULTS = dict(preset="tiny", batch=2, prompt=8, gen=32, steps=16, dtype="float32")
SETTINGS = dict(temperature=0.2, top_p=0.95)  # Dream's demo


def run(args):
    """Yields the result rows: mdsample.sample_dream, the cached block modes, then the reference loop."""
    device = pick_device(args.device)
    model = Counting(build_model(args.preset, args.dtype, device))
    aligned = shifted(model)
    mask_id = model.config.mask_id
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, mask_id, (args.batch, args.prompt), generator=g).to(device)
    tokens = args.batch * args.gen
    common = dict(preset=args.preset, batch=args.batch, prompt=args.prompt, gen=args.gen, dtype=args.dtype)

    def ours():
        return mdsample.sample_dream(aligned, prompt, max_new_tokens=args.gen, steps=args.steps, alg="entropy",
                                     mask_id=mask_id, **SETTINGS)

    mine = {"method": "mdsample.sample_dream (entropy)", "steps": args.steps, **common,
            **measure(ours, device, tokens=tokens, counter=model, repeats=args.repeats)}
    yield mine
    block = min(32, args.gen)
    eager_counts = None
    for graphs in (False, True):
        keep = mdsample.StepGraphs() if graphs else False
        fn = lambda k=keep: mdsample.generate(  # noqa: E731
            aligned, prompt, steps=args.gen // block * 4, gen_length=args.gen, block_length=block, mask_id=mask_id,
            remasking="entropy", threshold=0.9, cache="dual", cuda_graph=k, **SETTINGS)
        row = measure(fn, device, tokens=tokens, counter=model, repeats=args.repeats)
        if graphs and device.type == "cuda":  # a replay runs no Python: the counter misses it
            row["forwards"], row["positions_fed"] = eager_counts
        eager_counts = row["forwards"], row["positions_fed"]
        yield {"method": "mdsample.generate cache=dual threshold=0.9" + (" + CUDA graphs" if graphs else ""),
               "block": block, **common, **row}
    if not args.skip_reference:
        ref = lambda: reference_dream(model, prompt, args.gen, args.steps, mask_id, alg="entropy",  # noqa: E731
                                      **SETTINGS)
        row = {"method": "reference Dream loop (entropy)", "steps": args.steps, **common,
               **measure(ref, device, tokens=tokens, counter=model, repeats=args.repeats)}
        if mine["seconds"]:
            row["mdsample_speedup"] = row["seconds"] / mine["seconds"]
        yield row


def parse(argv=None):
    ap = e2e_parser(__doc__.split("\n")[0], batch=None, prompt=None, gen=None, steps=None)
    return parse_with_defaults(ap, argv, GPU_DEFAULTS, CPU_DEFAULTS)


def main(argv=None) -> dict:
    return run_and_report(parse(argv), run, "e2e-dream", describe_speed)


if __name__ == "__main__":
    main()
