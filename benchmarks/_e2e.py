"""Shared pieces of the end-to-end benchmarks (benchmarks/e2e_*.py): forward counting,
timing with a device sync, peak memory, the command-line plumbing, and the published MDLM /
LLaDA sampling loops they (and benchmarks/bench_samplers.py) compare against. CPU numbers
are smoke-test numbers only."""
from __future__ import annotations

import argparse
import math
import resource
import time

import torch

from benchmarks._timing import add_results_dir, cpu_threads, device_name, write_results
from mdsample.models import Transformer


class CountingCache:
    """Delegates to a KV cache, counting block calls and the sequence-positions fed."""

    def __init__(self, cache, owner):
        self._cache, self._owner = cache, owner

    def __getattr__(self, name):
        return getattr(self._cache, name)

    def hidden_block(self, x, start=None, **kw):
        self._owner.forwards += 1
        self._owner.positions += x.numel()
        return self._cache.hidden_block(x, start, **kw)

    def forward_block(self, x, start=None, **kw):
        self._owner.forwards += 1
        self._owner.positions += x.numel()
        return self._cache.forward_block(x, start, **kw)


class Counting(torch.nn.Module):
    """Delegates the backbone protocol to ``inner`` and counts forwards (model calls, cache
    block calls included) and token positions fed through the layer stack."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.forwards = 0
        self.positions = 0

    def reset(self):
        self.forwards = self.positions = 0

    @property
    def max_length(self):
        return self.inner.max_length

    @property
    def vocab_size(self):
        return self.inner.config.vocab_size

    @property
    def device(self):
        return self.inner.device

    def forward(self, x):
        return self.head(self.hidden(x))

    def hidden(self, x, **kw):
        self.forwards += 1
        self.positions += x.numel()
        return self.inner.hidden(x)

    def head(self, h):
        return self.inner.head(h)

    def new_cache(self, batch_size, max_len=None):
        return CountingCache(self.inner.new_cache(batch_size, max_len), self)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, device, *, tokens: int, counter=None, repeats: int = 1) -> dict:
    """Run ``fn`` once to warm up, then ``repeats`` times: median wall seconds (device-synced),
    tokens/s, forwards per run and peak memory (CUDA: max allocated; CPU: process max RSS)."""
    fn()
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(repeats):
        if counter is not None:
            counter.reset()
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    sec = times[len(times) // 2]
    row = {"seconds": sec, "tokens": tokens, "tokens_per_s": tokens / sec if sec > 0 else None,
           "forwards": None if counter is None else counter.forwards,
           "positions_fed": None if counter is None else counter.positions}
    if device.type == "cuda":
        row["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def cuda_event_ms(fn, *, before=None, repeats: int = 20) -> float:
    """Median milliseconds between CUDA events recorded just before and after ``fn()``, after two
    warm-up calls; ``before()`` (e.g. restoring the inputs) runs before each call, outside the events.
    The span includes the GPU's idle gaps while the host launches ``fn``'s kernels."""
    before = before or (lambda: None)
    for _ in range(2):
        before()
        fn()
    spans = []
    for _ in range(repeats):
        before()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        spans.append((start, end))
    torch.cuda.synchronize()
    times = sorted(s.elapsed_time(e) for s, e in spans)
    return times[len(times) // 2]


def kernel_ms(fn, *, before=None, repeats: int = 20) -> float | None:
    """Pure GPU time of ``fn()`` in milliseconds: the summed durations of the device work it
    launches (torch.profiler / CUPTI), with no launch gaps, averaged over ``repeats`` calls.
    ``before()``'s own device work is profiled alone and subtracted. None when the profiler
    records no device work (e.g. CUPTI unavailable)."""
    from torch.profiler import ProfilerActivity, profile

    def busy(calls) -> float:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(repeats):
                for c in calls:
                    c()
            torch.cuda.synchronize()
        return sum(e.self_device_time_total for e in prof.events()
                   if e.device_type == torch.autograd.DeviceType.CUDA and not getattr(e, "is_user_annotation", False))

    before = before or (lambda: None)
    before()
    fn()
    total = busy((before, fn)) - busy((before,))
    return total / repeats / 1000.0 if total > 0 else None


def pick_device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_model(preset: str, dtype: str, device) -> Transformer:
    """The random-init (seed 0) ``preset`` transformer in ``dtype`` (a torch dtype name), eval mode."""
    return Transformer.from_preset(preset, device=device, dtype=getattr(torch, dtype), seed=0).eval()


def e2e_parser(description: str, **int_options) -> argparse.ArgumentParser:
    """The options of every e2e script (--device, --preset, --dtype, --repeats, --skip-reference,
    --no-write, --results-dir) and its own integer ones: ``name=None`` takes one value, ``name="+"`` a list."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--device", default=None)
    ap.add_argument("--preset", default=None)
    for name, nargs in int_options.items():
        ap.add_argument(f"--{name}", type=int, default=None, **({"nargs": nargs} if nargs else {}))
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="write no results files")
    add_results_dir(ap)
    return ap


