"""End-to-end LLaDA-style semi-AR generation against KV-cache autoregression, one run.

For one bidirectional model shape and fixed tokens-per-step k (steps = gen_length / k):

- ``mdsample.generate`` with no cache / Fast-dLLM prefix cache / dual cache, and the two cache
  modes with CUDA graphs kept across calls (``cuda_graph=mdsample.StepGraphs()``: the warm-up
  call captures, the timed ones replay; eager on CPU);
- the reference LLaDA loop (``generate`` as published: a full forward of the whole batch
  every step, float64 Gumbel over [B, L, V], confidences over the whole canvas);
- the AR twin (same shape, ``attention="causal"``) with mdsample's static KV cache;
- Hugging Face ``generate(use_cache=True)`` on an equally sized random ``LlamaConfig``.

On CUDA, also the time of one denoising step (block 0, after its refresh) per cache mode: the
eager fixed-shape step and its replayed graph between CUDA events, and the pure GPU time (the
summed kernel durations from torch.profiler, no launch gaps); the issue's goal is
``graph_over_kernel <= 1.2``.

Records tokens/s, forward passes and peak memory, writes JSON with
``benchmarks/_timing.write_results``, and plots tokens/s vs tokens-per-step (each cache mode
against the AR lines) as PNG when matplotlib is installed. Defaults: on CUDA the issue's
setting (LLaDA-8B shape in bf16, batch 1, prompt 64, gen 256 and 1024, block 32, k = 1, 2, 4,
8); on CPU the ``tiny`` preset as a smoke test (labelled CPU; no performance meaning).

Usage: ``python benchmarks/e2e_llada.py [--preset P] [--gen 256 1024] [--tps 1 2 4 8] [--no-hf]``;
or ``pytest benchmarks/e2e_llada.py --benchmark-only`` (pytest-benchmark).
"""
from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mdsample  # noqa: E402
from mdsample.models import Transformer, generate_ar, llama_config  # noqa: E402

from mdsample.models.protocol import Backbone  # noqa: E402
from mdsample.samplers.forward import CachedRowForward  # noqa: E402
from mdsample.samplers.graph_step import BlockStep  # noqa: E402

from benchmarks._e2e import (  # noqa: E402
    Counting, build_model, cuda_event_ms, e2e_parser, kernel_ms, measure, parse_with_defaults, pick_device,
    reference_llada, run_and_report)
from benchmarks._timing import device_name  # noqa: E402

GPU_DEFAULTS = dict(preset="llada_8b", batch=1, prompt=64, gen=[256, 1024], block=32, tps=[1, 2, 4, 8],
                    dtype="bfloat16")
CPU_DEFAULTS = dict(preset="tiny", batch=1, prompt=8, gen=[32], block=8, tps=[1, 2, 4], dtype="float32")
MODES = ((None, False), ("prefix", False), ("dual", False), ("prefix", True), ("dual", True))  # (cache, cuda_graph)


def method_name(cache, graph: bool) -> str:
    return f"mdsample cache={cache}" + (" cuda_graph (kept across calls)" if graph else "")


