"""End-to-end MDLM sampling: ``mdsample.sample_mdlm`` vs the reference MDLM loop.

The reference loop is MDLM's ``_sample`` with the ``ddpm_cache`` predictor as published:
full ``[B, L, V]`` logits with SUBS, a float64 Gumbel race over the whole ``[B, L, V]``
(Duo / BD3-LM / scaling-dllms noise dtype), the whole-batch cache (reuse the output only
when no sequence changed), and a final argmax forward. Both run the same random-init
LLaMA-style model at the same steps.

Defaults: on CUDA the issue's setting (MDLM-small preset, L=1024, B=16, 1000 steps, bf16);
on CPU the ``tiny`` preset (a smoke test: results are labelled CPU and mean nothing for a GPU).

Usage: ``python benchmarks/e2e_mdlm.py [--preset P] [--batch B] [--length L] [--steps S]``;
or ``pytest benchmarks/e2e_mdlm.py --benchmark-only`` (pytest-benchmark).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mdsample  # noqa: E402

from benchmarks._e2e import (  # noqa: E402
    Counting, build_model, describe_speed, e2e_parser, measure, parse_with_defaults, pick_device, reference_mdlm,
    run_and_report)

GPU_DEFAULTS = dict(preset="mdlm_small", batch=16, length=1024, steps=1000, dtype="bfloat16")
CPU_DEFAULTS = dict(preset="tiny", batch=2, length=64, steps=32, dtype="float32")


def build(preset, dtype, device):
    return Counting(build_model(preset, dtype, device))


def run(args):
    """Yields the result rows: mdsample, then (unless ``--skip-reference``) the reference loop."""
    device = pick_device(args.device)
    model = build(args.preset, args.dtype, device)
    mask_id = model.config.mask_id
    tokens = args.batch * args.length
    common = dict(preset=args.preset, batch=args.batch, length=args.length, steps=args.steps, dtype=args.dtype)

    def ours():
        return mdsample.sample_mdlm(model, batch_size=args.batch, length=args.length, mask_id=mask_id,
                                    steps=args.steps, seed=0)

    mine = {"method": "mdsample.sample_mdlm", **common,
            **measure(ours, device, tokens=tokens, counter=model, repeats=args.repeats)}
    yield mine
    if not args.skip_reference:
        ref = lambda: reference_mdlm(model, args.batch, args.length, mask_id, args.steps,  # noqa: E731
                                     device=device, seed=0)
        row = {"method": "reference MDLM loop (fp64 Gumbel [B,L,V], whole-batch cache)", **common,
               **measure(ref, device, tokens=tokens, counter=model, repeats=args.repeats)}
        if mine["seconds"]:
            row["mdsample_speedup"] = row["seconds"] / mine["seconds"]
        yield row


def parse(argv=None):
    ap = e2e_parser(__doc__.split("\n")[0], batch=None, length=None, steps=None)
    return parse_with_defaults(ap, argv, GPU_DEFAULTS, CPU_DEFAULTS)


def main(argv=None) -> dict:
    return run_and_report(parse(argv), run, "e2e-mdlm", describe_speed)


# ---------------------------------------------------------------- pytest-benchmark
def _bench_args():
    return parse(["--no-write"])


def test_e2e_mdlm_mdsample(benchmark):
    args = _bench_args()
    model = build(args.preset, args.dtype, pick_device(args.device))
    benchmark.pedantic(lambda: mdsample.sample_mdlm(model, batch_size=args.batch, length=args.length,
                                                    mask_id=model.config.mask_id, steps=args.steps),
                       rounds=1, iterations=1, warmup_rounds=1)


def test_e2e_mdlm_reference(benchmark):
    args = _bench_args()
    dev = pick_device(args.device)
    model = build(args.preset, args.dtype, dev)
    benchmark.pedantic(lambda: reference_mdlm(model, args.batch, args.length, model.config.mask_id, args.steps,
                                              device=dev, seed=0),
                       rounds=1, iterations=1, warmup_rounds=1)


if __name__ == "__main__":
    main()
