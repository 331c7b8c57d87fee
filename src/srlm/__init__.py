"""Self-Rewarding Language Models: the library behind every pipeline stage."""

from srlm.errors import SrlmError

__version__ = "0.1.0"
__all__ = ["SrlmError", "__version__"]