def describe_speed(r: dict) -> str:
    """A result row in one line: tok/s, forwards, seconds, and a reference row's mdsample speedup."""
    line = f"{r['method']}: {r['tokens_per_s']:.1f} tok/s, {r['forwards']} forwards, {r['seconds']:.3f} s"
    return line + (f" (mdsample {r['mdsample_speedup']:.1f}x faster)" if "mdsample_speedup" in r else "")


def parse_with_defaults(ap, argv, gpu_defaults: dict, cpu_defaults: dict):
    """Parse ``argv``; options left unset take ``gpu_defaults`` on CUDA, else ``cpu_defaults``."""
    args = ap.parse_args(argv)
    defaults = gpu_defaults if pick_device(args.device).type == "cuda" else cpu_defaults
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def run_and_report(args, run, kind: str, describe) -> dict:
    """Run ``run(args)``, a generator of result rows (one CPU thread on CPU), printing each row
    (``describe(row)``) as it arrives; unless ``args.no_write``, (re)write the rows so far as
    ``<results_dir>/<device>-<kind>-<date>.json`` after each one, marked ``"complete": false``
    until the last, so a run cut short by a time limit still leaves what it measured."""
    device = pick_device(args.device)
    # On the CPU one thread: tiny matmuls, where OpenMP's fork/join only adds overhead on shared cores.
    with cpu_threads(1 if device.type == "cpu" else torch.get_num_threads()):
        return _run_and_report(args, run, kind, describe, device)


def _run_and_report(args, run, kind, describe, device) -> dict:
    label = device_name(device)
    cpu_smoke = device.type == "cpu"
    out = {"rows": [], "device": label, "cpu_smoke": cpu_smoke}

    def write(complete: bool):
        if not args.no_write:
            out["path"] = str(write_results(kind, device, out["rows"], {"cpu_smoke": cpu_smoke, "complete": complete},
                                             results_dir=args.results_dir))

    for row in run(args):
        out["rows"].append(row)
        print(f"[{label}] {describe(row)}" + (" (CPU smoke test)" if cpu_smoke else ""), flush=True)
        write(False)
    write(True)
    return out


# ---- the published loops (formulas from ALGORITHMS.md) ----