@torch.no_grad()
def step_times(model, prompt, *, gen, block, steps, mode, repeats=20) -> dict | None:
    """Milliseconds of one non-refresh step of block 0 (LLaDA low_confidence, T = 0), CUDA only:
    the eager fixed-shape step and its replayed graph (CUDA events) and their pure GPU time
    (kernel sum). The canvas is restored before each timed step so every one commits the same.
    None when a block has a single step (every step is a refresh)."""
    per_block = steps * block // gen
    if per_block < 2:
        return None
    b, p = prompt.shape
    mask_id = model.config.mask_id
    x = torch.cat([prompt, torch.full((b, gen), mask_id, dtype=torch.int64, device=prompt.device)], 1)
    fwd = CachedRowForward(Backbone(model), mode=mode, total=p + gen, batch_size=b, mask_id=mask_id)
    step = BlockStep(fwd, x, block_length=block, per_block=per_block, remasking="low_confidence", temperature=0.0,
                     stats_temperature=1.0, seed=0, mask_id=mask_id, capture=True)
    step.begin_block(p, p + block, 0)
    step(0)  # the refresh (eager)
    step(1)  # warm-up + capture
    graph = next(iter(step.graphs.values()))
    canvas = x.clone()
    restore = lambda: x.copy_(canvas)  # noqa: E731
    eager = lambda: step.run(False)  # noqa: E731
    out = {"eager_step_ms": cuda_event_ms(eager, before=restore, repeats=repeats),
           "graph_step_ms": cuda_event_ms(graph.replay, before=restore, repeats=repeats),
           # 5 profiled calls: reading back an 8B step's ~10^4 profiler events per call costs seconds
           "kernel_step_ms": kernel_ms(eager, before=restore, repeats=min(repeats, 5))}
    if out["kernel_step_ms"]:
        out["graph_over_kernel"] = out["graph_step_ms"] / out["kernel_step_ms"]
        out["eager_over_kernel"] = out["eager_step_ms"] / out["kernel_step_ms"]
    return out


def _free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run(args):
    """Yields the result rows: the AR baselines first (quick, and what every MDM row is compared
    with), then per generation length and tokens-per-step (in the order given) each mdsample mode,
    the per-step GPU times (CUDA) and the reference LLaDA loop."""
    device = pick_device(args.device)
    dtype = getattr(torch, args.dtype)
    g = torch.Generator().manual_seed(0)
    config = Transformer.from_preset(args.preset, device="meta").config
    prompt = torch.randint(0, config.mask_id, (args.batch, args.prompt), generator=g).to(device)

    ar = Transformer(config.replace(attention="causal"), device=device, dtype=dtype, seed=0).eval()
    for gen in args.gen:
        base = dict(preset=args.preset, batch=args.batch, prompt=args.prompt, gen=gen, dtype=args.dtype)
        fn = lambda n=gen: generate_ar(ar, prompt, n)  # noqa: E731
        row = measure(fn, device, tokens=args.batch * gen, repeats=args.repeats)
        row["forwards"] = gen  # one prefill + gen - 1 single-token steps
        yield {"method": "AR twin (mdsample KV cache)", "tokens_per_step": 1, **base, **row}
    del ar
    _free(device)

    if not args.no_hf:
        from transformers import LlamaForCausalLM

        # Built on the device in its dtype: a CPU init of an 8B model takes minutes.
        saved = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                hf = LlamaForCausalLM(llama_config(config)).eval()
        finally:
            torch.set_default_dtype(saved)
        for gen in args.gen:
            base = dict(preset=args.preset, batch=args.batch, prompt=args.prompt, gen=gen, dtype=args.dtype)

            def fn(n=gen):
                with torch.no_grad():
                    return hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                                       min_new_tokens=n, do_sample=False, use_cache=True, pad_token_id=0)

            row = measure(fn, device, tokens=args.batch * gen, repeats=args.repeats)
            row["forwards"] = gen
            yield {"method": "HF generate(use_cache=True)", "tokens_per_step": 1, **base, **row}
        del hf
        _free(device)

    model = Counting(build_model(args.preset, args.dtype, device))
    for gen in args.gen:
        tokens = args.batch * gen
        base = dict(preset=args.preset, batch=args.batch, prompt=args.prompt, gen=gen, block=args.block,
                    dtype=args.dtype)
        for k in args.tps:
            steps = gen // k
            forwards = {}
            for cache, graph in MODES:
                # Graph modes keep their captures across calls (StepGraphs): measure's warm-up call
                # captures, the timed calls replay, as a server generating for many prompts would.
                graphs = mdsample.StepGraphs() if graph else False
                fn = lambda c=cache, g=graphs, s=steps: mdsample.generate(  # noqa: E731
                    model, prompt, steps=s, gen_length=gen, block_length=args.block, mask_id=config.mask_id,
                    cache=c, cuda_graph=g)
                row = measure(fn, device, tokens=tokens, counter=model, repeats=args.repeats)
                if graph and device.type == "cuda":  # a replay runs no Python: the counter misses it
                    row["forwards"], row["positions_fed"] = forwards[cache]
                forwards[cache] = row["forwards"], row["positions_fed"]
                yield {"method": method_name(cache, graph), "tokens_per_step": k, **base, **row}
            if device.type == "cuda":
                for cache in ("prefix", "dual"):
                    times = step_times(model.inner, prompt, gen=gen, block=args.block, steps=steps, mode=cache)
                    if times is not None:
                        yield {"method": f"step GPU time cache={cache}", "tokens_per_step": k, **base, **times}
            if not args.skip_reference:
                fn = lambda s=steps: reference_llada(model, prompt, s, gen, args.block, config.mask_id)  # noqa: E731
                yield {"method": "reference LLaDA loop", "tokens_per_step": k, **base,
                       **measure(fn, device, tokens=tokens, counter=model, repeats=args.repeats)}
    del model
    _free(device)


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
        for method in sorted({r["method"] for r in sub if "tokens_per_s" in r}):
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
    ap = e2e_parser(__doc__.split("\n")[0], batch=None, prompt=None, gen="+", block=None, tps="+")
    ap.add_argument("--no-hf", action="store_true", help="skip Hugging Face generate (and the transformers import)")
    return parse_with_defaults(ap, argv, GPU_DEFAULTS, CPU_DEFAULTS)


