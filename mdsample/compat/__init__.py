"""Drop-ins with the upstream call signatures (MDLM / Duo / BD3-LM, LLaDA).

``from mdsample.compat import mdlm, llada``, then replace e.g. MDLM's
``_sample_categorical(q)`` with ``mdlm.sample_categorical(q)`` or LLaDA's
``generate(model, prompt, ...)`` with ``llada.generate(model, prompt, ...)``.
Upstream draws from the torch global RNG; these drop-ins draw their Philox key from it
when no ``seed`` is given, so ``torch.manual_seed`` keeps working as users expect.
"""
from . import llada, mdlm

__all__ = ["llada", "mdlm"]