@torch.no_grad()
def reference_mdlm(model, batch, length, mask_id, steps, *, device="cpu", dtype=torch.float64, seed=None,
                   eps=1e-5):
    """MDLM ``_sample`` with the ``ddpm_cache`` predictor as published (loglinear, m_t = t): SUBS
    probabilities over the full ``[B, L, V]`` in ``dtype``, a Gumbel race over ``[B, L, V]`` in
    ``dtype``, the whole-batch cache (reuse the output only when no sequence changed) and a final
    argmax forward. Noise from a generator seeded with ``seed`` on ``device``, or from torch's
    global RNG (as upstream) when ``seed`` is None."""
    gen = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    x = torch.full((batch, length), mask_id, dtype=torch.long, device=device)
    grid = torch.linspace(1, eps, steps + 1)
    dt = (1 - eps) / steps
    p_x0 = None

    def subs_probs(x):
        logits = model(x).to(dtype)
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
        q = p_x0 * (t - (t - dt))  # move_chance_t - move_chance_s
        q[:, :, mask_id] = t - dt
        u = torch.rand(q.shape, dtype=q.dtype, device=q.device, generator=gen)
        x_new = (q / (1e-10 - (u + 1e-10).log())).argmax(-1)
        x_new = torch.where(x != mask_id, x, x_new)
        if not torch.equal(x_new, x):
            p_x0 = None
        x = x_new
    return subs_probs(x).argmax(-1)


@torch.no_grad()
def reference_llada(model, prompt, steps, gen_length, block_length, mask_id, temperature=0.0):
    """LLaDA ``generate`` (low_confidence) as published: full forward of the whole batch every step
    (float64 Gumbel over [B, L, V], confidences over the whole canvas)."""
    B, P = prompt.shape
    dev = prompt.device
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long, device=dev)
    x[:, :P] = prompt
    num_blocks = gen_length // block_length
    spb = steps // num_blocks
    for nb in range(num_blocks):
        s, e = P + nb * block_length, P + (nb + 1) * block_length
        m = (x[:, s:e] == mask_id).sum(1, keepdim=True)
        counts = (m // spb).repeat(1, spb)
        for j in range(B):
            counts[j, : int(m[j] % spb)] += 1
        for i in range(spb):
            mask_index = x == mask_id
            logits = model(x)
            lg = logits.double()
            if temperature > 0:
                x0 = (lg.exp() / (-torch.log(torch.rand_like(lg))) ** temperature).argmax(-1)
            else:
                x0 = lg.argmax(-1)
            p = torch.softmax(lg, -1)
            conf = p.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
            conf[:, e:] = -math.inf
            x0 = torch.where(mask_index, x0, x)
            conf = torch.where(mask_index, conf, -math.inf)
            for j in range(B):
                idx = torch.topk(conf[j], k=int(counts[j, i])).indices
                x[j, idx] = x0[j, idx]
    return x


@torch.no_grad()
def reference_dream(model, prompt, max_new_tokens, steps, mask_id, *, alg="entropy", temperature=0.0, top_p=None,
                    eps=1e-3):
    """Dream ``diffusion_generate`` as published: a full forward of the whole batch every step, the
    masked rows' logits truncated by a sort (top-p), softmax and ``Categorical`` sampling in float32,
    then top-K over each row's confidences (``alg`` "origin" or "entropy")."""
    B, P = prompt.shape
    x = torch.cat([prompt, torch.full((B, max_new_tokens), mask_id, dtype=torch.long, device=prompt.device)], 1)
    ts = torch.linspace(1, eps, steps + 1, device=prompt.device)
    for i in range(steps):
        t, s, last = ts[i], ts[i + 1], i == steps - 1
        mask_index = x == mask_id
        logits = model(x).float()
        logits = torch.cat([logits[:, :1], logits[:, :-1]], 1)[mask_index]
        if temperature > 0:
            logits = logits / temperature
        if top_p is not None:
            srt, idx = torch.sort(logits, descending=True)
            drop = torch.softmax(srt, -1).cumsum(-1) > top_p
            drop[:, 1:], drop[:, 0] = drop[:, :-1].clone(), False
            logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, idx, drop), torch.finfo(logits.dtype).min)
        probs = torch.softmax(logits, -1)
        x0 = torch.distributions.Categorical(probs=probs).sample() if temperature > 0 else probs.argmax(-1)
        if alg == "origin":
            reveal = torch.rand(x0.shape, device=x.device) < (1.0 if last else 1 - s / t)
            x[mask_index] = torch.where(reveal, x0, mask_id)
            continue
        conf = torch.full(x.shape, -math.inf, device=x.device)
        conf[mask_index] = (probs * torch.log(probs + 1e-10)).sum(-1)
        k = int(mask_index.sum() / B) if last else int(mask_index.sum() / B * (1 - s / t))
        if k > 0:
            idx = torch.topk(conf, k).indices
            full = torch.full_like(x, mask_id)
            full[mask_index] = x0
            rows = torch.arange(B, device=x.device).unsqueeze(1)
            x[rows, idx] = full[rows, idx]
    return x


