"""Likelihood evaluation: masked_nll vs cross-entropy on materialised logits, end to end, variance.

Standalone: ``python benchmarks/bench_likelihood.py [--quick] [--parts masked_nll,e2e,variance,chain_rule]
[--threads N] [--results-dir DIR]``

Four parts, in one run on whatever device is present (CPU here; the numbers are
labelled with the device they come from, never quoted as GPU numbers):

1. ``masked_nll`` on every backend present (cuda and triton on a GPU, cpu here)
   against what evaluation code runs today on full ``[B, L, V]`` logits:
   ``F.cross_entropy`` over the masked rows (SMDM / LLaDA), the same over all rows
   then masked (MDLM's loss), and ``log_softmax`` in float64 (fp32 inputs only), at
   masked fractions 15% / 50% / 100%. On a GPU: bf16, V = 32000 and 126464, L = 1024.
   Reports the median time (CUDA events after warm-up, inputs rotated past L2), GB/s
   over the masked rows' logits (the bytes any exact method must read) and, on a GPU,
   that as % of the measured device copy bandwidth (read + write), and the extra
   memory of a call: the allocator's peak on a GPU, the bytes torch allocates
   (profiler, an upper bound) on the CPU; O(B L) for masked_nll, O(B L V) for the others.
2. End to end on a small transformer (``mdsample.models.Transformer``, random weights):
   ``mdsample.likelihood`` (hidden/head: logits only for masked rows; and full logits)
   against the upstream-style loop (per sequence, a batch of draws, full forward,
   ``F.cross_entropy`` on the masked rows / p). Same number of forward passes.
3. Variance reduction at equal forward passes: estimator variance over independent
   replicates for each (masking, mode) on the oracle Markov chain of the tests (exact
   conditionals, context-dependent like text) and on a random-weight transformer
   (context-independent predictions: little for the lattices to remove).
4. The chain-rule likelihood (SMDM's ``nll_type="chain_rule"``): SMDM's loop (per sequence, one input
   per answer token with a triangle of masks, full logits, ``F.cross_entropy`` of the diagonal rows)
   against ``mdsample.chain_rule_likelihood`` (hidden/head: one logits row per input). Same inputs.

Writes ``benchmarks/results/<device>-likelihood-<date>.json`` (``cpu-...`` here, e.g. ``h100_80gb_hbm3-...``
on a GPU; ``likelihood-quick`` with ``--quick``; ``--results-dir`` elsewhere) and its plot beside it
(``benchmarks/plot_likelihood.py``). ``--quick --parts masked_nll`` is the GPU check's call.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import mdsample  # noqa: E402
from benchmarks._timing import (  # noqa: E402
    add_results_dir, copy_bandwidth, device_name, extra_memory, median_time, rotating_inputs, write_results)
from benchmarks.plot_likelihood import plot_likelihood  # noqa: E402
from likelihood_oracles import MarkovOracle  # noqa: E402  (tests/likelihood_oracles.py)
from mdsample import _backends  # noqa: E402
from mdsample.models.transformer import Transformer  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ---------------------------------------------------------------------------- 1. masked_nll

def naive_masked_ce(logits, x0, xt, mask_id):
    """SMDM / LLaDA: cross-entropy over the gathered masked rows (a copy of them), summed per sequence."""
    m = xt == mask_id
    ce = F.cross_entropy(logits[m].float(), x0[m], reduction="none")
    return torch.zeros(x0.shape[0], device=x0.device).index_add_(0, m.nonzero()[:, 0], ce)


def naive_full_ce(logits, x0, xt, mask_id):
    """MDLM-style loss: cross-entropy over every row, then the mask applied."""
    ce = F.cross_entropy(logits.flatten(0, 1).float(), x0.flatten(), reduction="none").view(x0.shape)
    return (ce * (xt == mask_id)).sum(-1)


def naive_logsoftmax64(logits, x0, xt, mask_id):
    """float64 log_softmax of everything, gather (the reference formula)."""
    logp = logits.double().log_softmax(-1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    return (-logp * (xt == mask_id)).sum(-1)


def truth_fp64(logits, x0, xt, mask_id):
    """The float64 log_softmax formula, one sequence at a time (a GPU holds one [L, V] float64 block)."""
    return torch.cat([naive_logsoftmax64(logits[b:b + 1], x0[b:b + 1], xt[b:b + 1], mask_id)
                      for b in range(logits.shape[0])])


def random_logits(shape, dtype, device, seed):
    """Logits ~ 3 N(0, 1) in ``dtype``, drawn on ``device`` (a CPU draw of GBs would dominate a GPU run)."""
    g = torch.Generator(device=device).manual_seed(seed)
    return (torch.randn(shape, generator=g, device=device) * 3).to(dtype)


def bench_masked_nll(device, *, batch, length, vocabs, fracs, dtypes, runs, mask_id=0):
    """masked_nll per backend against cross-entropy on the materialised logits ``[batch, length, V]``.

    Every implementation is timed over the same rotating set of logits tensors (larger
    than L2 on a GPU, so each run reads HBM); GB/s counts the masked rows' logits, the
    bytes an exact method must read, also given as % of the measured copy bandwidth
    (read + write; on the CPU only a reference line). Returns (rows, copy GB/s).
    """
    rows = []
    impls = {f"mdsample[{b}]": (lambda b: lambda l, a, t: mdsample.masked_nll(l, a, t, mask_id=mask_id, check=False,
                                                                              backend=b))(b)
             for b in ("cuda", "triton", "cpu") if _backends.available(b, device.type)}
    impls.update({"cross_entropy_masked_rows": lambda l, a, t: naive_masked_ce(l, a, t, mask_id),
                  "cross_entropy_all_rows": lambda l, a, t: naive_full_ce(l, a, t, mask_id),
                  "log_softmax_fp64": lambda l, a, t: naive_logsoftmax64(l, a, t, mask_id)})
    copy_gbps = copy_bandwidth(device)
    g = torch.Generator().manual_seed(0)
    for dname in dtypes:
        dtype = DTYPES[dname]
        for vocab in vocabs:
            shape = (batch, length, vocab)
            seeds = iter(range(1000))
            inputs = rotating_inputs(lambda: random_logits(shape, dtype, device, next(seeds)),
                                     math.prod(shape) * dtype.itemsize, device)
            x0 = torch.randint(1, vocab, (batch, length), generator=g).to(device)
            for frac in fracs:
                xt = torch.where(torch.rand(batch, length, generator=g).to(device) < frac, mask_id, x0)
                masked = int((xt == mask_id).sum())
                bytes_masked = masked * vocab * dtype.itemsize
                want = truth_fp64(inputs[0], x0, xt, mask_id)
                case = []
                for name, fn in impls.items():
                    if name == "log_softmax_fp64" and dname != "fp32":
                        continue
                    t = median_time(lambda l: fn(l, x0, xt), inputs, device=device, runs=runs)
                    err = float(((fn(inputs[0], x0, xt).double() - want).abs() / want.abs().clamp_min(1)).max())
                    gbps = bytes_masked / t / 1e9
                    case.append(dict(op="masked_nll", impl=name, dtype=dname, batch=batch, length=length, vocab=vocab,
                                     mask_frac=frac, masked_rows=masked, median_s=t, gbps_masked_rows=gbps,
                                     pct_of_copy_bandwidth=None if copy_gbps is None else 100 * gbps / copy_gbps,
                                     extra_memory_bytes=extra_memory(lambda: fn(inputs[0], x0, xt), device),
                                     logits_bytes=math.prod(shape) * dtype.itemsize, max_rel_err_vs_fp64=err))
                base = next(r["median_s"] for r in case if r["impl"] == "cross_entropy_masked_rows")
                for r in case:
                    r["speedup_vs_cross_entropy_masked_rows"] = base / r["median_s"]
                rows += case
            del inputs
    return rows, copy_gbps


# ---------------------------------------------------------------------------- 2. end to end

def upstream_loop(model, x, *, mc_samples, batch_size, mask_id, eps=1e-3, seed=0):
    """The loop SMDM / LLaDA evaluation code runs: per sequence, batches of draws, full logits, CE / p."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    out = []
    with torch.no_grad():
        for seq in x:
            total = 0.0
            for start in range(0, mc_samples, batch_size):
                n = min(batch_size, mc_samples - start)
                p = ((1 - eps) * torch.rand(n, 1, generator=g, device=x.device) + eps).expand(n, seq.numel())
                mask = torch.rand(n, seq.numel(), generator=g, device=x.device) < p
                noisy = torch.where(mask, mask_id, seq)
                logits = model(noisy)
                target = seq.expand(n, -1)
                total += float((F.cross_entropy(logits[mask], target[mask], reduction="none") / p[mask]).sum())
            out.append(-total / mc_samples)
    return torch.tensor(out)


