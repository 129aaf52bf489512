"""Every error pe-port raises because of what the user gave: a name, a file, an array, a target.

All derive from `UserError`; the CLI turns one into a single `pe-port: error: ...` line and exit
code 2. Anything else that escapes is a bug.
"""


class UserError(ValueError):
    """Input that pe-port cannot use; the message names the problem."""


class ConfigError(UserError):
    """An unknown model name or an inconsistent custom config."""


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, or does not fit the model."""


class WeightError(UserError):
    """Weights that do not fit the config: missing, unexpected, wrongly shaped or non-finite."""


class InputError(UserError):
    """Input the tower cannot take (wrong rank, channels, size, dtype, or non-finite values)."""


class ImageError(UserError):
    """An image file that cannot be read or decoded."""


class TargetError(UserError):
    """A target the port cannot compile for."""


class DeviceError(UserError):
    """The target's device is not on this machine (running needs it; compiling does not)."""


class ArtifactError(UserError):
    """An export destination that must not be replaced, or an artifact that cannot be read."""


class CacheError(UserError):
    """A compile-cache location that cannot be written."""


class TokenizerError(UserError):
    """The text tokenizer's BPE vocabulary is missing, unreadable or not the CLIP one."""
