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

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mdsample  # noqa: E402
from mdsample.models import Transformer  # noqa: E402

from benchmarks._e2e import Counting, measure, pick_device  # noqa: E402
from benchmarks._timing import device_name, write_results  # noqa: E402

GPU_DEFAULTS = dict(preset="mdlm_small", batch=16, length=1024, steps=1000, dtype="bfloat16")
CPU_DEFAULTS = dict(preset="tiny", batch=2, length=64, steps=32, dtype="float32")


@torch.no_grad()
def reference_mdlm(model, batch, length, mask_id, steps, device, eps=1e-5, seed=0):
    """MDLM ``_sample`` (ddpm_cache, loglinear m_t = t), fp64 Gumbel over [B, L, V], final argmax."""
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.full((batch, length), mask_id, dtype=torch.long, device=device)
    grid = torch.linspace(1, eps, steps + 1)
    dt = (1 - eps) / steps
    p_x0 = None

    def subs_probs(x):
        logits = model(x).double()
        logits[:, :, mask_id] += -1e6
        logp = logits.log_softmax(-1)
        unmasked = x != mask_id
        logp[unmasked] = -1e6
        logp[unmasked, x[unmasked]] = 0
        return logp.exp()

    for i in range(steps):
        t = float(grid[i])
        if p_x0 is None:
            p_x0 = subs_probs(x)
        q = p_x0 * dt
        q[:, :, mask_id] = t - dt
        u = torch.rand(q.shape, dtype=torch.float64, device=device, generator=gen)
        x_new = (q / (1e-10 - (u + 1e-10).log())).argmax(-1)
        x_new = torch.where(x != mask_id, x, x_new)
        if not torch.equal(x_new, x):
            p_x0 = None
        x = x_new
    return subs_probs(x).argmax(-1)


def build(preset, dtype, device):
    return Counting(Transformer.from_preset(preset, device=device, dtype=getattr(torch, dtype), seed=0).eval())


def run(args) -> list[dict]:
    device = pick_device(args.device)
    model = build(args.preset, args.dtype, device)
    mask_id = model.config.mask_id
    tokens = args.batch * args.length
    common = dict(preset=args.preset, batch=args.batch, length=args.length, steps=args.steps, dtype=args.dtype)
    rows = []

    def ours():
        return mdsample.sample_mdlm(model, batch_size=args.batch, length=args.length, mask_id=mask_id,
                                    steps=args.steps, seed=0)

    rows.append({"method": "mdsample.sample_mdlm", **common,
                 **measure(ours, device, tokens=tokens, counter=model, repeats=args.repeats)})
    if not args.skip_reference:
        ref = lambda: reference_mdlm(model, args.batch, args.length, mask_id, args.steps, device)  # noqa: E731
        rows.append({"method": "reference MDLM loop (fp64 Gumbel [B,L,V], whole-batch cache)", **common,
                     **measure(ref, device, tokens=tokens, counter=model, repeats=args.repeats)})
        if rows[1]["seconds"]:
            rows[0]["speedup_vs_reference"] = rows[1]["seconds"] / rows[0]["seconds"]
    return rows


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default=None)
    ap.add_argument("--preset", default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--length", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/*.json")
    args = ap.parse_args(argv)
    defaults = GPU_DEFAULTS if pick_device(args.device).type == "cuda" else CPU_DEFAULTS
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    device = pick_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny matmuls: OpenMP fork/join only adds overhead on shared cores
    rows = run(args)
    label = device_name(device)
    for r in rows:
        print(f"[{label}] {r['method']}: {r['tokens_per_s']:.1f} tok/s, {r['forwards']} forwards, "
              f"{r['seconds']:.3f} s" + (" (CPU smoke test)" if device.type == "cpu" else ""))
    out = {"rows": rows, "device": label, "cpu_smoke": device.type == "cpu"}
    if not args.no_write:
        out["path"] = str(write_results("e2e-mdlm", device, rows, {"cpu_smoke": device.type == "cpu"}))
    return out


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
    benchmark.pedantic(lambda: reference_mdlm(model, args.batch, args.length, model.config.mask_id, args.steps, dev),
                       rounds=1, iterations=1, warmup_rounds=1)


if __name__ == "__main__":
    main()
