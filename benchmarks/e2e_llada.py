"""End-to-end LLaDA-style semi-AR generation against KV-cache autoregression, one run.

For one bidirectional model shape and fixed tokens-per-step k (steps = gen_length / k):

- ``mdsample.generate`` with no cache / Fast-dLLM prefix cache / dual cache;
- the reference LLaDA loop (``generate`` as published: a full forward of the whole batch
  every step, float64 Gumbel over [B, L, V], confidences over the whole canvas);
- the AR twin (same shape, ``attention="causal"``) with mdsample's static KV cache;
- Hugging Face ``generate(use_cache=True)`` on an equally sized random ``LlamaConfig``.

Records tokens/s, forward passes and peak memory, writes JSON with
``benchmarks/_timing.write_results``, and plots tokens/s vs tokens-per-step (each cache mode
against the AR lines) as PNG when matplotlib is installed. Defaults: on CUDA the issue's
setting (LLaDA-8B shape in bf16, batch 1, prompt 64, gen 256 and 1024, block 32, k = 1, 2, 4,
8); on CPU the ``tiny`` preset as a smoke test (labelled CPU; no performance meaning).

Usage: ``python benchmarks/e2e_llada.py [--preset P] [--gen 256 1024] [--tps 1 2 4 8] [--no-hf]``;
or ``pytest benchmarks/e2e_llada.py --benchmark-only`` (pytest-benchmark).
"""
from __future__ import annotations

import argparse
import gc
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mdsample  # noqa: E402
from mdsample.models import Transformer, generate_ar, llama_config  # noqa: E402

from benchmarks._e2e import (  # noqa: E402
    Counting, build_model, measure, parse_with_defaults, pick_device, reference_llada, run_and_report)
from benchmarks._timing import RESULTS, device_name  # noqa: E402

GPU_DEFAULTS = dict(preset="llada_8b", batch=1, prompt=64, gen=[256, 1024], block=32, tps=[1, 2, 4, 8],
                    dtype="bfloat16")
CPU_DEFAULTS = dict(preset="tiny", batch=1, prompt=8, gen=[32], block=8, tps=[1, 2, 4], dtype="float32")
CACHES = (None, "prefix", "dual")


def _free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run(args) -> list[dict]:
    device = pick_device(args.device)
    dtype = getattr(torch, args.dtype)
    rows = []
    g = torch.Generator().manual_seed(0)

    model = Counting(build_model(args.preset, args.dtype, device))
    cfg = model.config
    prompt = torch.randint(0, cfg.mask_id, (args.batch, args.prompt), generator=g).to(device)
    for gen in args.gen:
        tokens = args.batch * gen
        base = dict(preset=args.preset, batch=args.batch, prompt=args.prompt, gen=gen, block=args.block,
                    dtype=args.dtype)
        for k in args.tps:
            steps = gen // k
            for cache in CACHES:
                fn = lambda c=cache, s=steps: mdsample.generate(  # noqa: E731
                    model, prompt, steps=s, gen_length=gen, block_length=args.block, mask_id=cfg.mask_id,
                    cache=c)
                rows.append({"method": f"mdsample cache={cache}", "tokens_per_step": k, **base,
                             **measure(fn, device, tokens=tokens, counter=model, repeats=args.repeats)})
            if not args.skip_reference:
                fn = lambda s=steps: reference_llada(model, prompt, s, gen, args.block, cfg.mask_id)  # noqa: E731
                rows.append({"method": "reference LLaDA loop", "tokens_per_step": k, **base,
                             **measure(fn, device, tokens=tokens, counter=model, repeats=args.repeats)})
    del model
    _free(device)

    ar = Transformer(Transformer.from_preset(args.preset, device="meta").config.replace(attention="causal"),
                     device=device, dtype=dtype, seed=0).eval()
    for gen in args.gen:
        base = dict(preset=args.preset, batch=args.batch, prompt=args.prompt, gen=gen, dtype=args.dtype)
        fn = lambda n=gen: generate_ar(ar, prompt, n)  # noqa: E731
        row = measure(fn, device, tokens=args.batch * gen, repeats=args.repeats)
        row["forwards"] = gen  # one prefill + gen - 1 single-token steps
        rows.append({"method": "AR twin (mdsample KV cache)", "tokens_per_step": 1, **base, **row})
    del ar
    _free(device)

    if not args.no_hf:
        from transformers import LlamaForCausalLM

        hcfg = llama_config(Transformer.from_preset(args.preset, device="meta").config)
        hf = LlamaForCausalLM(hcfg).to(device=device, dtype=dtype).eval()
        for gen in args.gen:
            base = dict(preset=args.preset, batch=args.batch, prompt=args.prompt, gen=gen, dtype=args.dtype)

            def fn(n=gen):
                with torch.no_grad():
                    return hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                                       min_new_tokens=n, do_sample=False, use_cache=True, pad_token_id=0)

            row = measure(fn, device, tokens=args.batch * gen, repeats=args.repeats)
            row["forwards"] = gen
            rows.append({"method": "HF generate(use_cache=True)", "tokens_per_step": 1, **base, **row})
        del hf
        _free(device)
    return rows


