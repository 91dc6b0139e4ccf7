"""The cuda backend against the float64 reference, token for token: gpu_check.sh's correctness gate.

Covers dtypes, shapes (the split and the one-CTA-per-row paths, partial chunks, V = 1, unaligned
rows), stats, guidance and unmask_step. ``--sanitize``: the cuda calls only, on small shapes (for
compute-sanitizer, where every launch is slow). ``--small``: the sanitizer's shapes, compared.
``--device cpu --backend cpu --small`` runs the same script on the CPU (tests/test_cuda_smoke_script.py),
so that CI catches a broken gate before a GPU session spends its minutes on it.

Exit status 1 when any case's tokens differ from the reference's.
"""
import argparse
import sys
import time

import torch

import mdsample

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--sanitize", action="store_true", help="cuda calls only, small shapes, no comparison")
ap.add_argument("--small", action="store_true", help="the small shapes, compared with the reference")
ap.add_argument("--device", default="cuda")
ap.add_argument("--backend", default="cuda")
args = ap.parse_args()

dev, backend, small = args.device, args.backend, args.sanitize or args.small
g = torch.Generator(device=dev).manual_seed(0)
shapes = [(1, 126464), (3, 4133), (2, 300), (4, 1)] if small else \
         [(1, 126464), (16, 126464), (8, 50257), (300, 4133), (3, 1), (5, 2048), (2, 300), (2000, 32000)]
dtypes = [torch.float32, torch.bfloat16] if small else [torch.float32, torch.float16, torch.bfloat16, torch.float64]
bad = total = 0


def check(name, got, want):
    global bad, total
    total += 1
    tg, tw = (got.tokens, want.tokens) if hasattr(got, "tokens") else (got, want)
    diff = int((tg != tw).sum())
    msg = f"{name}: {diff} of {tg.numel()} tokens differ"
    if hasattr(got, "tokens"):
        for f in ("logprob", "prob", "margin", "entropy"):
            a, b = getattr(got, f), getattr(want, f)
            err = ((a - b).abs() / (b.abs() + 1e-5)).nan_to_num(0).max().item() if a.numel() else 0.0
            msg += f", {f} rel err {err:.1e}"
    if diff:
        bad += 1
    print(msg, flush=True)


def sync():
    if dev == "cuda":
        torch.cuda.synchronize()


t0 = time.time()
for dtype in dtypes:
    for n, v in shapes:
        base = torch.randn(n, v + 1, device=dev, generator=g) * 3
        for layout, logits in (("contig", base[:, :v].contiguous().to(dtype)), ("offset1", base.to(dtype)[:, 1:])):
            cases = [dict(), dict(temperature=0.0), dict(return_stats=True), dict(temperature=0.5, exclude=v // 2)]
            if not args.sanitize:
                cases += [dict(return_stats=True, temperature=0.0), dict(return_stats=True, stats_temperature=2.0),
                          dict(guidance=logits.flip(0), guidance_scale=1.5)]
            for kw in cases:
                name = f"{str(dtype)[6:]} {n}x{v} {layout} {','.join(kw) or 'default'}"
                got = mdsample.sample_categorical(logits, seed=3, offset=1, check=False, backend=backend, **kw)
                if args.sanitize:
                    sync()
                    print(name, "ok", flush=True)
                    continue
                check(name, got, mdsample.sample_categorical(logits, seed=3, offset=1, check=False,
                                                             backend="reference", **kw))
        x = torch.randint(0, v, (n,), device=dev, generator=g)
        x[::2] = 0
        l3 = logits.view(1, n, v) if logits.is_contiguous() else logits.contiguous().view(1, n, v)
        # check=False: at V = 1 the only token is the mask, so a revealed row has nothing to draw (-1 on both sides)
        step = dict(mask_id=0, reveal_prob=0.5, seed=5, check=False)
        got = mdsample.unmask_step(l3, x.view(1, n), backend=backend, **step)
        if not args.sanitize:
            check(f"unmask {str(dtype)[6:]} {n}x{v}", got, mdsample.unmask_step(l3, x.view(1, n), backend="reference",
                                                                               **step))
sync()
print(f"{total - bad} of {total} cases agree exactly ({bad} with differing tokens), {time.time() - t0:.1f}s")
sys.exit(1 if bad else 0)
