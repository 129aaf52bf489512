"""pe-port: Meta's Perception Encoder vision towers written by hand for Apache TVM."""

__version__ = "0.1.0"

from pe_port.api import Encoder, load  # noqa: E402
from pe_port.config import (  # noqa: E402
    MODEL_NAMES,
    PE_VISION_CONFIG,
    PEConfig,
    custom_config,
    get_config,
)
from pe_port.preprocess import preprocess  # noqa: E402

__all__ = [
    "MODEL_NAMES",
    "PE_VISION_CONFIG",
    "Encoder",
    "PEConfig",
    "__version__",
    "custom_config",
    "get_config",
    "load",
    "preprocess",
]
