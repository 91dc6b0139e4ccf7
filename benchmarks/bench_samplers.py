"""Samplers vs the published loops: forward passes, logits rows and wall time (CPU, tiny model).

Counts are what this benchmark is about: they do not depend on the hardware. For the
same settings it runs

- MDLM as published (``_sample`` with the ``ddpm_cache`` predictor: a full ``[B, L, V]``
  forward whenever the batch changed, fp32 Gumbel race, final argmax forward) and
  ``mdsample.sample_mdlm`` (reveal coins first, per-sequence forwards, head rows only);
- LLaDA as published (``generate``: a full forward of every sequence every step) and
  ``mdsample.generate`` (candidate rows only), plus Fast-dLLM's threshold rule;
- Dream as published (``diffusion_generate``: a full forward every step, a sort for top-p)
  and ``mdsample.sample_dream`` (masked rows only; "origin": revealed rows only, no forward
  for a step that reveals nothing), with Dream's demo settings (T 0.2, top-p 0.95, entropy);
- SMDM as published (``diff_sample``: a full forward of the doubled CFG batch every step, float64
  Gumbel-max and softmax over the masked rows) and ``mdsample.sample_smdm`` ("greedy" with CFG
  w = 2, SMDM's default; "origin": revealed rows only, no forward for a step that reveals nothing);
- BD3-LM as published without its cache (first-hitting: every step a forward of the whole prefix
  and block, float64 Gumbel over the block) and ``mdsample.sample_bd3lm`` (the exact block-causal
  KV cache: each step feeds the block only), on a block-causal ``mdsample.models.Transformer``;

on one tiny bidirectional transformer offering ``hidden``/``head`` (BD3-LM: the tiny block-causal
preset), and writes
``benchmarks/results/cpu-samplers-<date>.json``. Wall times are CPU times on whatever
machine ran this (labelled as such), never a GPU claim.

Usage: ``python benchmarks/bench_samplers.py [--quick] [--threads N] [--only mdlm llada dream smdm bd3lm]``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mdsample  # noqa: E402
from mdsample import _backends  # noqa: E402

from benchmarks._e2e import (Counting, reference_bd3lm, reference_dream, reference_llada, reference_mdlm,  # noqa: E402
                             reference_smdm)
from benchmarks._timing import add_results_dir, cpu_model, cpu_threads, git_commit  # noqa: E402


class TinyDiffusionLM(torch.nn.Module):
    """A small bidirectional transformer (pre-norm, learned positions) with a hidden/head split."""

    def __init__(self, vocab: int, d: int = 64, layers: int = 2, heads: int = 4, max_len: int = 1024,
                 head_scale: float = 1.0, seed: int = 0, mask_id: int | None = None):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = torch.nn.Embedding(vocab, d)
        self.pos = torch.nn.Embedding(max_len, d)
        layer = torch.nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.body = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(d)
        self.out = torch.nn.Linear(d, vocab)
        with torch.no_grad():
            self.out.weight.mul_(head_scale)
            if mask_id is not None:  # like a trained masked model, never predict the mask token
                self.out.bias[mask_id] = -1e4
        self.vocab_size = vocab

    def hidden(self, x, attention_mask=None):
        h = self.emb(x) + self.pos(torch.arange(x.shape[1], device=x.device))
        return self.norm(self.body(h))

    def head(self, h):
        return self.out(h)

    def forward(self, x, attention_mask=None):
        return self.head(self.hidden(x))


class Counter:
    """Wraps a model; counts calls, sequence-forwards and logits rows (width V) computed."""

    def __init__(self, model, use_head=True):
        self.model = model
        self.vocab_size = model.vocab_size
        self.calls = self.sequences = self.rows = 0
        if use_head:
            self.hidden, self.head = self._hidden, self._head

    def __call__(self, x, attention_mask=None):
        self.calls += 1
        self.sequences += x.shape[0]
        self.rows += x.numel()
        return self.model(x)

    def _hidden(self, x, attention_mask=None):
        self.calls += 1
        self.sequences += x.shape[0]
        return self.model.hidden(x)

    def _head(self, h):
        self.rows += h.shape[0]
        return self.model.head(h)

    def counts(self):
        return {"calls": self.calls, "sequence_forwards": self.sequences, "logits_rows": self.rows}


# ---- the published loops: benchmarks/_e2e.py (torch global RNG, as upstream) ----

def mdlm_published(model, batch, length, mask_id, steps, eps=1e-5):
    """MDLM ``_sample`` with ``ddpm_cache`` (loglinear, m_t = t), fp32 SUBS and Gumbel race, final argmax forward."""
    return reference_mdlm(model, batch, length, mask_id, steps, dtype=torch.float32, eps=eps)


llada_published = reference_llada  # LLaDA ``generate`` (low_confidence): a full forward of the whole batch every step


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def ratio(a, b):
    return a / b if b else None


SECTIONS = ("mdlm", "llada", "dream", "smdm", "bd3lm")


def run(quick: bool, threads: int, only=SECTIONS):
    """The sections' rows, on ``threads`` CPU threads, without autograd (both restored after: the smoke tests
    call this in the test process)."""
    with cpu_threads(threads), torch.no_grad():
        return _run(quick, only)


def _run(quick: bool, only):
    results = {}
    # Warm-up: first calls pay one-time costs (kernel dispatch tables, allocator) that are not the samplers'.
    warm = TinyDiffusionLM(64, max_len=16).eval()
    mdsample.sample_mdlm(Counter(warm), batch_size=2, length=16, mask_id=63, steps=4)
    mdsample.sample_mdlm(Counter(warm, use_head=False), batch_size=2, length=16, mask_id=63, steps=4)
    mdsample.generate(Counter(warm), torch.zeros(1, 4, dtype=torch.long), steps=4, gen_length=8, block_length=4,
                      mask_id=63)
    mdlm_published(Counter(warm, use_head=False), 2, 16, 63, 4)

    # ---- MDLM: L = 1024, steps = 1000 (MDLM's setting) ----
    L, steps, B, V = (128, 100, 4, 256) if quick else (1024, 1000, 4, 1024)
    mask_id = V - 1
    if "mdlm" in only:
        results["mdlm"] = _mdlm(L, steps, B, V, mask_id)
    # The LLaDA setting's model and prompts serve the Dream, SMDM and BD3-LM rows too.
    P, G, BL, S, B2, V2 = (16, 64, 16, 64, 2, 256) if quick else (64, 256, 32, 256, 4, 1024)
    mask2 = V2 - 1
    model2 = TinyDiffusionLM(V2, max_len=P + G, head_scale=8.0, seed=1, mask_id=mask2).eval()
    prompt = torch.randint(0, mask2, (B2, P), generator=torch.Generator().manual_seed(0))
    if "llada" in only:
        results["llada"] = _llada(model2, prompt, P, G, BL, S, B2, V2, mask2)
    if "dream" in only:
        for alg in ("entropy", "origin"):
            results[f"dream_{alg}"] = _dream(model2, prompt, alg, P, G, S, B2, V2, mask2)
    if "smdm" in only:
        for alg in ("greedy", "origin"):
            results[f"smdm_{alg}"] = _smdm(model2, prompt, alg, P, G, S, B2, V2, mask2)
    if "bd3lm" in only:
        results["bd3lm"] = _bd3lm(quick, V2, mask2)
    return results


def _mdlm(L, steps, B, V, mask_id):
    model = TinyDiffusionLM(V, max_len=L, mask_id=mask_id).eval()
    ref = Counter(model, use_head=False)
    torch.manual_seed(0)
    _, t_ref = timed(lambda: mdlm_published(ref, B, L, mask_id, steps))
    ours = Counter(model)
    _, t_ours = timed(lambda: mdsample.sample_mdlm(ours, batch_size=B, length=L, mask_id=mask_id, steps=steps, seed=0))
    full = Counter(model, use_head=False)  # same sampler, a backbone without hidden/head
    _, t_full = timed(lambda: mdsample.sample_mdlm(full, batch_size=B, length=L, mask_id=mask_id, steps=steps,
                                                   seed=0))
    fh = Counter(model)
    _, t_fh = timed(lambda: mdsample.sample_mdlm(fh, batch_size=B, length=L, mask_id=mask_id, steps=steps, seed=0,
                                                 first_hitting=True))
    return {
        "settings": {"batch": B, "length": L, "steps": steps, "vocab": V, "schedule": "loglinear", "eps": 1e-5},
        "published_ddpm_cache": {**ref.counts(), "wall_s_cpu": t_ref},
        "mdsample_hidden_head": {**ours.counts(), "wall_s_cpu": t_ours},
        "mdsample_full_logits": {**full.counts(), "wall_s_cpu": t_full},
        "mdsample_first_hitting": {**fh.counts(), "wall_s_cpu": t_fh},
        "ratios": {
            "logits_rows_vs_published": ratio(ours.rows, ref.rows),
            "sequence_forwards_vs_published": ratio(ours.sequences, ref.sequences),
            "full_logits_sequence_forwards_vs_published": ratio(full.sequences, ref.sequences),
            "wall_vs_published_cpu": ratio(t_ours, t_ref),
        },
        "goal": "logits rows <= 2% of the published loop's; fewer forward passes than its ddpm_cache",
        "goal_met": bool(ours.rows <= 0.02 * ref.rows and ours.sequences < ref.sequences),
    }


def _llada(model2, prompt, P, G, BL, S, B2, V2, mask2):
    """LLaDA: prompt 64, gen 256, block 32, steps 256 (one token per step)."""
    ref2 = Counter(model2, use_head=False)
    out_ref, t_ref2 = timed(lambda: llada_published(ref2, prompt, S, G, BL, mask2))
    ours2 = Counter(model2)
    out2, t_ours2 = timed(lambda: mdsample.generate(ours2, prompt, steps=S, gen_length=G, block_length=BL,
                                                    mask_id=mask2))
    thr = Counter(model2)
    _, t_thr = timed(lambda: mdsample.generate(thr, prompt, steps=S, gen_length=G, block_length=BL, mask_id=mask2,
                                               threshold=0.9))
    thr5 = Counter(model2)
    _, t_thr5 = timed(lambda: mdsample.generate(thr5, prompt, steps=S, gen_length=G, block_length=BL, mask_id=mask2,
                                                threshold=0.5))
    return {
        "settings": {"batch": B2, "prompt": P, "gen_length": G, "block_length": BL, "steps": S, "vocab": V2,
                     "temperature": 0.0, "remasking": "low_confidence"},
        "published": {**ref2.counts(), "wall_s_cpu": t_ref2},
        "mdsample": {**ours2.counts(), "wall_s_cpu": t_ours2},
        "mdsample_threshold_0.9": {**thr.counts(), "wall_s_cpu": t_thr},
        "mdsample_threshold_0.5": {**thr5.counts(), "wall_s_cpu": t_thr5},
        "threshold_note": "forwards saved by a threshold depend on the model's confidence (here a random tiny model)",
        "same_tokens_as_published": bool(torch.equal(out_ref, out2)),
        "ratios": {
            "logits_rows_vs_published": ratio(ours2.rows, ref2.rows),
            "sequence_forwards_vs_published": ratio(ours2.sequences, ref2.sequences),
            "threshold_0.9_sequence_forwards_vs_published": ratio(thr.sequences, ref2.sequences),
            "threshold_0.5_sequence_forwards_vs_published": ratio(thr5.sequences, ref2.sequences),
            "wall_vs_published_cpu": ratio(t_ours2, t_ref2),
        },
    }


def _race(model, settings, published, ours):
    """The published loop (full logits, torch's RNG seeded at 0) against mdsample's sampler on ``model``:
    each callable takes the counting model; counts, CPU walls and their ratios."""
    ref = Counter(model, use_head=False)
    torch.manual_seed(0)
    _, t_ref = timed(lambda: published(ref))
    mine = Counter(model)
    _, t_ours = timed(lambda: ours(mine))
    return {
        "settings": settings,
        "published": {**ref.counts(), "wall_s_cpu": t_ref},
        "mdsample": {**mine.counts(), "wall_s_cpu": t_ours},
        "ratios": {
            "logits_rows_vs_published": ratio(mine.rows, ref.rows),
            "sequence_forwards_vs_published": ratio(mine.sequences, ref.sequences),
            "wall_vs_published_cpu": ratio(t_ours, t_ref),
        },
    }


def _dream(model2, prompt, alg, P, G, S, B2, V2, mask2):
    """Dream: prompt 64, 256 new tokens, 256 steps (Dream's demo: entropy, T 0.2, top-p 0.95)."""
    kw = dict(alg=alg, temperature=0.2, top_p=0.95)
    return _race(model2, {"batch": B2, "prompt": P, "max_new_tokens": G, "steps": S, "vocab": V2, **kw},
                 lambda m: reference_dream(m, prompt, G, S, mask2, **kw),
                 lambda m: mdsample.sample_dream(m, prompt, max_new_tokens=G, steps=S, mask_id=mask2, **kw))


def _smdm(model2, prompt, alg, P, G, S, B2, V2, mask2):
    """SMDM: prompt 64, 256 generated tokens, 256 steps, CFG w = 2 (SMDM's default), T 0 (greedy) / 1 (origin)."""
    kw = dict(alg=alg, temperature=0.0 if alg == "greedy" else 1.0, cfg_scale=2.0)
    return _race(model2, {"batch": B2, "prompt": P, "length": P + G, "steps": S, "vocab": V2, **kw},
                 lambda m: reference_smdm(m, prompt, P + G, S, mask2, **kw),
                 lambda m: mdsample.sample_smdm(m, prompt, length=P + G, steps=S, mask_id=mask2, **kw))


def _bd3lm(quick, V2, mask2):
    """BD3-LM: L = 1024, block 16, first-hitting (one forward per token)."""
    L4, BS4, B4 = (128, 16, 2) if quick else (1024, 16, 4)
    model4 = mdsample.models.Transformer.from_preset("tiny", attention="block_causal", block_size=BS4, vocab_size=V2,
                                                     mask_id=mask2, max_seq_len=L4, seed=2).eval()
    ref4 = Counting(model4)
    torch.manual_seed(0)
    _, t_ref4 = timed(lambda: reference_bd3lm(ref4, B4, L4, BS4, mask2))
    runs4 = {}
    for name, use_cache in (("mdsample_cached", True), ("mdsample_uncached", False)):
        c = Counting(model4)
        _, t = timed(lambda: mdsample.sample_bd3lm(c, batch_size=B4, length=L4, block_size=BS4, mask_id=mask2,
                                                   use_cache=use_cache, seed=0))
        runs4[name] = {"forwards": c.forwards, "positions_fed": c.positions, "wall_s_cpu": t}
    return {
        "settings": {"batch": B4, "length": L4, "block_size": BS4, "vocab": V2, "sampler": "first_hitting",
                     "model": "tiny block_causal Transformer (64 wide, 2 layers)"},
        "published_uncached": {"forwards": ref4.forwards, "positions_fed": ref4.positions, "wall_s_cpu": t_ref4},
        **runs4,
        "ratios": {
            "positions_fed_vs_published": ratio(runs4["mdsample_cached"]["positions_fed"], ref4.positions),
            "wall_vs_published_cpu": ratio(runs4["mdsample_cached"]["wall_s_cpu"], t_ref4),
            "uncached_wall_vs_published_cpu": ratio(runs4["mdsample_uncached"]["wall_s_cpu"], t_ref4),
        },
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small settings (smoke run)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: stable on shared machines)")
    ap.add_argument("--out", default=None, help="output JSON path (overrides --results-dir)")
    add_results_dir(ap)
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run (default all)")
    args = ap.parse_args(argv)
    results = run(args.quick, args.threads, args.only)
    record = {
        "benchmark": "bench_samplers",
        "device": "cpu",
        "device_name": cpu_model() or platform.processor() or "unknown",
        "note": "CPU measurements with a tiny model; counts are hardware-independent, wall times are CPU only",
        "torch": torch.__version__,
        "cuda": None,
        "commit": git_commit("unknown"),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "threads": args.threads,
        "sampling_backend": _backends.resolve("auto", "cpu"),
        "quick": args.quick,
        "sections": args.only,
        "results": results,
    }
    out = args.out or os.path.join(args.results_dir, f"cpu-samplers-{datetime.date.today().isoformat()}"
                                   f"{'-quick' if args.quick else ''}"
                                   f"{'' if set(args.only) == set(SECTIONS) else '-' + '-'.join(args.only)}.json")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(record, f, indent=2)
    print(json.dumps(record, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