@torch.no_grad()
def reference_smdm(model, prompt, length, steps, mask_id, *, alg="greedy", temperature=0.0, cfg_scale=0.0, eps=1e-5):
    """SMDM's ``diff_sample`` as published: a full forward of the whole batch every step (a doubled batch with
    CFG), the masked rows' float64 Gumbel-max draw over all V logits (``exp(l) / (-log u)^T``), and for
    ``"greedy"`` a float64 softmax confidence and one top-k over the masked positions of the whole batch."""
    B, P = prompt.shape
    x = torch.full((B, length), mask_id, dtype=torch.long, device=prompt.device)
    x[:, :P] = prompt
    ts = torch.linspace(1, eps, steps + 1, device=prompt.device)
    for i in range(steps):
        t, s, last = ts[i], ts[i + 1], i == steps - 1
        mask_index = x == mask_id
        if cfg_scale > 0:
            un_x = x.clone()
            un_x[:, :P] = mask_id
            both = model(torch.cat([x, un_x], 0))
            cond, uncond = both[:B][mask_index], both[B:][mask_index]
            logits = uncond + (cfg_scale + 1) * (cond - uncond)
        else:
            logits = model(x)[mask_index]
        logits = logits.double()
        if alg == "origin":
            reveal = torch.rand(logits.shape[0], device=x.device) < (1.0 if last else 1 - s / t)
            noise = (-torch.log(torch.rand_like(logits[reveal]))) ** temperature
            x0 = torch.full((logits.shape[0],), mask_id, dtype=torch.long, device=x.device)
            x0[reveal] = (logits[reveal].exp() / noise).argmax(-1)
            x[mask_index] = x0
            continue
        x0 = (logits.exp() / (-torch.log(torch.rand_like(logits))) ** temperature).argmax(-1)
        conf = torch.softmax(logits, -1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
        n = mask_index.sum()
        k = int(n) if last else int(n * (1 - s / t))
        if k > 0:
            keep = torch.full_like(x0, mask_id)
            idx = torch.topk(conf, k).indices
            keep[idx] = x0[idx]
            x[mask_index] = keep
    return x


@torch.no_grad()
def reference_bd3lm(model, batch, length, block_size, mask_id, *, dtype=torch.float64, device=None):
    """BD3-LM's first-hitting ``_semi_ar_sampler`` as published without a KV cache: every step a full
    forward of the prefix and the block (``x[:, :block_end]``, logits for all of it), float64 SUBS
    probabilities of the block's positions, a Gumbel race over ``[B, block, V]`` in float64, then one
    uniformly chosen masked position per sequence takes its token. Torch's global RNG, as upstream.
    ``device``: of the canvas (default the model's ``device`` attribute, else the CPU)."""
    device = device if device is not None else getattr(model, "device", None) or "cpu"
    x = torch.full((batch, length), mask_id, dtype=torch.long, device=device)
    rows = torch.arange(batch, device=device)
    for s in range(0, length, block_size):
        e = s + block_size
        for _ in range(block_size):
            logits = model(x[:, :e])[:, s:].to(dtype)
            logits[..., mask_id] = -math.inf
            p_x0 = logits.softmax(-1)
            u = torch.rand_like(p_x0)
            tok = (p_x0 / (1e-10 - (u + 1e-10).log())).argmax(-1)
            pick = torch.multinomial((x[:, s:e] == mask_id).to(dtype), 1).squeeze(1)
            x[rows, s + pick] = tok[rows, pick]
    return x