def describe(r) -> str:
    head = f"gen {r['gen']} k={r['tokens_per_step']} {r['method']}: "
    if "graph_step_ms" not in r:
        return head + f"{r['tokens_per_s']:.1f} tok/s, {r['forwards']} forwards"
    pure = r["kernel_step_ms"]
    return head + (f"eager {r['eager_step_ms']:.3f} ms, graph {r['graph_step_ms']:.3f} ms, kernels "
                   + (f"{pure:.3f} ms (graph/kernels {r['graph_over_kernel']:.2f}x)" if pure else "not profiled"))


def main(argv=None) -> dict:
    args = parse(argv)
    out = run_and_report(args, run, "e2e-llada", describe)
    if not args.no_write:
        out["plot"] = plot(out["rows"], pick_device(args.device), Path(out["path"]).with_suffix(".png"))
    return out


# ---------------------------------------------------------------- pytest-benchmark
def _setup():
    args = parse(["--no-write"])
    dev = pick_device(args.device)
    model = build_model(args.preset, args.dtype, dev)
    prompt = torch.randint(0, model.config.mask_id, (args.batch, args.prompt), generator=torch.Generator().manual_seed(0))
    return args, model, prompt.to(dev)


def _bench_generate(benchmark, cache, graph=False):
    args, model, prompt = _setup()
    gen, k = args.gen[0], args.tps[-1]
    benchmark.pedantic(lambda: mdsample.generate(model, prompt, steps=gen // k, gen_length=gen, block_length=args.block,
                                                 mask_id=model.config.mask_id, cache=cache, cuda_graph=graph),
                       rounds=1, iterations=1, warmup_rounds=1)


def test_e2e_llada_nocache(benchmark):
    _bench_generate(benchmark, None)


def test_e2e_llada_prefix(benchmark):
    _bench_generate(benchmark, "prefix")


def test_e2e_llada_dual(benchmark):
    _bench_generate(benchmark, "dual")


def test_e2e_llada_dual_graph(benchmark):
    _bench_generate(benchmark, "dual", graph=True)


def test_e2e_llada_reference(benchmark):
    args, model, prompt = _setup()
    gen, k = args.gen[0], args.tps[-1]
    benchmark.pedantic(lambda: reference_llada(model, prompt, gen // k, gen, args.block, model.config.mask_id),
                       rounds=1, iterations=1, warmup_rounds=1)


if __name__ == "__main__":
    main()