class FullLogits:
    """The same model seen without hidden/head, so likelihood scores full logits with masked_nll."""

    def __init__(self, model):
        self.model = model
        self.config = model.config

    def __call__(self, x):
        return self.model(x)


def wall_time(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def round_robin(cases: dict, device, runs: int) -> dict:
    """Wall times ``{name: [runs]}`` after a warm-up call each, the cases interleaved run by run: on a
    shared machine slow drifts in load then hit every case alike."""
    times = {name: [] for name in cases}
    for fn in cases.values():
        fn()
    for _ in range(runs):
        for name, fn in cases.items():
            times[name].append(wall_time(fn, device))
    return times


def small_model_and_data(device, *, batch, length, vocab, seed):
    """A 2-layer, 128-wide random-weight transformer (mask id V - 1) and ``[batch, length]`` random tokens."""
    model = Transformer.from_preset("tiny", vocab_size=vocab, hidden_size=128, num_layers=2, num_heads=4,
                                    num_kv_heads=2, intermediate_size=352, max_seq_len=max(length, 256),
                                    mask_id=vocab - 1, device=device).eval()
    x = torch.randint(0, vocab - 1, (batch, length), generator=torch.Generator().manual_seed(seed)).to(device)
    return model, x


def bench_end_to_end(device, *, batch, length, vocab, mc_samples, batch_size, runs):
    model, x = small_model_and_data(device, batch=batch, length=length, vocab=vocab, seed=1)
    kw = dict(mc_samples=mc_samples, batch_size=batch_size, mask_id=vocab - 1)
    cases = {
        "upstream_loop_cross_entropy": lambda: upstream_loop(model, x, **kw),
        "mdsample_likelihood_hidden_head": lambda: mdsample.likelihood(model, x, subs=False, **kw).log_likelihood,
        "mdsample_likelihood_full_logits": lambda: mdsample.likelihood(FullLogits(model), x, subs=False,
                                                                       **kw).log_likelihood,
    }
    times = round_robin(cases, device, runs)
    rows = []
    for name, fn in cases.items():
        est = fn()
        rows.append(dict(op="likelihood_end_to_end", impl=name, batch=batch, length=length, vocab=vocab,
                         mc_samples=mc_samples, batch_size=batch_size,
                         forward_passes=batch * math.ceil(mc_samples / batch_size) if "upstream" in name
                         else math.ceil(batch * mc_samples / batch_size),
                         median_s=statistics.median(times[name]), times_s=times[name],
                         mean_nll_per_token=float(-est.mean()) / length, extra_memory_bytes=extra_memory(fn, device)))
    base = rows[0]["median_s"]
    for r in rows:
        r["speedup_vs_upstream_loop"] = base / r["median_s"]
    return rows


# ---------------------------------------------------------------------------- 3. variance

def bench_variance(model, x_row, *, replicates, mc_samples, label, mask_id, truth=None):
    """Variance of the per-sequence estimate over independent replicates, per (masking, mode)."""
    x = x_row.view(1, -1).repeat(replicates, 1)
    out = {}
    for masking in ("bernoulli", "count"):
        for mode in ("iid", "stratified", "shifted"):
            est = mdsample.likelihood(model, x, mask_id=mask_id, mc_samples=mc_samples, batch_size=1024,
                                      mode=mode, masking=masking, seed=7)
            vals = -est.log_likelihood
            out[f"{masking}/{mode}"] = dict(mean_nll=float(vals.mean()), sd=float(vals.std()),
                                            reported_se_rms=float(est.stderr.pow(2).mean().sqrt()))
    base = out["bernoulli/iid"]["sd"] ** 2
    for key, r in out.items():
        same_family_iid = out[key.split("/")[0] + "/iid"]["sd"] ** 2
        r["variance_vs_same_masking_iid"] = r["sd"] ** 2 / same_family_iid
        r["variance_vs_bernoulli_iid"] = r["sd"] ** 2 / base
    return dict(op="variance_reduction", model=label, replicates=replicates, mc_samples=mc_samples,
                length=x_row.numel(), true_nll=truth, modes=out)


# ---------------------------------------------------------------------------- 4. chain rule

def upstream_chain_rule(model, x, *, prompt_len, batch_size, mask_id):
    """SMDM's chain-rule evaluation: input i masks answer positions >= i; full logits; CE of row i's position i."""
    out = []
    with torch.no_grad():
        for seq in x:
            n = seq.numel() - prompt_len
            inputs = seq.repeat(n, 1)
            inputs[:, prompt_len:][torch.triu(torch.ones(n, n, dtype=torch.bool, device=x.device))] = mask_id
            logits = torch.cat([model(inputs[i:i + batch_size]) for i in range(0, n, batch_size)])
            rows = logits[torch.arange(n, device=x.device), prompt_len + torch.arange(n, device=x.device)]
            out.append(-float(F.cross_entropy(rows.float(), seq[prompt_len:], reduction="sum")))
    return torch.tensor(out)


def bench_chain_rule(device, *, batch, length, prompt_len, vocab, batch_size, runs):
    model, x = small_model_and_data(device, batch=batch, length=length, vocab=vocab, seed=3)
    kw = dict(prompt_len=prompt_len, batch_size=batch_size, mask_id=vocab - 1)
    cases = {
        "upstream_chain_rule_cross_entropy": lambda: upstream_chain_rule(model, x, **kw),
        "mdsample_chain_rule_hidden_head": lambda: mdsample.chain_rule_likelihood(model, x, subs=False,
                                                                                  **kw).log_likelihood,
    }
    times = round_robin(cases, device, runs)
    n = length - prompt_len
    rows, ref = [], cases["upstream_chain_rule_cross_entropy"]().double()
    for name, fn in cases.items():
        est = fn().double().cpu()
        rows.append(dict(op="chain_rule_likelihood", impl=name, batch=batch, length=length, prompt_len=prompt_len,
                         vocab=vocab, batch_size=batch_size,
                         logits_rows=batch * n * (length if "upstream" in name else 1),
                         median_s=statistics.median(times[name]), times_s=times[name],
                         max_abs_diff_vs_upstream_nats=float((est - ref.cpu()).abs().max()),
                         extra_memory_bytes=extra_memory(fn, device)))
    for r in rows:
        r["speedup_vs_upstream_loop"] = rows[0]["median_s"] / r["median_s"]
    return rows


PARTS = ("masked_nll", "e2e", "variance", "chain_rule")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run; about a minute on a GPU)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--threads", type=int, default=None)
    add_results_dir(ap)
    args = ap.parse_args(argv)
    parts = args.parts.split(",")
    if not set(parts) <= set(PARTS):
        ap.error(f"--parts must name some of {', '.join(PARTS)}; got {args.parts}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    q, gpu = args.quick, device.type == "cuda"

    rows, copy_gbps = [], None
    if "masked_nll" in parts:
        if gpu:  # bf16 at the vocabularies of Llama-2 / SMDM (32000) and LLaDA (126464)
            sizes = dict(batch=2 if q else 8, length=1024, vocabs=(32000, 126464), dtypes=("bf16",),
                         runs=10 if q else 30)
        else:
            sizes = dict(batch=4 if q else 8, length=64 if q else 256, vocabs=(8192 if q else 32000,),
                         dtypes=("fp32", "bf16"), runs=3 if q else 7)
        nll_rows, copy_gbps = bench_masked_nll(device, fracs=(0.15, 0.5, 1.0), **sizes)
        rows += nll_rows
    if "e2e" in parts:
        rows += bench_end_to_end(device, batch=2 if q else 4, length=64 if q else 128, vocab=8192 if q else 32000,
                                 mc_samples=16 if q else 64, batch_size=16, runs=1 if q else 5)
    if "variance" in parts:
        markov = MarkovOracle()
        chain = markov.sample(1, 32, seed=3)[0]
        rows.append(bench_variance(markov, chain, replicates=100 if q else 400, mc_samples=16,
                                   label="markov_oracle_L32", mask_id=markov.mask_id,
                                   truth=-float(markov.log_prob(chain.view(1, -1)))))
        # Random weights: the per-token NLL barely depends on how much context is unmasked, so the
        # time/count lattices have little to remove there (trained models behave like the oracle).
        small = Transformer.from_preset("tiny", vocab_size=4096, max_seq_len=64, mask_id=4095, device=device).eval()
        x_row = torch.randint(0, 4095, (32,), generator=torch.Generator().manual_seed(2)).to(device)
        rows.append(bench_variance(small, x_row, replicates=50 if q else 200, mc_samples=16,
                                   label="random_transformer_L32_V4096", mask_id=4095))

    if "chain_rule" in parts:
        # SMDM's loop holds the full logits of a sequence's inputs: answer x length x V floats (1.6 GB here).
        rows += bench_chain_rule(device, batch=2, length=64 if q else 128, prompt_len=16 if q else 32,
                                 vocab=8192 if q else 32000, batch_size=16 if q else 32, runs=1 if q else 3)

    if copy_gbps is not None:
        print(f"[copy] device copy bandwidth {copy_gbps:.0f} GB/s (read + write)")
    for r in rows:
        if r["op"] == "variance_reduction":
            print(f"[variance] {r['model']}: " + ", ".join(
                f"{k} {v['variance_vs_same_masking_iid']:.3f}x (vs bern/iid {v['variance_vs_bernoulli_iid']:.3f}x)"
                for k, v in r["modes"].items()))
        elif r["op"] == "masked_nll":
            pct = "" if r["pct_of_copy_bandwidth"] is None else f" ({r['pct_of_copy_bandwidth']:5.1f}% of copy)"
            print(f"[masked_nll] {r['dtype']} V={r['vocab']:<6} frac={r['mask_frac']:<4} {r['impl']:<26} "
                  f"{r['median_s'] * 1e3:9.3f} ms {r['gbps_masked_rows']:8.1f} GB/s{pct}  "
                  f"extra {r['extra_memory_bytes'] / 2**20:9.2f} MiB  x{r['speedup_vs_cross_entropy_masked_rows']:.2f}"
                  f"  err {r['max_rel_err_vs_fp64']:.1e}")
        elif r["op"] == "chain_rule_likelihood":
            print(f"[chain_rule] {r['impl']:<34} {r['median_s']:8.3f} s  logits rows {r['logits_rows']}  "
                  f"extra {r['extra_memory_bytes'] / 2**20:9.1f} MiB  x{r['speedup_vs_upstream_loop']:.2f}  "
                  f"|diff| {r['max_abs_diff_vs_upstream_nats']:.1e} nats")
        else:
            print(f"[e2e] {r['impl']:<34} {r['median_s']:8.3f} s  passes {r['forward_passes']}  "
                  f"extra {r['extra_memory_bytes'] / 2**20:9.1f} MiB  x{r['speedup_vs_upstream_loop']:.2f}")
    memory = ("peak allocator memory during a call beyond what was allocated before it" if gpu else
              "sum of torch allocations during a call (profiler), an upper bound of its peak extra memory")
    extra = dict(benchmark="bench_likelihood", quick=q, parts=parts, threads=torch.get_num_threads(),
                 copy_bandwidth_gbps=copy_gbps, extra_memory=memory,
                 note=("CPU measurements (" + device_name(device) + "); not GPU numbers.") if not gpu
                 else "GPU measurements: CUDA events after warm-up, median, inputs rotated past L2.")
    path = write_results("likelihood" + ("-quick" if q else ""), device, rows, extra, results_dir=args.results_dir)
    print(f"wrote {path}")
    try:
        print(f"wrote {plot_likelihood(json.loads(path.read_text()), path.with_suffix('.png'))}")
    except ImportError:
        print("matplotlib missing: no plot")
    except ValueError as exc:  # nothing drawable: the JSON stands alone
        print(f"no plot: {exc}")


if __name__ == "__main__":
    main()
