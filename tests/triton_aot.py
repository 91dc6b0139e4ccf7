"""Compile every Triton kernel of mdsample for a real GPU on a machine without one.

``python tests/triton_aot.py [--arch 90]`` (TRITON_INTERPRET unset) builds each kernel of
``mdsample.triton.sampling``, ``.likelihood`` and ``.uniforms`` through Triton's CUDA
compiler to a cubin, in the configurations the launchers use, and prints one line per
kernel: ``<name>[<config>] ok regs=<n> stack=<bytes>`` (from ``cuobjdump -res-usage``;
Triton bundles one). It catches what the interpreter lets through: unsupported dtypes or
casts, constexpr misuse, a kernel that no longer lowers on the installed Triton, and
register spills. Used by tests/test_triton_aot.py.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from mdsample.triton import likelihood as TL
from mdsample.triton import sampling as TS
from mdsample.triton import uniforms as TU

# Argument types by name, shared by kernels that spell an argument the same way.
_SAMPLING_TYPES = dict(
    logits_ptr="*bf16", row_offsets_ptr="*i64", guidance_ptr="*bf16", guidance_offsets_ptr="*i64",
    temperature_ptr="*fp32", seed_ptr="*i64", offset_ptr="*i64", position_ptr="*i64", active_ptr="*u8",
    fallback_ptr="*i64", x_ptr="*i64", reveal_prob_ptr="*fp64", stats_temperature_ptr="*fp32", out_ptr="*i64",
    stats_ptr="*fp32", rec_ptr="*fp32", arg_ptr="*i32", guidance_mult="fp32", temperature_val="fp32",
    stats_temperature_val="fp32", seed_val="i64", offset_val="i64", reveal_prob_bits="i64", row_stride="i64",
    guidance_row_stride="i64")
_LIKELIHOOD_TYPES = dict(
    offset_ptr="*i64", eps_ptr="*fp64", out_ptr="*i64", seed="i64", x0_ptr="*i64", maskable_ptr="*u8",
    seed_ptr="*i64", position_ptr="*i64", prob_ptr="*fp64", count_ptr="*i64", keys_ptr="*i64",
    logits_ptr="*bf16", row_offsets_ptr="*i64", guidance_ptr="*bf16", guidance_offsets_ptr="*i64",
    guidance_mult="fp32", target_ptr="*i64", xt_ptr="*i64", weight_ptr="*fp32", row_value_ptr="*fp32")

# Sampling, two variants: plain (the decode call) and everything on (guidance, stats, unmask mode, per-row
# arrays mixed with by-value parameters); the optional pointers absent (None).
_PLAIN = dict(CHUNK=2048, CHUNK_BLOCK=64, FIELDS=4, HAS_GUIDANCE=False, HAS_ACTIVE=False, HAS_FALLBACK=False,
              UNMASK=False, STATS=False, HAS_ROW_OFFSETS_ARR=False, HAS_GUIDANCE_OFFSETS_ARR=False,
              HAS_TEMPERATURE_ARR=False, HAS_SEED_ARR=False, HAS_OFFSET_ARR=False, HAS_POSITION_ARR=False,
              HAS_REVEAL_PROB_ARR=False, HAS_STATS_TEMPERATURE_ARR=False, active_ptr=None, fallback_ptr=None,
              guidance_offsets_ptr=None, seed_ptr=None, offset_ptr=None, position_ptr=None,
              stats_temperature_ptr=None, row_offsets_ptr=None, temperature_ptr=None, reveal_prob_ptr=None,
              guidance_ptr=None, x_ptr=None, stats_ptr=None)
_FULL = dict(_PLAIN, FIELDS=5, HAS_GUIDANCE=True, UNMASK=True, STATS=True, HAS_ROW_OFFSETS_ARR=True,
             HAS_TEMPERATURE_ARR=True, HAS_REVEAL_PROB_ARR=True)
for _name in ("row_offsets_ptr", "temperature_ptr", "reveal_prob_ptr", "guidance_ptr", "x_ptr", "stats_ptr"):
    del _FULL[_name]  # present in the full variant

# (kernel, argument types, constexprs, compile options, label): every autotuning config the launchers use.
CASES = []
for _variant, _meta in (("plain", _PLAIN), ("full", _FULL)):
    for _cfg in TS.ROW_CONFIGS:
        CASES.append((TS._sample_rows_kernel, _SAMPLING_TYPES, dict(_meta, **_cfg.kwargs),
                      dict(num_warps=_cfg.num_warps, num_stages=_cfg.num_stages), f"{_variant} UNROLL={_cfg.kwargs['UNROLL']}"))
    for _cfg in TS.SPLIT_CONFIGS:
        CASES.append((TS._chunk_records_kernel, _SAMPLING_TYPES, dict(_meta, **_cfg.kwargs),
                      dict(num_warps=_cfg.num_warps, num_stages=_cfg.num_stages), f"{_variant} GROUP={_cfg.kwargs['GROUP']}"))
    CASES.append((TS._finish_rows_kernel, _SAMPLING_TYPES, _meta, dict(num_warps=TS._NUM_WARPS), _variant))
_LW = dict(num_warps=4)  # the likelihood launchers leave Triton's default
_NLL_PLAIN = dict(HAS_GUIDANCE=False, HAS_WEIGHT=False, BLOCK=2048, ROW_ALIGN=8, guidance_ptr=None,
                  guidance_offsets_ptr=None, weight_ptr=None)
_NO_FMA = dict(_LW, enable_fp_fusion=False)  # as lowdisc_timesteps launches it
CASES += [
    (TL._timesteps_kernel, dict(_LIKELIHOOD_TYPES, out_ptr="*fp64"), dict(MODE=0, BLOCK=1024), _NO_FMA, "stratified"),
    (TL._timesteps_kernel, dict(_LIKELIHOOD_TYPES, out_ptr="*fp64"), dict(MODE=1, BLOCK=1024), _NO_FMA, "shifted"),
    (TL._mask_bernoulli_kernel, _LIKELIHOOD_TYPES, dict(HAS_MASKABLE=True, HAS_POSITION=True, BLOCK=1024), _LW,
     "maskable+position"),
    (TL._mask_count_kernel, _LIKELIHOOD_TYPES, dict(HAS_MASKABLE=True, HAS_POSITION=False, BLOCK=1024,
                                                     ONE_BLOCK=True), _LW, "one block"),
    (TL._mask_count_kernel, _LIKELIHOOD_TYPES, dict(HAS_MASKABLE=False, HAS_POSITION=True, BLOCK=1024,
                                                     ONE_BLOCK=False), _LW, "scratch keys"),
    (TL._masked_nll_kernel, _LIKELIHOOD_TYPES, _NLL_PLAIN, _LW, "plain"),
    (TL._masked_nll_kernel, _LIKELIHOOD_TYPES, dict(HAS_GUIDANCE=True, HAS_WEIGHT=True, BLOCK=2048, ROW_ALIGN=1),
     _LW, "guided+weight"),
]
_UNIFORM_TYPES = dict(seed_ptr="*i64", seed_val="i64", offset_ptr="*i64", offset_val="i64", position_ptr="*i64",
                      out_ptr="*fp64")
CASES += [(TU._uniforms_kernel, _UNIFORM_TYPES, dict(HAS_SEED_PTR=ptr, HAS_OFFSET_PTR=ptr, DOMAIN=1, BLOCK=1024), _LW,
           "device keys" if ptr else "value keys") for ptr in (True, False)]


# (kernel, argument types, constexprs, compile options, label, arguments a real launch marks divisible by 16):
# a bf16 row read on the memory-bound path must compile to 16-byte loads (ld.global.v4) once Triton knows the
# row starts are aligned; Triton learns that from 16-divisible pointers, vocab and stride arguments (it
# specializes on them) and from the kernels' multiple_of hints.
VECTOR_CASES = [
    (TS._sample_rows_kernel, _SAMPLING_TYPES, dict(_PLAIN, UNROLL=1), dict(num_warps=8, num_stages=1),
     "plain, row stride", ("logits_ptr", "vocab", "row_stride")),
    (TL._masked_nll_kernel, _LIKELIHOOD_TYPES, _NLL_PLAIN, _LW, "plain, row offsets", ("logits_ptr", "vocab")),
]


def _cuobjdump() -> str | None:
    """Triton's bundled cuobjdump (the CUDA toolkit on this machine ships none), else the toolkit's."""
    import triton.backends.nvidia as nvidia

    for tool in (os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump"), shutil.which("cuobjdump")):
        if tool and os.access(tool, os.X_OK):
            return tool
    return None


def resource_usage(cubin: bytes) -> tuple[str, str]:
    """(registers per thread, stack bytes per thread: 0 = no spills) of the cubin's kernel; "?" without cuobjdump."""
    tool = _cuobjdump()
    if tool is None:
        return "?", "?"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    regs = re.search(r"REG:(\d+)", text)
    stack = re.search(r"STACK:(\d+)", text)
    return (regs.group(1) if regs else "?"), (stack.group(1) if stack else "?")


