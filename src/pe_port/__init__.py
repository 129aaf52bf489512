"""pe-port: Meta's Perception Encoder vision towers written by hand for Apache TVM."""

from pe_port.config import MODEL_NAMES, PE_VISION_CONFIG, PEConfig, custom_config, get_config

__version__ = "0.1.0"

__all__ = [
    "MODEL_NAMES",
    "PE_VISION_CONFIG",
    "PEConfig",
    "__version__",
    "custom_config",
    "get_config",
]