def plot(rows, device, path):
    """tokens/s vs tokens-per-step, one line per cache mode, AR as horizontal lines (per gen)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    gens = sorted({r["gen"] for r in rows})
    fig, axes = plt.subplots(1, len(gens), figsize=(5.5 * len(gens), 4), squeeze=False)
    for ax, gen in zip(axes[0], gens):
        sub = [r for r in rows if r["gen"] == gen]
        for method in sorted({r["method"] for r in sub}):
            pts = sorted((r["tokens_per_step"], r["tokens_per_s"]) for r in sub if r["method"] == method)
            if method.startswith(("AR", "HF")):
                ax.axhline(pts[0][1], linestyle="--", label=method, color="k" if method.startswith("AR") else "g")
            else:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens per step")
        ax.set_ylabel("tokens / s")
        ax.set_title(f"gen {gen} - {device_name(device)}" + (" (CPU smoke)" if device.type == "cpu" else ""),
                     fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default=None)
    ap.add_argument("--preset", default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--prompt", type=int, default=None)
    ap.add_argument("--gen", type=int, nargs="+", default=None)
    ap.add_argument("--block", type=int, default=None)
    ap.add_argument("--tps", type=int, nargs="+", default=None, help="tokens per step")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--no-hf", action="store_true", help="skip Hugging Face generate (and the transformers import)")
    ap.add_argument("--no-write", action="store_true", help="do not write JSON / PNG to benchmarks/results/")
    return parse_with_defaults(ap, argv, GPU_DEFAULTS, CPU_DEFAULTS)


def main(argv=None) -> dict:
    args = parse(argv)
    out = run_and_report(args, run, "e2e-llada",
                         lambda r: f"gen {r['gen']} k={r['tokens_per_step']} {r['method']}: "
                                   f"{r['tokens_per_s']:.1f} tok/s, {r['forwards']} forwards")
    if not args.no_write:
        out["plot"] = plot(out["rows"], pick_device(args.device), RESULTS / (os.path.basename(out["path"])[:-5] + ".png"))
    return out


# ---------------------------------------------------------------- pytest-benchmark
def _setup():
    args = parse(["--no-write"])
    dev = pick_device(args.device)
    model = build_model(args.preset, args.dtype, dev)
    prompt = torch.randint(0, model.config.mask_id, (args.batch, args.prompt), generator=torch.Generator().manual_seed(0))
    return args, model, prompt.to(dev)


def _bench_generate(benchmark, cache):
    args, model, prompt = _setup()
    gen, k = args.gen[0], args.tps[-1]
    benchmark.pedantic(lambda: mdsample.generate(model, prompt, steps=gen // k, gen_length=gen, block_length=args.block,
                                                 mask_id=model.config.mask_id, cache=cache),
                       rounds=1, iterations=1, warmup_rounds=1)


def test_e2e_llada_nocache(benchmark):
    _bench_generate(benchmark, None)


def test_e2e_llada_prefix(benchmark):
    _bench_generate(benchmark, "prefix")


def test_e2e_llada_dual(benchmark):
    _bench_generate(benchmark, "dual")


def test_e2e_llada_reference(benchmark):
    args, model, prompt = _setup()
    gen, k = args.gen[0], args.tps[-1]
    benchmark.pedantic(lambda: reference_llada(model, prompt, gen // k, gen, args.block, model.config.mask_id),
                       rounds=1, iterations=1, warmup_rounds=1)


if __name__ == "__main__":
    main()
