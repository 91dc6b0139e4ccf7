"""Drop-ins with the upstream call signatures (MDLM / Duo / BD3-LM, SMDM, LLaDA, Fast-dLLM, Dream, dInfer).

``from mdsample.compat import mdlm, llada``, then replace e.g. MDLM's
``_sample_categorical(q)`` with ``mdlm.sample_categorical(q)`` or LLaDA's
``generate(model, prompt, ...)`` with ``llada.generate(model, prompt, ...)``, or Dream's
``model.diffusion_generate(ids, ...)`` with ``dream.diffusion_generate(model, ids, ...)``, or
Fast-dLLM's ``generate_with_dual_cache(...)`` with ``fast_dllm.generate_with_dual_cache(...)``, or
SMDM's ``diff_sample(model, tokenizer, prompt, ...)`` with ``smdm.diff_sample(...)``, or
dInfer's ``ThresholdParallelDecoder(...)`` with ``dinfer.ThresholdParallelDecoder(...)``.
Upstream draws from the torch global RNG; these drop-ins draw their Philox key from it
when no ``seed`` is given, so ``torch.manual_seed`` keeps working as users expect.
"""
from . import dinfer, dream, fast_dllm, llada, mdlm, smdm

__all__ = ["dinfer", "dream", "fast_dllm", "llada", "mdlm", "smdm"]
