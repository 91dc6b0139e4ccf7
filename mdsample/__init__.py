"""mdsample: fast, exact sampling kernels for masked diffusion language models."""
from .ops.sampling import SampleResult, sample_categorical
from .ops.unmask import unmask_step
from .samplers import generate, sample_duo, sample_mdlm

__version__ = "0.1.0"

__all__ = ["SampleResult", "sample_categorical", "unmask_step", "sample_mdlm", "generate", "sample_duo", "__version__"]
