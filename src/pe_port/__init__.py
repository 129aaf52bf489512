"""pe-port: Meta's Perception Encoder towers written by hand for Apache TVM.

`load` and `Encoder` are imported on first use: `import pe_port` (and `pe-port list`) does not
pay for importing TVM. `preprocess` (NumPy and Pillow only) is imported here: the function has
its module's name, and a lazy attribute would turn into the module once anything imports
`pe_port.preprocess`.
"""

from __future__ import annotations

from pathlib import Path as _Path

__version__ = "0.1.0"

from pe_port.config import (  # noqa: E402
    MODEL_NAMES,
    PE_VISION_CONFIG,
    PEConfig,
    custom_config,
    get_config,
)
from pe_port.preprocess import preprocess  # noqa: E402

# A photo shipped with the package, for trying a model (`enc.zero_shot([SAMPLE_IMAGE], ...)`).
SAMPLE_IMAGE = _Path(__file__).parent / "assets" / "sample.png"

_LAZY = {"load": "pe_port.api", "Encoder": "pe_port.runtime"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pe_port' has no attribute {name!r}")


__all__ = [
    "MODEL_NAMES",
    "PE_VISION_CONFIG",
    "Encoder",
    "PEConfig",
    "SAMPLE_IMAGE",
    "__version__",
    "custom_config",
    "get_config",
    "load",
    "preprocess",
]
