"""mdsample: fast, exact sampling kernels for masked diffusion language models."""
from .ops.sampling import SampleResult, sample_categorical
from .ops.unmask import unmask_step
from .samplers import StepGraphs, generate, sample_bd3lm, sample_dream, sample_duo, sample_mdlm, sample_smdm
from .ops.lowdisc_timesteps import lowdisc_timesteps
from .ops.forward_mask import forward_mask
from .ops.masked_nll import masked_nll
from .samplers.likelihood import LikelihoodEstimate, Perplexity, likelihood, perplexity
from .samplers.chain_rule import chain_rule_likelihood

__version__ = "0.1.0"

__all__ = ["SampleResult", "sample_categorical", "unmask_step", "sample_mdlm", "generate", "sample_duo", "sample_bd3lm",
           "sample_dream", "sample_smdm", "__version__"]
__all__ += ["StepGraphs", "lowdisc_timesteps", "forward_mask", "masked_nll", "likelihood", "perplexity",
            "chain_rule_likelihood",
            "LikelihoodEstimate", "Perplexity"]
