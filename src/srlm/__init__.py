"""Self-Rewarding Language Models: the library behind every pipeline stage."""

from srlm import numerics
from srlm.errors import SrlmError

# SRLM_CPU_NUMERICS=portable pins torch's CPU kernels; torch reads the variables at its first operation.
numerics.apply_environment()

__version__ = "0.1.0"
__all__ = ["SrlmError", "__version__"]