def compile_all(arch: int = 90) -> int:
    """Compiles every case; prints a line per kernel; returns the number of failures."""
    failures = 0
    for kernel, types, meta, options, label in CASES:
        consts = {n: v for n, v in meta.items() if n in kernel.arg_names}
        signature = {n: ("constexpr" if n in consts else types.get(n, "i32")) for n in kernel.arg_names}
        name = f"{kernel.fn.__name__}[{label}]"
        try:
            compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=consts),
                                      target=GPUTarget("cuda", arch, 32), options=options)
            cubin = compiled.asm["cubin"]
            regs, stack = resource_usage(cubin)
            print(f"{name} ok regs={regs} stack={stack} cubin={len(cubin)}B", flush=True)
        except Exception as exc:  # noqa: BLE001 - report every kernel, then fail
            failures += 1
            print(f"{name} FAILED {type(exc).__name__}: {str(exc)[-2000:]}", flush=True)
    for kernel, types, meta, options, label, divisible in VECTOR_CASES:
        consts = {n: v for n, v in meta.items() if n in kernel.arg_names}
        signature = {n: ("constexpr" if n in consts else types.get(n, "i32")) for n in kernel.arg_names}
        # what the launch would mark: not the arguments the kernel declines to specialize on
        declined = {kernel.arg_names[n] if isinstance(n, int) else n for n in kernel.do_not_specialize}
        attrs = {(kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in divisible if n not in declined}
        ptx = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=consts, attrs=attrs),
                             target=GPUTarget("cuda", arch, 32), options=options).asm["ptx"]
        vector = "ld.global.v4" in ptx
        failures += not vector
        print(f"{kernel.fn.__name__}[{label}] {'ok vector loads' if vector else 'FAILED: no 16-byte loads'}",
              flush=True)
    return failures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90 = H100/H200)")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("unset TRITON_INTERPRET: the interpreter does not compile")
    print(f"triton {triton.__version__}, sm_{args.arch}", flush=True)
    sys.exit(1 if compile_all(args.arch) else 0)
